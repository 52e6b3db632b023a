"""Webhooks hear of a release's start, cohort steps, breach, rollback and end; they never fail it.

A real HTTP server on loopback plays the webhook (Slack-compatible JSON bodies); it answers 500
to the first attempt of every notification, so each delivery shows the retry.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deployctl.notify import Notifier
from deployctl.playbook import load
from tests.conftest import Env, free_port
from tests.routers_env import HaproxyEnv
from tests.traffic_env import GATES, Users, released_v1, routed

pytestmark = pytest.mark.integration

TOKEN = "T0KEN-5ecret-hook-path"


class Hook(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/services/{TOKEN}"

    def events(self) -> list[str]:
        with self.lock:
            return [b["event"] for b in self.bodies]


class _Handler(BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.attempts += 1
            first_try = self.server.attempts % 2 == 1
            if not first_try:
                self.server.bodies.append(body)
        self.send_response(500 if first_try else 200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(name="hook")
def hook_fixture() -> Iterator[Hook]:
    server = Hook()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_a_breach_is_told_in_order_with_a_retry_each_and_secrets_masked(
        env: Env, haproxy: HaproxyEnv, hook: Hook) -> None:
    released_v1(env, haproxy)
    playbook = routed(env, haproxy, "2", gates=GATES, notify={"webhooks": [{"url": hook.url}]},
                      deploy={"env": {"DATABASE_URL": env.app_dsn, "SOCIAL_FAIL": "users"}},
                      cohorts=[{"name": "beta", "percent": 10, "hold": "30s"}])
    with Users(haproxy.port):
        done = env.cli("release", str(playbook), timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert hook.events() == ["start", "cohort", "breach", "rollback", "end"]
    assert hook.attempts == 2 * len(hook.bodies), "every notification took a second attempt"
    by_event = {b["event"]: b for b in hook.bodies}
    assert all(b["text"].startswith("deployctl: social 2 (release #") for b in hook.bodies)
    assert by_event["cohort"]["percent"] == 10
    assert "gate breach in cohort beta" in by_event["breach"]["text"]
    assert by_event["end"]["status"] == "rolled_back" and by_event["end"]["exit_code"] == 1
    # The last notification says where the release's report is (written as it ended, 0600).
    report = Path(by_event["end"]["report"])
    assert report.parent == env.workdir / "reports" and f"report: {report}" in by_event["end"]["text"]
    assert stat.S_IMODE(report.stat().st_mode) == 0o600 and "<html" in report.read_text()
    assert f"report: {report}" in done.stdout
    assert TOKEN not in done.stdout + done.stderr, "a webhook's URL holds its token: never printed"


def test_a_pause_is_told_with_when_it_rolls_back_on_its_own(
        env: Env, haproxy: HaproxyEnv, hook: Hook) -> None:
    released_v1(env, haproxy)
    playbook = routed(env, haproxy, "2", gates={**GATES, "on_inconclusive": "pause", "max_pause": "10m"},
                      notify={"webhooks": [{"url": hook.url, "events": ["paused", "end"]}]},
                      cohorts=[{"name": "beta", "percent": 10, "hold": "1s"}])
    # Nobody uses the app, so no reading is conclusive: the step pauses (not in CI).
    running = subprocess.Popen([sys.executable, "-m", "deployctl", "release", str(playbook)], cwd=env.dir,
                               env={**os.environ, "CI": "", "DEPLOYCTL_YES": ""},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while "paused" not in hook.events():
            assert time.monotonic() < deadline and running.poll() is None, "no paused notification"
            time.sleep(0.2)
        asked = env.cli("rollback", "--state-dsn", env.state_dsn)
        assert asked.returncode == 0, asked.stderr
        out, _ = running.communicate(timeout=300)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == 1, out
    assert hook.events() == ["paused", "end"]
    paused = hook.bodies[0]
    left = datetime.fromisoformat(paused["rolls_back_at"]) - datetime.now(UTC)
    assert timedelta(minutes=8) < left <= timedelta(minutes=10), paused
    assert "no gate reading was conclusive" in paused["reason"]
    assert "rolls back on its own at" in paused["text"] and "deployctl resume" in paused["text"]


def test_a_webhook_that_never_answers_does_not_fail_the_release(env: Env, haproxy: HaproxyEnv) -> None:
    dead = f"http://127.0.0.1:{free_port()}/services/{TOKEN}"
    released_v1(env, haproxy)
    playbook = routed(env, haproxy, "2",
                      notify={"webhooks": [{"url": dead, "retries": 1, "timeout": "1s"}]})
    done = env.cli("release", str(playbook), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "notification not delivered" in done.stdout + done.stderr
    assert TOKEN not in done.stdout + done.stderr, "a webhook's URL holds its token: never printed"


def test_a_notification_that_fails_does_not_silence_the_ones_after_it(env: Env, hook: Hook) -> None:
    # No retries: the hook answers 500 to every other attempt, so every other notification fails.
    pb = load(env.playbook("2", notify={"webhooks": [{"url": hook.url, "retries": 0}]}))
    notifier = Notifier(pb, release_id=7)
    sent = ["start", "cohort", "breach", "rollback", "end"]
    for event in sent:
        notifier.send(event, f"{event} happened")
    notifier.close()
    assert hook.attempts == len(sent)
    assert hook.events() == ["cohort", "rollback"]
