"""A version of the application on its hosts: started and healthy, stopped, made live.

Each `deploy.transport` is a fleet, looked up by name in FLEETS: `local` runs one process on this
machine (fleet/transports/local.py), `ssh` one per host, batch by batch
(fleet/transports/ssh_fleet.py). A new transport is one module with a class that has the `Fleet`
methods, and one line in FLEETS.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, cast

from deployctl.playbook import Playbook


class Fleet(Protocol):
    """The hosts of one version of the application, as a transport reaches them."""

    def unreachable(self) -> dict[str, str]:
        """Hosts deployctl cannot work on, with why (unknown host key, refused key, no answer)."""

    def start(self, upload: bool) -> dict[str, Any]:
        """Start the version wherever it is not running yet and wait until healthy. With
        `upload` (green) a host without the build gets it first; blue's is there already."""

    def stop(self) -> bool:
        """Stop the version everywhere; True if it was running somewhere."""

    def make_live(self) -> dict[str, Any]:
        """Record on the hosts that this version is the one to run (nothing where there is no
        such record)."""


FLEETS = {
    "local": "deployctl.fleet.transports.local:LocalFleet",
    "ssh": "deployctl.fleet.transports.ssh_fleet:SshFleet",
}


def fleet(pb: Playbook, workdir: Path) -> Fleet:
    """The fleet the playbook's `deploy.transport` names, for this version."""
    module, _, name = FLEETS[pb.deploy.transport].partition(":")
    driver: Any = getattr(importlib.import_module(module), name)
    return cast(Fleet, driver(pb, workdir))


def unreachable(pb: Playbook) -> dict[str, str]:
    return fleet(pb, pb.workdir).unreachable()


def start(pb: Playbook, workdir: Path, upload: bool = True) -> dict[str, Any]:
    return fleet(pb, workdir).start(upload)


def ensure_running(pb: Playbook, workdir: Path) -> dict[str, Any]:
    """Blue, before users go back to it: started where it is not running, from its release."""
    return fleet(pb, workdir).start(upload=False)


def stop(pb: Playbook, workdir: Path) -> bool:
    return fleet(pb, workdir).stop()


def make_live(pb: Playbook) -> dict[str, Any]:
    return fleet(pb, pb.workdir).make_live()
