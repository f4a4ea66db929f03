"""Which container images a BhivModule may run (pure).

Whoever may create a BhivModule can run any code as the module's pods, with the
Secrets it names. An operator setting (``--allowed-image``, the chart's
``operator.allowedImages``) narrows what it may run: a module whose image is not
under one of the allowed prefixes gets no Deployment (and an existing one is
not changed), status ``Ready=False`` with reason ``ImageNotAllowed``, and a
Warning event. No list: any image, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

REASON = "ImageNotAllowed"
DOCKER_HUB = "docker.io"


def normalize(image: str) -> str:
    """The fully qualified form a container runtime pulls: ``nginx:1`` is
    ``docker.io/library/nginx:1``, ``acme/app`` is ``docker.io/acme/app``."""
    first, slash, rest = image.partition("/")
    if not slash:
        return f"{DOCKER_HUB}/library/{image}"
    if "." in first or ":" in first or first == "localhost":
        return image  # the first part names a registry
    return f"{DOCKER_HUB}/{image}"


def _repository(image: str) -> str:
    """The image without its digest or tag."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > last_slash else name


def allowed(image: str, prefixes: Sequence[str]) -> bool:
    """``image`` is allowed by ``prefixes``: none given, or one matches.

    An entry ending in ``/`` allows every repository under it
    (``registry.example.com/bhiv/``); any other entry is one repository, any tag
    or digest (``registry.example.com/bhiv/core``). Both sides are compared fully
    qualified, so ``nginx`` is ``docker.io/library/nginx``, and path segments must
    match whole: ``registry.example.com/bhiv/`` does not allow ``.../bhiv-other/x``.
    """
    if not prefixes:
        return True
    full = normalize(image.strip())
    if ".." in full.split("@", 1)[0]:
        return False  # not a valid reference; never let it pass a prefix test
    repository = _repository(full)
    for entry in prefixes:
        entry = entry.strip()
        if not entry:
            continue
        if entry.endswith("/"):
            if full.startswith(normalize(entry)):
                return True
        elif repository == _repository(normalize(entry)):
            return True
    return False


def refusal(image: str, prefixes: Sequence[str]) -> str | None:
    """Why ``image`` may not run (for the status and the event), or None if it may."""
    if allowed(image, prefixes):
        return None
    return (
        f"spec.image {image!r} is not under an allowed registry or repository "
        f"({', '.join(prefixes)}); the operator's allowedImages setting decides which may run"
    )
