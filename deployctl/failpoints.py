"""Failpoints: let the crash tests kill deployctl at an exact point of a step.

`DEPLOYCTL_FAILPOINT=migrate:acted` sends SIGKILL to this process right after the migrate step
has acted and before its `done` event is written; `:started` right after `started` is written.
`migrate:acted:stop` sends SIGSTOP instead: the test does something to the world (restarts the
database, fills the disk) and lets the process go on with SIGCONT. Unset (always, outside the
tests), a failpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "DEPLOYCTL_FAILPOINT"


def hit(step: str, point: str) -> None:
    wanted = os.environ.get(VARIABLE)
    if wanted == f"{step}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)
    elif wanted == f"{step}:{point}:stop":
        os.kill(os.getpid(), signal.SIGSTOP)
