"""The command line: parses, calls the engine, prints. The work is in engine.py and below.

Exit codes: 0 released (or done); 1 failed and rolled back cleanly; 2 bad input, nothing
touched; 3 rollback failed, a human is needed; 4 another release holds the lock.

`base` holds the `deployctl` group and what every command shares; each other module adds its
commands to it when imported here.
"""

from deployctl.cli import admin, delta, observing, playbooks, releasing  # noqa: F401 (they add commands)
from deployctl.cli.base import main

__all__ = ["main"]
