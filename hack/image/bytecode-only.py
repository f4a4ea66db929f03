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
TEST_DIRS = ("tests", "sqlalchemy/testing", "alembic/testing", "mako/testing")
NOT_RUN = ("*.pyi", "*.pyx", "*.pxd", "*.pxi", "*.c", "*.h")


def slim(site: Path, keep: set[str]) -> int:
    """Bytes removed."""
    before = _size(site)
    tops = [
        p
        for p in site.iterdir()
        if p.name not in keep and p.name != "__pycache__" and not p.name.endswith(".dist-info")
    ]
    for name in TEST_DIRS:
        for found in site.glob(name) if "/" in name else (d for t in tops for d in _dirs(t, name)):
            if found.is_dir():
                shutil.rmtree(found)
    for top in tops:
        if top.is_dir():
            for pattern in NOT_RUN:
                for found in top.rglob(pattern):
                    found.unlink()
    for top in tops:
        if top.is_dir():
            sources = list(top.rglob("*.py"))
            ok = compileall.compile_dir(top, quiet=2, legacy=True, workers=0)
        elif top.suffix == ".py":
            sources = [top]
            ok = compileall.compile_file(top, quiet=2, legacy=True)
        else:
            continue
        # legacy=True writes foo.pyc beside foo.py: the only place where Python
        # imports a module that has no source.
        if not ok:
            raise SystemExit(f"could not compile {top}")
        for source in sources:
            source.unlink()
    for top in [site / "__pycache__", *tops]:
        for cache in (
            [top] if top.name == "__pycache__" else top.rglob("__pycache__") if top.is_dir() else ()
        ):
            shutil.rmtree(cache, ignore_errors=True)
    return before - _size(site)


def _dirs(top: Path, name: str) -> list[Path]:
    return [d for d in top.rglob(name) if d.is_dir()] if top.is_dir() else []


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


if __name__ == "__main__":
    removed = slim(Path(sys.argv[1]), set(sys.argv[2:]))
    print(f"bytecode-only: {removed / 1e6:.1f} MB removed")
