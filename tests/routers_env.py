"""Real HAProxy, real nginx and three tiny backends on loopback, for the routers' tests.

Each backend is its own Python process answering every request with its color ("blue",
"green", "third") and status 200, or 500 on paths under /fail. HAProxy and nginx run in the
foreground from a temporary folder, configured by the routers' own `render_config`, on free
loopback ports. A missing haproxy or nginx fails the tests when the CI variable is set (never a
silent skip there); elsewhere they are skipped with the reason.

tests/conftest.py registers the fixtures (`backends_fixture`, `haproxy_env_fixture`,
`nginx_env_fixture`) for every test module; tests ask for them as `backends`, `haproxy_env` and `nginx_env`.
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deployctl.fleet.routers import Endpoint, Split
from deployctl.fleet.routers import haproxy as haproxy_router
from deployctl.fleet.routers import nginx as nginx_router
from tests.conftest import free_port, require

RETRY_AFTER = 7  # not the default 5, so the tests show the setting reaches the 503s
COOKIE = "uid"   # the user id's cookie, for requests without the X-User-Id header

_BACKEND = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = sys.argv[1].encode()
        self.send_response(500 if self.path.startswith("/fail") else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default 5 drops connections under the load tests

server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def wait_listening(port: int, proc: subprocess.Popen[bytes], output: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}: {output.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{proc.args!r} does not listen on {port} after {timeout}s: {output.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Backends:
    blue: Endpoint
    green: Endpoint
    third: Endpoint


@pytest.fixture(scope="module", name="backends")
def backends_fixture() -> Iterator[Backends]:
    procs = [subprocess.Popen([sys.executable, "-c", _BACKEND, color], stdout=subprocess.PIPE)
             for color in ("blue", "green", "third")]
    try:
        ports = []
        for proc in procs:
            assert proc.stdout is not None
            ports.append(int(proc.stdout.readline()))
        yield Backends(*(Endpoint("127.0.0.1", port) for port in ports))
    finally:
        for proc in procs:
            stop(proc)


@dataclass
class Answer:
    status: int
    body: str
    headers: dict[str, str]


def request(port: int, user: str | None = None, *, cookie: str | None = None, path: str = "/",
            conn: http.client.HTTPConnection | None = None) -> Answer:
    """One GET through the proxy on `port` (on `conn` if given, kept alive)."""
    headers = {}
    if user is not None:
        headers["X-User-Id"] = user
    if cookie is not None:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read().decode()
        return Answer(resp.status, body, {k.lower(): v for k, v in resp.getheaders()})
    finally:
        if own:
            conn.close()


def colors(port: int, users: list[str], threads: int = 8) -> dict[str, str]:
    """The color (response body) each user gets, over a few kept-alive connections."""
    local = threading.local()
    opened: list[http.client.HTTPConnection] = []

    def one(user: str) -> tuple[str, str]:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            opened.append(local.conn)
        answer = request(port, user, conn=local.conn)
        assert answer.status == 200, (user, answer)
        return user, answer.body

    try:
        with ThreadPoolExecutor(threads) as pool:
            return dict(pool.map(one, users))
    finally:
        for conn in opened:
            conn.close()


@dataclass
class Load:
    """Threads sending requests (a new connection each, random users) until stopped."""

    port: int
    users: list[str]
    threads: int = 6
    answers: Counter[str] = field(default_factory=Counter)  # body of each 200
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sent(self) -> int:
        with self._lock:
            return sum(self.answers.values()) + len(self.failures)

    def wait_for_more(self, count: int, timeout: float = 30.0) -> None:
        """Return once `count` more requests were answered (or failed): traffic across a switch."""
        target, deadline = self.sent + count, time.monotonic() + timeout
        while self.sent < target:
            assert time.monotonic() < deadline, f"only {self.sent} of {target} requests in {timeout}s"
            time.sleep(0.01)

    def _run(self) -> None:
        rng = random.Random()
        while not self._stop.is_set():
            try:
                answer = request(self.port, rng.choice(self.users))
                outcome = answer.body if answer.status == 200 else f"status {answer.status}"
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            with self._lock:
                if outcome in ("blue", "green", "third"):
                    self.answers[outcome] += 1
                else:
                    self.failures.append(outcome)

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)


@dataclass
class HaproxyEnv:
    port: int
    folder: Path
    config: Path
    router: haproxy_router.HaproxyRouter
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        output = self.folder / "haproxy.out"
        with open(output, "ab") as out:
            self.proc = subprocess.Popen([require("haproxy"), "-db", "-f", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT)
        wait_listening(self.port, self.proc, output)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(name="haproxy_env")
def haproxy_env_fixture(tmp_path_factory: pytest.TempPathFactory, backends: Backends) -> Iterator[HaproxyEnv]:
    require("haproxy")
    folder = tmp_path_factory.mktemp("haproxy")  # short: a unix socket path has ~100 bytes at most
    port, maps, admin = free_port(), folder / "maps", folder / "admin.sock"
    config = folder / "haproxy.cfg"
    config.write_text(haproxy_router.render_config(
        listen=Endpoint("127.0.0.1", port), socket_path=admin, state_dir=maps,
        blue=[backends.blue], green=[backends.green], cookie=COOKIE))
    haproxy_router.write_map_files(maps, Split(), RETRY_AFTER)
    router = haproxy_router.HaproxyRouter(admin, maps, retry_after=RETRY_AFTER)
    env = HaproxyEnv(port, folder, config, router)
    try:
        env.start()
        yield env
    finally:
        env.stop()


@dataclass
class NginxEnv:
    port: int
    folder: Path
    config: Path
    include: Path
    access_log: Path
    router: nginx_router.NginxRouter
    proc: subprocess.Popen[bytes]

    @property
    def master_pid(self) -> int:
        return int((self.folder / "nginx.pid").read_text())

    def workers(self) -> set[int]:
        return set(nginx_router._workers(self.master_pid))


@pytest.fixture(name="nginx_env")
def nginx_env_fixture(tmp_path_factory: pytest.TempPathFactory, backends: Backends) -> Iterator[NginxEnv]:
    nginx = require("nginx")
    folder = tmp_path_factory.mktemp("nginx")
    port, include, access_log = free_port(), folder / "deployctl.conf", folder / "access.log"
    config = folder / "nginx.conf"
    (folder / "tmp").mkdir()
    config.write_text(nginx_router.render_config(
        listen=Endpoint("127.0.0.1", port), include=include, workdir=folder, access_log=access_log,
        user="root" if os.geteuid() == 0 else None))
    include.write_text(nginx_router.render_include(
        nginx_router.Routing(blue=(backends.blue,), green=(backends.green,)), cookie=COOKIE))
    output = folder / "nginx.out"
    with open(output, "ab") as out:
        proc = subprocess.Popen([nginx, "-e", str(folder / "error.log"), "-p", str(folder), "-c", str(config),
                                 "-g", "daemon off;"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc, output)
        router = nginx_router.NginxRouter(config, include, pid_file=folder / "nginx.pid",
                                          access_log=access_log, cookie=COOKIE, retry_after=RETRY_AFTER,
                                          nginx=nginx)
        yield NginxEnv(port, folder, config, include, access_log, router, proc)
    finally:
        stop(proc)


def shares(colors_by_user: dict[str, str], users: Iterable[str]) -> float:
    """The percentage of `users` on green."""
    users = list(users)
    return 100 * sum(colors_by_user[u] == "green" for u in users) / len(users)
