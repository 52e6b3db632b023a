"""Failed requests while users move between versions, through a real HAProxy.

The sample app's version 1 is released behind HAProxy (runtime API, no reloads), then two
releases of version 2 run while simulated users read their feed through HAProxy without pause,
each with its own user id:

- `rollback`: version 2 answers users slowly (SOCIAL_SLOW), the latency gate breaches at 10%,
  and deployctl rolls back on its own (database rollback `keep`: the migration is expand-only).
  `rollback_traffic_s` is the time from the breaching gate reading to the end of the step that
  put every user back on blue, both as the journal recorded them; `rollback_traffic_s_loaded`
  the same while pgbench (8 clients, a database of its own) saturates the database server.
- `cutover`: a staged release 0 → allow-list → 10% → 50% → 100% → finalize.

A request fails if it gets no answer or a status other than 200. Load keeps running until the
release has ended and at least REQUESTS requests were sent in its window.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from bench.common import create_database, drop_database, emit, progress
from deployctl.fleet.routers import Endpoint, Split
from deployctl.fleet.routers import haproxy as haproxy_router
from deployctl.localpg import LocalCluster

SOCIAL = Path(__file__).resolve().parent.parent / "examples" / "social"
REQUESTS = int(os.environ.get("BENCH_TRAFFIC_REQUESTS", "10000"))
USERS = [f"user{i}" for i in range(1000)]
THREADS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Load:
    """Users reading their feed through HAProxy; counts answers and failures."""

    port: int
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def sent(self) -> int:
        with self.lock:
            return self.ok + len(self.failed)

    def _run(self, offset: int) -> None:
        i = offset
        while not self.stop.is_set():
            i += 7
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/feed", headers={"X-User-Id": USERS[i % len(USERS)]})
                resp = conn.getresponse()
                resp.read()
                conn.close()
                outcome = None if resp.status == 200 else f"status {resp.status}"
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
            with self.lock:
                if outcome is None:
                    self.ok += 1
                else:
                    self.failed.append(outcome)

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(THREADS)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


class Stage:
    """HAProxy in front of the sample app's two versions, and playbooks to release them."""

    def __init__(self, cluster: LocalCluster, folder: Path) -> None:
        self.folder, self.cluster = folder, cluster
        self.dsn = create_database(cluster, "bench_social")
        self.ports = {"1": _free_port(), "2": _free_port()}
        self.port = _free_port()
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not os.access(haproxy, os.X_OK):
            raise RuntimeError("haproxy not found: `make fleet-tools` installs it")
        maps, admin = folder / "maps", folder / "admin.sock"
        config = folder / "haproxy.cfg"
        config.write_text(haproxy_router.render_config(
            listen=Endpoint("127.0.0.1", self.port), socket_path=admin, state_dir=maps,
            blue=[Endpoint("127.0.0.1", self.ports["1"])], green=[Endpoint("127.0.0.1", self.ports["2"])]))
        haproxy_router.write_map_files(maps, Split())
        self.log = open(folder / "haproxy.log", "ab")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not admin.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start; see {folder / 'haproxy.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()

    def playbook(self, version: str, name: str, **changes: Any) -> Path:
        port = self.ports[version]
        data: dict[str, Any] = {
            "app": "social", "version": version, "workdir": str(self.folder / "work"),
            "database": {"dsn": self.dsn, "rollback": "keep"},
            "migrations": {"alembic_ini": str(SOCIAL / "alembic.ini"),
                           "target": "0001" if version == "1" else "0002"},
            "deploy": {"command": [sys.executable, str(SOCIAL / "app.py"), "serve", "--version", version,
                                   "--port", str(port)],
                       "env": {"DATABASE_URL": self.dsn, **changes.pop("app_env", {})},
                       "health": {"url": f"http://127.0.0.1:{port}/health", "timeout": "30s"},
                       "endpoints": [f"127.0.0.1:{port}"]},
            "router": {"type": "haproxy", "haproxy": {"socket": str(self.folder / "admin.sock"),
                                                      "maps": str(self.folder / "maps")}},
            **changes,
        }
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def release(self, path: Path) -> int:
        done = subprocess.run([sys.executable, "-m", "deployctl", "--log-json", "release", str(path)],
                              capture_output=True, text=True, check=False, cwd=self.folder)
        return done.returncode

    def release_under_load(self, path: Path) -> tuple[int, Load]:
        with Load(self.port) as load:
            code = self.release(path)
            while load.sent < REQUESTS:
                time.sleep(0.1)
        return code, load


# A step that cannot judge green rolls back: the benchmark never waits for an operator.
GATES = {"interval": "0.5s", "failures": 2, "min_requests": 5, "on_inconclusive": "rollback",
         "error_rate": {"max": 0.01}, "latency_ms": {"max": 100}}


def _rollback_traffic_s(state_dsn: str) -> float:
    """From the breaching gate reading to the end of the step that moved everyone to blue."""
    with psycopg.connect(state_dsn) as conn:
        row = conn.execute(
            """WITH r AS (SELECT max(id) AS id FROM deployctl.releases)
               SELECT (SELECT max(at) FROM deployctl.events e, r WHERE e.release_id = r.id
                         AND phase = 'info' AND detail ->> 'status' = 'fail'),
                      (SELECT at FROM deployctl.events e, r WHERE e.release_id = r.id
                         AND step = 'rollback.traffic' AND phase = 'done')""").fetchone()
    if row is None or row[0] is None or row[1] is None:
        raise RuntimeError("the rollback release has no breaching reading or no traffic step")
    return (row[1] - row[0]).total_seconds()


@contextmanager
def _saturated(cluster: LocalCluster) -> Iterator[None]:
    """pgbench writing as fast as it can, on a database of its own on the same server."""
    create_database(cluster, "bench_saturate")
    argv = ["pgbench", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres"]
    subprocess.run([*argv, "-i", "-q", "-s", "10", "bench_saturate"], check=True, capture_output=True)
    pgbench = subprocess.Popen([*argv, "-c", "8", "-j", "2", "-T", "3600", "bench_saturate"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        pgbench.terminate()
        pgbench.wait(timeout=30)
        # What comes next starts on a quiet server: no vacuum of pgbench's tables, no checkpoint
        # of its WAL to come.
        drop_database(cluster, "bench_saturate")
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CHECKPOINT")


def _expect(stage: Stage, code: int, wanted: int, what: str) -> None:
    """A release's exit code as the benchmark needs it, else how it ended, as its journal says
    (the folder with its logs goes)."""
    if code == wanted:
        return
    with psycopg.connect(stage.cluster.dsn("deployctl")) as conn:
        row = conn.execute("SELECT status, reason FROM deployctl.releases "
                           "ORDER BY id DESC LIMIT 1").fetchone()
    raise RuntimeError(f"{what} exited {code}, not {wanted}: "
                       + (f"{row[0]}: {row[1]}" if row else "no release in the journal"))


def _slow_release_rolls_back(stage: Stage, name: str) -> Load:
    """Version 2 answering users slowly under load: the latency gate must roll it back."""
    code, load = stage.release_under_load(stage.playbook(
        "2", name, app_env={"SOCIAL_SLOW": "300"}, gates=GATES,
        cohorts=[{"name": "beta", "percent": 10, "hold": "60s"}]))
    _expect(stage, code, 1, f"the slow version 2 ({name})")
    return load


def run(cluster: LocalCluster, rounds: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="dc-bench-traffic-"))
    stage = Stage(cluster, folder)
    try:
        progress("releasing version 1 behind HAProxy")
        if stage.release(stage.playbook("1", "v1")) != 0:
            raise RuntimeError(f"version 1 did not release; see {folder}")
        progress("version 2, slow for users: the latency gate must roll it back")
        load = _slow_release_rolls_back(stage, "v2-slow")
        emit("rollback_requests", load.sent)
        emit("rollback_failed_requests", len(load.failed))
        emit("rollback_traffic_s", _rollback_traffic_s(cluster.dsn("deployctl")))
        progress("the same while pgbench saturates the database server")
        with _saturated(cluster):
            _slow_release_rolls_back(stage, "v2-slow-loaded")
        emit("rollback_traffic_s_loaded", _rollback_traffic_s(cluster.dsn("deployctl")))
        progress("version 2, staged: allow-list, 10%, 50%, 100%")
        code, load = stage.release_under_load(stage.playbook(
            "2", "v2", gates=GATES, cohorts=[
                {"name": "staff", "allow": USERS[:100], "hold": "2s"},
                {"name": "beta", "percent": 10, "hold": "2s"},
                {"name": "half", "percent": 50, "hold": "2s"},
                {"name": "everyone", "percent": 100, "hold": "2s"}]))
        _expect(stage, code, 0, "the staged release of version 2")
        emit("cutover_requests", load.sent)
        emit("cutover_failed_requests", len(load.failed))
        if load.failed or code:
            progress(f"failures: {sorted(set(load.failed))[:5]}")
    finally:
        stage.stop()
        subprocess.run(["pkill", "-f", str(SOCIAL / "app.py")], check=False)
        shutil.rmtree(folder, ignore_errors=True)
