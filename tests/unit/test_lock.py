"""The locks agree with pyproject.toml, checked offline.

requirements.lock (the image) and requirements-dev.lock (the venv, CI) are
written by `make lock` from pyproject.toml's ranges. After an edit to
pyproject.toml without `make lock`, an install from the lock would silently
miss the new dependency or keep a version outside its new range; these tests
fail instead, with the command that fixes it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
FIX = "run `make lock` and commit requirements.lock and requirements-dev.lock"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
OWN_NAME = canonicalize_name(PROJECT["name"])


def _direct(extras: tuple[str, ...]) -> dict[str, Requirement]:
    """pyproject.toml's requirements for the given extras, self-references expanded."""
    found: dict[str, Requirement] = {}
    pending, seen = list(PROJECT["dependencies"]), set[str]()
    for extra in extras:
        pending += [f"{PROJECT['name']}[{extra}]"]
    while pending:
        req = Requirement(pending.pop())
        name = canonicalize_name(req.name)
        if name == OWN_NAME:
            for extra in req.extras - seen:
                seen.add(extra)
                pending += PROJECT["optional-dependencies"][extra]
            continue
        found[name] = req
    return found


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.M)
_VIA_US = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)==[^\n]*\n"  # the pin
    r"(?:    --hash[^\n]*\n)*"  # its hashes
    r"(?P<via>(?:    #[^\n]*\n)+)",  # what required it
    re.M,
)


def _lock(path: Path) -> tuple[dict[str, str], set[str]]:
    """The lock's pins, and the packages it says pyproject.toml asked for."""
    text = path.read_text()
    pins: dict[str, str] = {canonicalize_name(n): v for n, v in _PIN.findall(text)}
    direct: set[str] = {
        canonicalize_name(m.group(1))
        for m in _VIA_US.finditer(text)
        if f"{PROJECT['name']} (pyproject.toml)" in m.group("via")
    }
    return pins, direct


@pytest.mark.parametrize(
    ("lock", "extras"), [("requirements.lock", ()), ("requirements-dev.lock", ("dev",))]
)
def test_lock_matches_pyproject(lock: str, extras: tuple[str, ...]) -> None:
    pins, locked_direct = _lock(ROOT / lock)
    wanted = _direct(extras)
    missing = sorted(set(wanted) - set(pins))
    assert not missing, f"{lock} lacks {missing}: {FIX}"
    outside = {
        n: pins[n] for n, r in wanted.items() if not r.specifier.contains(pins[n], prereleases=True)
    }
    assert not outside, f"{lock} pins versions outside pyproject.toml's ranges {outside}: {FIX}"
    stale = sorted(locked_direct - set(wanted))
    assert not stale, f"{lock} still lists {stale}, no longer in pyproject.toml: {FIX}"
    assert set(wanted) <= locked_direct


def test_every_pin_carries_hashes() -> None:
    for lock in ("requirements.lock", "requirements-dev.lock"):
        text = (ROOT / lock).read_text()
        for block in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 3)[-1]):
            if "==" in block.split("\n", 1)[0]:
                pin = block.splitlines()[0]
                assert "--hash=sha256:" in block, f"{lock}: {pin} has no hash: {FIX}"
