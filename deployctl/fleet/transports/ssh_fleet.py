"""The `ssh` fleet: one process per host, batch by batch.

The build (`deploy.ssh.artifact`) is uploaded into `<root>/releases/<version>/`, the process
started there and its health URL answered, before the next batch begins. Making a version live
switches each host's `<root>/current` link to it in one rename. `{host}` in the command, its
environment, the health URL and the endpoints stands for each host's address.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deployctl.fleet import process
from deployctl.fleet.health import healthy
from deployctl.fleet.process import ProcessSpec
from deployctl.fleet.transports.ssh import Host, HostsFailed, Remote, SshTransport
from deployctl.playbook import Playbook


def for_host(text: str, address: str) -> str:
    return text.replace("{host}", address)


class SshFleet:
    def __init__(self, pb: Playbook, workdir: Path) -> None:
        assert pb.deploy.ssh is not None
        self.pb, self.cfg = pb, pb.deploy.ssh
        self.release_dir = posixpath.join(self.cfg.root, "releases", pb.version)

    def _spec(self, address: str) -> ProcessSpec:
        """The process on one host: run from its release folder (or the root without a build)."""
        spec = process.for_playbook(self.pb)
        cwd = self.release_dir if self.cfg.artifact else self.cfg.root
        return dataclasses.replace(
            spec, argv=[for_host(a, address) for a in spec.argv], cwd=Path(cwd),
            env={k: for_host(v, address) for k, v in spec.env.items()})

    @contextmanager
    def _hosts(self) -> Iterator[SshTransport]:
        cfg = self.cfg
        hosts = [Host(h.name, h.address, h.port, **({"user": h.user} if h.user else {}), key=h.key,
                      passphrase_env=h.passphrase_env) for h in cfg.hosts]
        # Pidfiles and logs beside the releases: one application's never mix with another's.
        with SshTransport(hosts, known_hosts=cfg.known_hosts, parallel=cfg.parallel, batch=cfg.batch,
                          rundir=posixpath.join(cfg.root, "run"), connect_attempts=cfg.connect_attempts,
                          connect_timeout=cfg.connect_timeout) as fleet:
            yield fleet

    def unreachable(self) -> dict[str, str]:
        try:
            with self._hosts() as fleet:
                fleet.each(lambda r: r.run(["true"], quiet=True), batched=False)
        except HostsFailed as exc:
            return {host: str(error) for host, error in exc.failures.items()}
        return {}

    def start(self, upload: bool) -> dict[str, Any]:
        artifact = self.cfg.artifact if upload else None
        health_url = self.pb.deploy.health.url

        def one(remote: Remote) -> dict[str, Any]:
            spec = self._spec(remote.host.address)
            restarted = remote.pid(spec) is None
            if artifact is not None and restarted:  # never under a running process
                remote.upload(artifact, self.release_dir)
            pid = remote.start(spec)
            took = healthy(self.pb, for_host(health_url, remote.host.address),
                           lambda: remote.exited(spec))
            return {"pid": pid, "healthy_after_s": took, "restarted": restarted,
                    "uploaded": artifact is not None and restarted}

        with self._hosts() as fleet:
            per_host = fleet.each(one)
        return {"hosts": per_host, "health": [for_host(health_url, h.address) for h in self.cfg.hosts],
                "restarted": any(h["restarted"] for h in per_host.values())}

    def stop(self) -> bool:
        timeout = self.pb.deploy.stop_timeout
        with self._hosts() as fleet:
            stopped = fleet.each(lambda r: r.stop(self._spec(r.host.address), timeout), batched=False)
        return any(stopped.values())

    def make_live(self) -> dict[str, Any]:
        """Point each host's `current` link at this version (with a build; else nothing)."""
        if self.cfg.artifact is None:
            return {}
        cfg = self.cfg
        with self._hosts() as fleet:
            pruned = fleet.each(lambda r: r.switch(cfg.root, self.pb.version, cfg.keep_releases))
        return {"current": self.pb.version, "pruned": {h: p for h, p in pruned.items() if p}}
