"""A version of the application on its hosts: started and healthy, stopped, made live.

`local` runs one process on this machine. `ssh` runs one per host, batch by batch: the build
(`deploy.ssh.artifact`) is uploaded into `<root>/releases/<version>/`, the process started there
and its health URL answered, before the next batch begins. Making a version live switches each
host's `<root>/current` link to it in one rename. With `ssh`, `{host}` in the command, its
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
from deployctl.fleet.health import wait_healthy
from deployctl.fleet.process import ProcessSpec
from deployctl.fleet.transports.local import LocalTransport
from deployctl.fleet.transports.ssh import Host, HostsFailed, Remote, SshTransport
from deployctl.playbook import Playbook, SshConfig


def _ssh(pb: Playbook) -> SshConfig:
    assert pb.deploy.ssh is not None
    return pb.deploy.ssh


def for_host(text: str, address: str) -> str:
    return text.replace("{host}", address)


def _release_dir(pb: Playbook) -> str:
    return posixpath.join(_ssh(pb).root, "releases", pb.version)


def _spec(pb: Playbook, address: str) -> ProcessSpec:
    """The process on one host: run from its release folder (or the root without a build)."""
    spec = process.for_playbook(pb)
    cwd = _release_dir(pb) if _ssh(pb).artifact else _ssh(pb).root
    return dataclasses.replace(
        spec, argv=[for_host(a, address) for a in spec.argv], cwd=Path(cwd),
        env={k: for_host(v, address) for k, v in spec.env.items()})


@contextmanager
def _fleet(pb: Playbook) -> Iterator[SshTransport]:
    cfg = _ssh(pb)
    hosts = [Host(h.name, h.address, h.port, **({"user": h.user} if h.user else {}), key=h.key,
                  passphrase_env=h.passphrase_env) for h in cfg.hosts]
    # Pidfiles and logs beside the releases: one application's never mix with another's.
    with SshTransport(hosts, known_hosts=cfg.known_hosts, parallel=cfg.parallel, batch=cfg.batch,
                      rundir=posixpath.join(cfg.root, "run"), connect_attempts=cfg.connect_attempts,
                      connect_timeout=cfg.connect_timeout) as fleet:
        yield fleet


def unreachable(pb: Playbook) -> dict[str, str]:
    """Hosts deployctl cannot work on (unknown or changed host key, refused key, no answer)."""
    if pb.deploy.transport == "local":
        return {}
    try:
        with _fleet(pb) as fleet:
            fleet.each(lambda r: r.run(["true"], quiet=True), batched=False)
    except HostsFailed as exc:
        return {host: str(error) for host, error in exc.failures.items()}
    return {}


def health_urls(pb: Playbook) -> list[str]:
    if pb.deploy.transport == "local":
        return [pb.deploy.health.url]
    return [for_host(pb.deploy.health.url, h.address) for h in _ssh(pb).hosts]


def _healthy(pb: Playbook, url: str, died: Any) -> float:
    health = pb.deploy.health
    return round(wait_healthy(url, timeout=health.timeout, interval=health.interval, died=died), 3)


def start(pb: Playbook, workdir: Path, upload: bool = True) -> dict[str, Any]:
    """Start the version wherever it is not running yet and wait until healthy. With `upload`
    (green) a host that does not run it gets the build first; blue's release is there already."""
    if pb.deploy.transport == "local":
        local, spec = LocalTransport(workdir), process.for_playbook(pb)
        restarted = local.pid(spec) is None
        pid = local.start(spec)
        took = _healthy(pb, pb.deploy.health.url, lambda: local.exited(spec))
        return {"pid": pid, "healthy_after_s": took, "health": pb.deploy.health.url, "restarted": restarted}
    artifact = _ssh(pb).artifact if upload else None

    def one(remote: Remote) -> dict[str, Any]:
        spec = _spec(pb, remote.host.address)
        restarted = remote.pid(spec) is None
        if artifact is not None and restarted:  # never under a running process
            remote.upload(artifact, _release_dir(pb))
        pid = remote.start(spec)
        took = _healthy(pb, for_host(pb.deploy.health.url, remote.host.address),
                        lambda: remote.exited(spec))
        return {"pid": pid, "healthy_after_s": took, "restarted": restarted,
                "uploaded": artifact is not None and restarted}

    with _fleet(pb) as fleet:
        per_host = fleet.each(one)
    return {"hosts": per_host, "health": health_urls(pb),
            "restarted": any(h["restarted"] for h in per_host.values())}


def ensure_running(pb: Playbook, workdir: Path) -> dict[str, Any]:
    """Blue, before users go back to it: started where it is not running, from its release."""
    return start(pb, workdir, upload=False)


def stop(pb: Playbook, workdir: Path) -> bool:
    """Stop the version everywhere; True if it was running somewhere."""
    if pb.deploy.transport == "local":
        return LocalTransport(workdir).stop(process.for_playbook(pb), pb.deploy.stop_timeout)
    with _fleet(pb) as fleet:
        stopped = fleet.each(lambda r: r.stop(_spec(pb, r.host.address), pb.deploy.stop_timeout),
                             batched=False)
    return any(stopped.values())


def make_live(pb: Playbook) -> dict[str, Any]:
    """Point each host's `current` link at this version (ssh with a build; else nothing)."""
    if pb.deploy.transport == "local" or _ssh(pb).artifact is None:
        return {}
    cfg = _ssh(pb)
    with _fleet(pb) as fleet:
        pruned = fleet.each(lambda r: r.switch(cfg.root, pb.version, cfg.keep_releases))
    return {"current": pb.version, "pruned": {h: p for h, p in pruned.items() if p}}
