"""Transports run commands on a host; chosen by name from the playbook (`deploy.transport`)."""

from __future__ import annotations

from pathlib import Path

from deployctl.fleet.transports.local import LocalTransport

TRANSPORTS = {"local": LocalTransport}


def get(name: str, workdir: Path) -> LocalTransport:
    return TRANSPORTS[name](workdir)
