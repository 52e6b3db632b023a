"""Folders and files that hold user data or how processes were started: only their owner reads them.

Folders are 0700 and files 0600 from the moment they exist (created with that mode, never
chmod-ed after the data is in), whatever the umask.
"""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path, top: Path | None = None) -> Path:
    """`path` and every folder missing above it, 0700; existing folders from `top` (default:
    `path` itself) down to `path` are made 0700 too."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    top = top or path
    for folder in (path, *path.parents):
        folder.chmod(0o700)  # also what mkdir's mode lost to the umask
        if folder in (top, folder.parent):
            break
    return path


def write_private(path: Path, data: bytes, *, mode: str = "replace") -> None:
    """Write `data` to `path`, 0600: `replace` swaps it in whole (a reader never sees half of
    it); `append` adds to the end."""
    if mode == "append":
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "ab") as out:
            out.write(data)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)
