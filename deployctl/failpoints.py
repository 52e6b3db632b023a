"""Failpoints: let the crash tests kill deployctl at an exact point of a step.

`DEPLOYCTL_FAILPOINT=migrate:acted` sends SIGKILL to this process right after the migrate step
has acted and before its `done` event is written; `:started` right after `started` is written.
Unset (always, outside the tests), a failpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "DEPLOYCTL_FAILPOINT"


def hit(step: str, point: str) -> None:
    if os.environ.get(VARIABLE) == f"{step}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)
