"""Users behind a real HAProxy for release tests: the `haproxy` fixture (in front of the test's
blue and green ports), playbooks routed through it, simulated users reading their feed, and what
version each user gets. Registered for every test module by tests/conftest.py."""

from __future__ import annotations

import http.client
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deployctl.fleet.routers import Endpoint, Split
from deployctl.fleet.routers import haproxy as haproxy_router
from tests.conftest import Env
from tests.routers_env import HaproxyEnv, free_port

USERS = [f"user{i}" for i in range(200)]
STAFF = ["user7", "user42"]


@pytest.fixture(name="haproxy")
def haproxy_fixture(env: Env) -> Iterator[HaproxyEnv]:
    # A short folder: a unix socket's path holds ~100 bytes at most.
    folder = Path(tempfile.mkdtemp(prefix="dc-haproxy-"))
    port, maps, admin = free_port(), folder / "maps", folder / "admin.sock"
    config = folder / "haproxy.cfg"
    config.write_text(haproxy_router.render_config(
        listen=Endpoint("127.0.0.1", port), socket_path=admin, state_dir=maps,
        blue=[Endpoint("127.0.0.1", env.blue_port)], green=[Endpoint("127.0.0.1", env.green_port)]))
    haproxy_router.write_map_files(maps, Split())
    proxy = HaproxyEnv(port, folder, config, haproxy_router.HaproxyRouter(admin, maps))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
        shutil.rmtree(folder, ignore_errors=True)


def routed(env: Env, proxy: HaproxyEnv, version: str, **changes: Any) -> Path:
    """A playbook for `version` behind the test's HAProxy."""
    port = env.blue_port if version == "1" else env.green_port
    deploy = {"endpoints": [f"127.0.0.1:{port}"], **changes.pop("deploy", {})}
    return env.playbook(version, deploy=deploy, router={
        "type": "haproxy", "retry_after": "2s",
        "haproxy": {"socket": str(proxy.folder / "admin.sock"), "maps": str(proxy.folder / "maps")},
    }, **changes)


# A slow machine may leave a short step without a conclusive reading: these tests are about moving
# users and breaches, so such a step goes on (the test of inconclusive steps sets `pause`).
GATES = {"interval": "0.4s", "failures": 2, "min_requests": 3, "error_rate": {"max": 0.05},
         "on_inconclusive": "continue"}


@dataclass
class Users:
    """Simulated users reading their feed through HAProxy, each request recorded."""

    port: int
    seen: list[tuple[float, str, int | None, str | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _run(self, offset: int) -> None:
        i = offset
        while not self.stop.is_set():
            user = USERS[i % len(USERS)]
            i += 7
            status: int | None = None
            version: str | None = None
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/feed", headers={"X-User-Id": user})
                resp = conn.getresponse()
                resp.read()
                status, server = resp.status, resp.getheader("Server") or ""
                version = server.removeprefix("social/") if server.startswith("social/") else None
                conn.close()
            except (OSError, http.client.HTTPException):
                pass
            self.seen.append((time.monotonic(), user, status, version))
            time.sleep(0.002)

    def __enter__(self) -> Users:
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(4)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def failed(self) -> list[tuple[float, str, int | None, str | None]]:
        return [s for s in self.seen if s[2] != 200]

    def first_on(self, version: str) -> dict[str, float]:
        first: dict[str, float] = {}
        for at, user, _, seen in self.seen:
            if seen == version:
                first.setdefault(user, at)
        return first


def versions_now(port: int) -> dict[str, str | None]:
    """The version each user gets right now."""
    out = {}
    for user in USERS:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/health", headers={"X-User-Id": user})
        resp = conn.getresponse()
        resp.read()
        out[user] = (resp.getheader("Server") or "").removeprefix("social/")
        conn.close()
    return out


def released_v1(env: Env, proxy: HaproxyEnv) -> None:
    done = env.cli("release", str(routed(env, proxy, "1")))
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(versions_now(proxy.port).values()) == {"1"}
