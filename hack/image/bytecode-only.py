"""Slims an installed virtualenv's third-party packages for the image.

    python3 bytecode-only.py SITE_PACKAGES [KEEP ...]

- Each module is compiled to a ``.pyc`` beside it (``compileall -b``) and its
  source deleted, so Python imports the bytecode directly; ``__pycache__`` goes too.
  That is the sources' size (about 40 MB here) off the image at no cost in start-up
  time. What it costs: a traceback through a library shows file and line but not
  the line's text. BHIV's own package is installed afterwards and keeps its sources.
- Test suites shipped inside packages, type stubs and Cython/C sources go: nothing
  imports them at run time.

KEEP names top-level entries left as they are (pip and setuptools, which the
Dockerfile still runs and removes afterwards).
"""

from __future__ import annotations

import compileall
import shutil
import sys
from pathlib import Path

# Never imported by a running service; their own packages do not import them either.
TEST_DIRS = "tests"  # anywhere in a package
PACKAGE_TEST_DIRS = ("sqlalchemy/testing", "alembic/testing", "mako/testing")
NOT_RUN = ("*.pyi", "*.pyx", "*.pxd", "*.pxi", "*.c", "*.h")


def slim(site: Path, keep: set[str]) -> int:
    """Bytes removed."""
    before = _size(site)
    tops = [
        p
        for p in site.iterdir()
        if p.name not in keep and p.name != "__pycache__" and not p.name.endswith(".dist-info")
    ]
    packages = [top for top in tops if top.is_dir()]
    modules = [top for top in tops if top.suffix == ".py"]  # top-level single-file modules

    suites = [site / name for name in PACKAGE_TEST_DIRS]
    suites += [found for package in packages for found in package.rglob(TEST_DIRS)]
    for suite in suites:
        if suite.is_dir():  # one inside a suite already removed is gone
            shutil.rmtree(suite)
    for package in packages:
        for pattern in NOT_RUN:
            for found in list(package.rglob(pattern)):
                found.unlink()

    # legacy=True writes foo.pyc beside foo.py: the only place where Python imports a
    # module that has no source.
    compiled = [compileall.compile_dir(p, quiet=1, legacy=True, workers=0) for p in packages]
    compiled += [compileall.compile_file(m, quiet=1, legacy=True) for m in modules]
    if not all(compiled):
        raise SystemExit("could not compile every module (compileall's errors above)")
    for source in [*modules, *(s for package in packages for s in package.rglob("*.py"))]:
        source.unlink()
    for cache in [site / "__pycache__", *(c for p in packages for c in p.rglob("__pycache__"))]:
        shutil.rmtree(cache, ignore_errors=True)
    return before - _size(site)


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


if __name__ == "__main__":
    removed = slim(Path(sys.argv[1]), set(sys.argv[2:]))
    print(f"bytecode-only: {removed / 1e6:.1f} MB removed")
