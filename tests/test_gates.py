"""Gate readings judge green against blue over the same window, through a real HAProxy.

Requests go through HAProxy to the two tiny backends of tests/routers_env.py (a path under
/fail answers 500); each window's figures come from HAProxy's own counters.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from deployctl.fleet.routers import GREEN, Split
from deployctl.fleet.routers.command import CommandRouter
from deployctl.fleet.routers.haproxy import color_of
from deployctl.gates.watch import Watch
from deployctl.playbook import GatesConfig, RateGate
from tests.routers_env import (
    Backends,
    HaproxyEnv,
    request,
)

SPLIT = Split(percent=50)
USERS = [f"u{i}" for i in range(400)]


def send(proxy: HaproxyEnv, color: str, ok: int, failing: int) -> None:
    """`ok` good and `failing` 500 requests from users the split sends to `color`."""
    users = [u for u in USERS if color_of(SPLIT, u) == color]
    for i in range(ok + failing):
        answer = request(proxy.port, users[i % len(users)], path="/fail" if i < failing else "/")
        assert answer.status == (500 if i < failing else 200) and answer.body == color


def test_green_is_judged_against_blue_and_too_little_data_is_inconclusive(
        haproxy_env: HaproxyEnv, backends: Backends) -> None:
    router = haproxy_env.router
    router.apply(SPLIT)
    gates = GatesConfig(interval=1.0, min_requests=20, error_rate=RateGate(max=0.5, max_vs_blue=2.0))
    watch = Watch(gates, router, "", datetime.now(UTC), {})

    send(haproxy_env, GREEN, ok=36, failing=4)   # 10%
    send(haproxy_env, "blue", ok=36, failing=4)  # 10%
    verdict, figures = watch.read()
    assert verdict.status == "pass", verdict.as_dict()
    assert figures["green"] == {"requests": 40, "errors": 4, "response_ms": figures["green"]["response_ms"]}
    assert figures["blue"]["requests"] == 40 and figures["blue"]["errors"] == 4

    # Under the absolute limit (50%), but three times blue's rate in the same window.
    send(haproxy_env, GREEN, ok=28, failing=12)  # 30%
    send(haproxy_env, "blue", ok=36, failing=4)  # 10%
    verdict, _ = watch.read()
    assert verdict.status == "fail"
    assert "30.00% of 40 requests, above 2× blue's 10.00%" in verdict.failures()

    # Over the absolute limit: fails whatever blue does.
    send(haproxy_env, GREEN, ok=10, failing=30)
    verdict, _ = watch.read()
    assert verdict.status == "fail" and "above 50.00%" in verdict.failures()

    # Too few green requests in the window: no verdict, not a pass.
    send(haproxy_env, GREEN, ok=5, failing=0)
    send(haproxy_env, "blue", ok=40, failing=0)
    verdict, _ = watch.read()
    assert verdict.status == "inconclusive"
    assert "5 requests on green, fewer than 20" in verdict.as_dict()["checks"][0]["detail"]


def test_the_error_rate_gate_reads_what_a_measuring_command_router_prints(tmp_path: Path) -> None:
    counters = tmp_path / "counters.json"
    program = tmp_path / "lb.sh"
    program.write_text('#!/bin/sh\n[ "$DEPLOYCTL_ACTION" = readings ] && cat "$COUNTERS"\nexit 0\n')
    program.chmod(0o755)
    router = CommandRouter([str(program)], env={"COUNTERS": str(counters)}, measures=True)
    counters.write_text('{"blue": {"requests": 100, "errors": 1}, "green": {"requests": 100, "errors": 1}}')
    gates = GatesConfig(interval=1.0, min_requests=20, error_rate=RateGate(max=0.05))
    watch = Watch(gates, router, "", datetime.now(UTC), {})
    counters.write_text('{"blue": {"requests": 200, "errors": 2}, "green": {"requests": 140, "errors": 13}}')
    verdict, figures = watch.read()  # green: 12 errors in 40 requests since the last reading
    assert verdict.status == "fail" and "30.00% of 40 requests, above 5.00%" in verdict.failures()
    assert figures["green"]["requests"] == 40
