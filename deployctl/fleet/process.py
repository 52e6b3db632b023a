"""What to run for a version of the application, built from the playbook as data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deployctl.playbook import Playbook


@dataclass(frozen=True)
class ProcessSpec:
    app: str
    name: str  # the version label: one process per version of an application
    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)


def for_playbook(pb: Playbook) -> ProcessSpec:
    return ProcessSpec(
        app=pb.app,
        name=f"version-{pb.version}",
        argv=list(pb.deploy.command),
        cwd=pb.deploy.cwd or pb.source_path.resolve().parent,
        env=dict(pb.deploy.env),
    )
