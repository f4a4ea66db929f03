"""Local data files and secrets readable by their owner only.

The data directory holds SQLite databases (every record of a service) and
local secrets (the JWT signing secret, the credentials key): on a shared
machine another user must not read them. Directories are 0700 and files 0600,
whatever the umask; ones left by an older version are tightened when opened.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (created with its parents)."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    # mkdir's mode is masked by the umask, and an existing directory keeps its
    # mode. A directory we do not own (a volume's root) or on a read-only mount
    # cannot be changed: its owner chose its mode, and that is left to them. Nor is
    # a sticky one (/tmp, /var/tmp): it is shared on purpose, and closing it as root
    # would break every other user of the machine; the files in it are still 0600.
    with contextlib.suppress(OSError):
        mode = path.stat().st_mode
        if mode & 0o777 != DIR_MODE and not mode & stat.S_ISVTX:
            path.chmod(DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """``path`` as a file only its owner can read and write, created empty if missing."""
    private_dir(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    return tighten(path)


def tighten(path: Path) -> Path:
    """An existing file made 0600 (when we own it and may change it)."""
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o777 != FILE_MODE:
            path.chmod(FILE_MODE)
    return path
