"""The `command` router: the user's own program moves the traffic (cloud load balancer, Kubernetes).

Each change runs the configured argv once, with what to do in its environment:

- always `DEPLOYCTL_ACTION`: `apply` or `point`;
- for `apply`: `DEPLOYCTL_ALLOW` (user ids, comma-separated), `DEPLOYCTL_PERCENT` (0-100) and
  `DEPLOYCTL_MAINTENANCE` (`1` or `0`);
- for `point`: `DEPLOYCTL_COLOR` (`blue` or `green`) and `DEPLOYCTL_BLUE` or `DEPLOYCTL_GREEN`,
  the servers as comma-separated `host:port`.

Exit status 0 means done; anything else fails the step with the end of the program's output.

With `readings: true` the program also measures: at every gate reading it runs with
`DEPLOYCTL_ACTION=readings` and prints, as its last line, JSON of each color's cumulative
counters: `{"blue": {"requests": 1200, "errors": 3, "response_ms": 41.5}, "green": {...}}`
(`response_ms` optional). Otherwise, or when that fails, its readings are empty, which the gates
treat as inconclusive, never as a pass.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from deployctl.errors import BadInput, StepFailed
from deployctl.fleet.routers import BLUE, GREEN, Endpoint, Reading, Readings, Split
from deployctl.fleet.routers.files import last_lines
from deployctl.log import log

if TYPE_CHECKING:
    from deployctl.playbook import RouterConfig


def apply_env(split: Split) -> dict[str, str]:
    """The variables `apply(split)` adds to the command's environment."""
    if any("," in uid for uid in split.allow):
        raise BadInput("command router: a user id on the allow-list contains a comma")
    return {"DEPLOYCTL_ACTION": "apply", "DEPLOYCTL_ALLOW": ",".join(split.allow),
            "DEPLOYCTL_PERCENT": str(split.percent), "DEPLOYCTL_MAINTENANCE": str(int(split.maintenance))}


def point_env(color: str, endpoints: list[Endpoint]) -> dict[str, str]:
    """The variables `point(color, endpoints)` adds to the command's environment."""
    if color not in (BLUE, GREEN):
        raise BadInput(f"command router: color must be {BLUE} or {GREEN}, got {color!r}")
    servers = ",".join(f"[{e.host}]:{e.port}" if ":" in e.host else f"{e.host}:{e.port}" for e in endpoints)
    return {"DEPLOYCTL_ACTION": "point", "DEPLOYCTL_COLOR": color, f"DEPLOYCTL_{color.upper()}": servers}


class CommandRouter:
    """Runs `argv` for every change; `env` adds to (not replaces) deployctl's environment."""

    def __init__(self, argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
                 timeout: float = 300.0, measures: bool = False) -> None:
        if not argv:
            raise BadInput("command router: the command is empty")
        self.argv, self.cwd, self.env, self.timeout = list(argv), cwd, dict(env or {}), timeout
        self.measures = measures

    @classmethod
    def from_config(cls, config: RouterConfig, app: str) -> CommandRouter:
        """The router a playbook's `router:` section (type `command`) describes."""
        if config.command is None:
            raise BadInput(f"{app}: router type command needs its settings under `command:`")
        return cls(list(config.command.argv), timeout=config.command.timeout,
                   measures=config.command.readings)

    def apply(self, split: Split) -> None:
        self._run(apply_env(split))
        log.info("router.applied", router="command", percent=split.percent, allow=len(split.allow),
                 maintenance=split.maintenance)

    def point(self, color: str, endpoints: list[Endpoint]) -> None:
        self._run(point_env(color, endpoints))
        log.info("router.pointed", router="command", color=color,
                 servers=[f"{e.host}:{e.port}" for e in endpoints])

    def readings(self) -> Readings:
        """What the program measured (`readings: true`); else, or if it could not say, nothing:
        None for both colors (inconclusive for the gates, never a failed step)."""
        if not self.measures:
            return Readings()
        try:
            said = self._run({"DEPLOYCTL_ACTION": "readings"}, stderr=subprocess.DEVNULL)
            found = json.loads(said.strip().splitlines()[-1])
            return Readings(blue=_reading(found.get("blue")), green=_reading(found.get("green")))
        except (StepFailed, ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
            log.warning("router.readings: the router command gave no readings", problem=str(exc))
            return Readings()

    def _run(self, variables: dict[str, str], stderr: int = subprocess.STDOUT) -> str:
        action = variables["DEPLOYCTL_ACTION"]
        try:
            done = subprocess.run(self.argv, cwd=self.cwd, env={**os.environ, **self.env, **variables},
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                  text=True, errors="replace", timeout=self.timeout, check=False)
        except FileNotFoundError as exc:
            raise StepFailed(f"router command {self.argv[0]}: not found ({exc.strerror})") from exc
        except subprocess.TimeoutExpired as exc:
            output = exc.output or ""
            if isinstance(output, bytes):
                output = output.decode(errors="replace")
            raise StepFailed(f"router command {self.argv[0]} ({action}) did not finish within "
                             f"{self.timeout:g}s: {last_lines(output)}") from exc
        except OSError as exc:
            raise StepFailed(f"router command {self.argv[0]}: {exc}") from exc
        if done.returncode != 0:
            raise StepFailed(f"router command {self.argv[0]} ({action}) exited with status "
                             f"{done.returncode}: {last_lines(done.stdout)}")
        return done.stdout


def _reading(counters: object) -> Reading | None:
    """One color's counters as the program printed them (None: it printed none)."""
    if counters is None:
        return None
    if not isinstance(counters, dict):
        raise ValueError(f"expected an object of counters, got {counters!r}")
    response = counters.get("response_ms")
    return Reading(requests=int(counters["requests"]), errors=int(counters["errors"]),
                   response_ms=None if response is None else float(response))
