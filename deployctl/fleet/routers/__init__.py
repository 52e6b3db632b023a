"""Routers move users between blue (the live version) and green (the new one).

Every router takes the same instructions, a `Split`, and reports the same `Reading`s, so the
engine does not care whether HAProxy, nginx or a user's command does the work. A router is
chosen by the playbook's `router.type`.

A cohort is sticky per user: users on the allow-list go to green first; then `percent` of the
others by a stable hash of their user id (a header or a cookie), so that a user on green at
10% is still on green at 50%, and never flips between versions within a step.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from deployctl.playbook import Playbook, RouterConfig

BLUE, GREEN = "blue", "green"


@dataclass(frozen=True)
class Endpoint:
    """Where a version answers: one server of a backend."""

    host: str
    port: int


@dataclass(frozen=True)
class Split:
    """Who goes to green: users on `allow`, then `percent` (0–100) of the others."""

    allow: tuple[str, ...] = ()
    percent: int = 0
    maintenance: bool = False     # everyone gets 503 with Retry-After (a database swap)


@dataclass(frozen=True)
class Reading:
    """Cumulative counters of one backend since the router started (differences make rates)."""

    requests: int
    errors: int                   # responses with status 5xx, and requests that got none
    response_ms: float | None     # average response time of recent requests, if known


@dataclass
class Readings:
    blue: Reading | None = None
    green: Reading | None = None
    extra: dict[str, object] = field(default_factory=dict)


class Router(Protocol):
    def point(self, color: str, endpoints: list[Endpoint]) -> None:
        """Send `color`'s traffic to these servers (green: the new version's)."""

    def apply(self, split: Split) -> None:
        """Move users as `split` says; idempotent, no request dropped while it switches."""

    def readings(self) -> Readings:
        """Counters per color; None where this router cannot measure."""


def endpoints(pb: Playbook) -> list[Endpoint]:
    """Where the playbook's version answers (with ssh: `{host}` on each host)."""
    hosts = [h.address for h in pb.deploy.ssh.hosts] if pb.deploy.ssh else []
    found = [Endpoint(e.host.replace("{host}", address), e.port)
             for e in pb.deploy.endpoints for address in (hosts if "{host}" in e.host else [e.host])]
    return list(dict.fromkeys(found))


# Each `router.type` a playbook may name: the module and class that drive it, imported when a
# playbook names it (the modules import this one). A new router is a module and a line here.
ROUTERS = {
    "haproxy": "deployctl.fleet.routers.haproxy:HaproxyRouter",
    "nginx": "deployctl.fleet.routers.nginx:NginxRouter",
    "command": "deployctl.fleet.routers.command:CommandRouter",
}


def get(config: RouterConfig, app: str) -> Router:
    """The router the playbook names, ready to use."""
    module, _, name = ROUTERS[config.type].partition(":")
    driver: Any = getattr(importlib.import_module(module), name)
    return cast(Router, driver.from_config(config, app))
