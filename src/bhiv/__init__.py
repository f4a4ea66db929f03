"""BHIV Core: business microservices on one shared framework (``bhiv.core``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bhiv-core")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
