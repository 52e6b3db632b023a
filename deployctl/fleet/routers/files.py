"""What the file-based routers share: replacing a proxy's file atomically, checking a split.

The allow-list's user ids end up inside HAProxy map files and nginx configuration, so they are
held to a plain alphabet here rather than escaped differently for each proxy.
"""

from __future__ import annotations

import os
from pathlib import Path

from deployctl.errors import BadInput
from deployctl.fleet.routers import Split
from deployctl.playbook.values import USER_ID


def check_split(split: Split) -> None:
    """Refuse a split no proxy can be given unchanged, before anything is touched."""
    if not 0 <= split.percent <= 100:
        raise BadInput(f"router split: percent must be between 0 and 100, got {split.percent}")
    for i, user_id in enumerate(split.allow):
        if not USER_ID.fullmatch(user_id):
            raise BadInput(
                f"router split: allow[{i}]: {user_id!r} is not a user id the routers accept: "
                "up to 128 letters, digits and . _ @ + : -, starting with a letter or a digit"
            )


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text`: a proxy reading it sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())  # a restart after a crash finds the whole new file or the old one
    tmp.chmod(0o644)
    tmp.replace(path)


def last_lines(text: str, count: int = 5) -> str:
    """The end of a program's output, on one line, for an error message."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) or "no output"
