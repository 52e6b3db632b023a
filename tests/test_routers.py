"""The routers against a real HAProxy and a real nginx: cohorts, maintenance, pointing, load.

Every test sends real HTTP requests through the proxy to backends that answer with their color
(tests/routers_env.py). HAProxy switches through its runtime API only; nginx reloads.
"""

from __future__ import annotations

import importlib
import os
import stat
from pathlib import Path
from typing import get_args

import pytest

from deployctl.errors import BadInput, StepFailed
from deployctl.fleet import routers
from deployctl.fleet.routers import BLUE, GREEN, Endpoint, Reading, Readings, Router, Split
from deployctl.fleet.routers.command import CommandRouter
from deployctl.fleet.routers.haproxy import HaproxyRouter, color_of
from deployctl.fleet.routers.nginx import NginxRouter
from deployctl.playbook import RouterConfig
from tests.conftest import wait_for
from tests.routers_env import (
    RETRY_AFTER,
    Backends,
    HaproxyEnv,
    Load,
    NginxEnv,
    colors,
    request,
    shares,
)

USERS = [f"user-{i}" for i in range(1000)]
STAFF = ("user-1", "user-2", "user-3")
OTHERS = [u for u in USERS if u not in STAFF]
STEPS = [
    ("0%", Split()),
    ("allow-list", Split(STAFF)),
    ("10%", Split(STAFF, 10)),
    ("50%", Split(STAFF, 50)),
    ("100%", Split(STAFF, 100)),
    ("back to 0%", Split()),
]
TOLERANCE = 5  # points of percentage, for 997 users


def walk_steps(port: int, router: Router) -> dict[str, dict[str, str]]:
    """Each step's color per user; each user asked twice, and answered the same, within a step."""
    seen = {}
    for name, split in STEPS:
        router.apply(split)
        first, again = colors(port, USERS), colors(port, USERS)
        assert first == again, f"{name}: users changed color within the step"
        anonymous = request(port)
        assert anonymous.body == (GREEN if split.percent == 100 else BLUE), name
        cookie_only = request(port, cookie=STAFF[0])
        assert cookie_only.body == (GREEN if split.allow or split.percent == 100 else BLUE), name
        if name == "allow-list":  # ids are case-sensitive: USER-1 is not user-1
            assert request(port, STAFF[0].upper()).body == BLUE
        seen[name] = first
    return seen


def check_cohorts(seen: dict[str, dict[str, str]]) -> dict[str, float]:
    """The properties every router keeps; returns the measured share on green per step."""
    green = {name: {u for u, color in by_user.items() if color == GREEN} for name, by_user in seen.items()}
    assert green["0%"] == set()
    assert green["allow-list"] == set(STAFF)
    measured = {}
    for name, percent in (("10%", 10), ("50%", 50)):
        assert set(STAFF) <= green[name]
        measured[name] = shares(seen[name], OTHERS)
        assert abs(measured[name] - percent) <= TOLERANCE, (name, measured[name])
    assert green["10%"] <= green["50%"], "a user on green at 10% went back to blue at 50%"
    assert green["100%"] == set(USERS)
    assert green["back to 0%"] == set()
    return measured


# --- HAProxy -------------------------------------------------------------------------------------

@pytest.mark.integration
def test_haproxy_cohorts_are_sticky_nested_and_match_the_percentage(haproxy_env: HaproxyEnv) -> None:
    seen = walk_steps(haproxy_env.port, haproxy_env.router)
    print(f"haproxy: share of green among {len(OTHERS)} users: {check_cohorts(seen)}")
    # HAProxy's crc32 is zlib's: the router can say exactly who is where.
    for name, split in STEPS:
        assert seen[name] == {u: color_of(split, u) for u in USERS}, name


@pytest.mark.integration
def test_haproxy_maintenance_answers_503_with_retry_after_then_recovers(haproxy_env: HaproxyEnv) -> None:
    check_maintenance(haproxy_env.port, haproxy_env.router)


@pytest.mark.integration
def test_haproxy_point_moves_green_to_a_third_server_without_reload(
        haproxy_env: HaproxyEnv, backends: Backends) -> None:
    router, port = haproxy_env.router, haproxy_env.port
    router.apply(Split(percent=100))
    assert set(colors(port, USERS[:50]).values()) == {GREEN}
    router.point(GREEN, [backends.third])
    assert set(colors(port, USERS[:50]).values()) == {"third"}
    # Same process: HAProxy was not restarted or reloaded (a reload is a new process).
    assert haproxy_env.proc is not None and haproxy_env.proc.poll() is None
    assert f"Pid: {haproxy_env.proc.pid}" in router.api.run("show info")
    router.point(GREEN, [backends.green, backends.third])
    assert set(colors(port, USERS[:50]).values()) == {GREEN, "third"}
    router.point(GREEN, [backends.green])
    assert set(colors(port, USERS[:50]).values()) == {GREEN}
    assert [s.serving for s in router.slots("green")].count(True) == 1


@pytest.mark.integration
def test_haproxy_restart_keeps_the_split_and_the_servers(haproxy_env: HaproxyEnv, backends: Backends) -> None:
    router, port = haproxy_env.router, haproxy_env.port
    router.apply(Split(STAFF, 50))
    router.point(GREEN, [backends.third])
    before = colors(port, USERS)
    haproxy_env.restart()  # reads the map files and the server-state file deployctl wrote
    assert colors(port, USERS) == before
    assert set(before.values()) == {BLUE, "third"}


@pytest.mark.integration
def test_haproxy_switches_under_load_fail_no_request(haproxy_env: HaproxyEnv, backends: Backends) -> None:
    router = haproxy_env.router
    with Load(haproxy_env.port, USERS) as load:
        switch_under_load(router, backends, load)
    assert load.failures == [], f"{len(load.failures)} of {load.sent}: {load.failures[:5]}"
    assert load.sent >= 2000
    assert {BLUE, GREEN, "third"} <= set(load.answers)
    print(f"haproxy under load: {load.sent} requests, {len(load.failures)} failed, {dict(load.answers)}")


@pytest.mark.integration
def test_haproxy_readings_count_requests_and_errors_per_color(haproxy_env: HaproxyEnv) -> None:
    check_readings(haproxy_env.port, haproxy_env.router)


@pytest.mark.integration
def test_haproxy_bad_socket_path_error_names_it(tmp_path: Path) -> None:
    socket_path = tmp_path / "not-there" / "admin.sock"
    router = HaproxyRouter(socket_path, tmp_path / "maps")
    with pytest.raises(StepFailed, match=str(socket_path)) as failed:
        router.readings()
    assert "stats socket" in str(failed.value)
    with pytest.raises(StepFailed, match=str(socket_path)):
        router.apply(Split(percent=10))
    # The files are written all the same: a HAProxy started later begins at 10%.
    assert "percent 10" in (tmp_path / "maps" / "control.map").read_text()


@pytest.mark.integration
def test_haproxy_refuses_an_unroutable_user_id_before_changing_anything(haproxy_env: HaproxyEnv) -> None:
    router = haproxy_env.router
    router.apply(Split(STAFF))
    allow_map = router.state_dir / "allow.map"
    before = allow_map.read_text()
    with pytest.raises(BadInput, match=r"allow\[1\]"):
        router.apply(Split(("user-1", "two words")))
    assert allow_map.read_text() == before
    assert request(haproxy_env.port, "user-2").body == GREEN


# --- nginx ---------------------------------------------------------------------------------------

@pytest.mark.integration
def test_nginx_cohorts_are_sticky_nested_and_match_the_percentage(nginx_env: NginxEnv) -> None:
    measured = check_cohorts(walk_steps(nginx_env.port, nginx_env.router))
    print(f"nginx: share of green among {len(OTHERS)} users: {measured}")


@pytest.mark.integration
def test_nginx_maintenance_answers_503_with_retry_after_then_recovers(nginx_env: NginxEnv) -> None:
    check_maintenance(nginx_env.port, nginx_env.router)


@pytest.mark.integration
def test_nginx_point_moves_green_to_a_third_server_by_graceful_reload(
        nginx_env: NginxEnv, backends: Backends) -> None:
    router, port = nginx_env.router, nginx_env.port
    router.apply(Split(percent=100))
    master, workers = nginx_env.master_pid, nginx_env.workers()
    router.point(GREEN, [backends.third])
    assert set(colors(port, USERS[:50]).values()) == {"third"}
    assert nginx_env.master_pid == master and not workers & nginx_env.workers()  # reloaded, not restarted
    assert f"server {backends.third.host}:{backends.third.port};" in nginx_env.include.read_text()
    router.point(GREEN, [backends.green])
    assert set(colors(port, USERS[:50]).values()) == {GREEN}


@pytest.mark.integration
def test_nginx_failing_config_test_puts_the_previous_include_back(nginx_env: NginxEnv) -> None:
    router, port = nginx_env.router, nginx_env.port
    router.apply(Split(STAFF))
    before = nginx_env.include.read_text()
    good = nginx_env.config.read_text()
    nginx_env.config.write_text(good.replace("events {", "no_such_directive on;\nevents {"))
    with pytest.raises(StepFailed, match="no_such_directive") as failed:
        router.apply(Split(STAFF, 100))
    assert "previous one is back" in str(failed.value)
    assert nginx_env.include.read_text() == before
    assert request(port, "user-500").body == BLUE
    nginx_env.config.write_text(good)
    router.apply(Split(STAFF, 100))
    assert request(port, "user-500").body == GREEN


@pytest.mark.integration
def test_nginx_reloads_under_load_fail_no_request(nginx_env: NginxEnv, backends: Backends) -> None:
    router = nginx_env.router
    with Load(nginx_env.port, USERS) as load:
        switch_under_load(router, backends, load)
    assert load.failures == [], f"{len(load.failures)} of {load.sent}: {load.failures[:5]}"
    assert load.sent >= 2000
    assert {BLUE, GREEN, "third"} <= set(load.answers)
    print(f"nginx under load: {load.sent} requests, {len(load.failures)} failed, {dict(load.answers)}")


@pytest.mark.integration
def test_nginx_readings_count_requests_and_errors_per_color(nginx_env: NginxEnv) -> None:
    check_readings(nginx_env.port, nginx_env.router)


@pytest.mark.integration
def test_nginx_router_picks_up_the_routing_a_previous_deployctl_left(
        nginx_env: NginxEnv, backends: Backends) -> None:
    nginx_env.router.apply(Split(STAFF, 10))
    nginx_env.router.point(GREEN, [backends.third])
    later = NginxRouter(nginx_env.config, nginx_env.include, pid_file=nginx_env.folder / "nginx.pid")
    assert later.routing == nginx_env.router.routing
    later.apply(Split(STAFF, 100))  # keeps green on the third server it did not point itself
    assert request(nginx_env.port, "user-500").body == "third"


# --- shared checks -------------------------------------------------------------------------------

def check_maintenance(port: int, router: Router) -> None:
    router.apply(Split(STAFF, 50, maintenance=True))
    for user in (*STAFF, *USERS[:20], None):
        answer = request(port, user)
        assert answer.status == 503, (user, answer)
        assert answer.headers.get("retry-after") == str(RETRY_AFTER), (user, answer)
    router.apply(Split(STAFF, 50))
    for user in (*STAFF, *USERS[:20]):
        answer = request(port, user)
        assert answer.status == 200 and "retry-after" not in answer.headers, (user, answer)
    assert request(port, STAFF[0]).body == GREEN


def switch_under_load(router: Router, backends: Backends, load: Load) -> None:
    """0 -> 10 -> 50 -> 100 -> green moved to the third server and back -> 0, under load.

    Each switch waits for 400 requests after the one before, however fast the machine is.
    """
    load.wait_for_more(400)
    for split in (Split(percent=10), Split(percent=50), Split(percent=100)):
        router.apply(split)
        load.wait_for_more(400)
    for servers in ([backends.third], [backends.green, backends.third], [backends.green]):
        router.point(GREEN, servers)
        load.wait_for_more(400)
    router.apply(Split())
    load.wait_for_more(400)


def check_readings(port: int, router: Router) -> None:
    router.apply(Split(("user-1",)))
    before = router.readings()
    sent = {BLUE: (20, 5), GREEN: (10, 3)}  # requests, of which to /fail
    for color, (count, failing) in sent.items():
        user = "user-1" if color == GREEN else "user-500"
        for i in range(count):
            answer = request(port, user, path="/fail" if i < failing else "/")
            assert answer.status == (500 if i < failing else 200) and answer.body == color

    def counted() -> dict[str, tuple[int, int]]:
        after = router.readings()
        seen = {}
        for color in sent:
            was, now = getattr(before, color), getattr(after, color)
            assert was is not None and now is not None
            assert now.response_ms is not None and now.response_ms >= 0
            seen[color] = (now.requests - was.requests, now.errors - was.errors)
        return seen

    # A proxy logs a request once it has answered it, so the last line may come a moment later.
    wait_for("every request to be counted",
             lambda: all(c[0] >= sent[k][0] for k, c in counted().items()), timeout=10)
    assert counted() == sent


# --- command -------------------------------------------------------------------------------------

def script(folder: Path, body: str) -> Path:
    path = folder / "route.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_command_router_passes_the_split_and_the_servers_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "env.txt"
    router = CommandRouter([str(script(tmp_path, 'env | grep ^DEPLOYCTL_ | sort > "$OUT"\n'))],
                           env={"OUT": str(out)})

    def variables() -> dict[str, str]:
        return dict(line.split("=", 1) for line in out.read_text().splitlines())

    router.apply(Split(("alice", "bob"), 25))
    assert variables() == {"DEPLOYCTL_ACTION": "apply", "DEPLOYCTL_ALLOW": "alice,bob",
                           "DEPLOYCTL_PERCENT": "25", "DEPLOYCTL_MAINTENANCE": "0"}
    router.apply(Split(maintenance=True))
    assert variables()["DEPLOYCTL_MAINTENANCE"] == "1" and variables()["DEPLOYCTL_ALLOW"] == ""
    router.point(GREEN, [Endpoint("10.0.0.7", 8002), Endpoint("10.0.0.8", 8002)])
    assert variables() == {"DEPLOYCTL_ACTION": "point", "DEPLOYCTL_COLOR": "green",
                           "DEPLOYCTL_GREEN": "10.0.0.7:8002,10.0.0.8:8002"}
    router.point(BLUE, [Endpoint("10.0.0.9", 8001)])
    assert variables()["DEPLOYCTL_BLUE"] == "10.0.0.9:8001"
    assert router.readings() == Readings(blue=None, green=None)


def test_command_router_readings_are_what_the_command_prints(tmp_path: Path) -> None:
    said = tmp_path / "said.json"
    body = ('[ "$DEPLOYCTL_ACTION" = readings ] || exit 0\n'
            'echo "looking at the load balancer" >&2\necho "some chatter"\ncat "$SAID"\n')
    router = CommandRouter([str(script(tmp_path, body))], env={"SAID": str(said)}, measures=True)
    said.write_text('{"blue": {"requests": 1200, "errors": 3, "response_ms": 41.5}, '
                    '"green": {"requests": 80, "errors": 9}}\n')
    assert router.readings() == Readings(blue=Reading(1200, 3, 41.5), green=Reading(80, 9, None))
    said.write_text('{"green": {"requests": 80}}\n')  # no errors counter: no reading, no failure
    assert router.readings() == Readings()
    said.write_text("not json\n")
    assert router.readings() == Readings()
    quiet = CommandRouter([str(script(tmp_path, "exit 7\n"))], measures=True)
    assert quiet.readings() == Readings(), "a failing readings command is inconclusive, not a failed step"


def test_command_router_failure_reports_the_end_of_its_output(tmp_path: Path) -> None:
    lines = "".join(f"echo line {i}\n" for i in range(1, 9))
    failing = script(tmp_path, lines + "echo 'lb says: no such target group' >&2\nexit 3\n")
    router = CommandRouter([str(failing)])
    with pytest.raises(StepFailed, match="exited with status 3") as failed:
        router.apply(Split(percent=10))
    message = str(failed.value)
    assert "lb says: no such target group" in message and "line 8" in message
    assert "line 4" not in message  # the end of the output, not all of it
    with pytest.raises(StepFailed, match="not found"):
        CommandRouter([os.fspath(tmp_path / "missing-command")]).apply(Split())


def test_every_router_type_a_playbook_may_name_has_a_driver() -> None:
    named = set(get_args(RouterConfig.model_fields["type"].annotation))
    assert named == set(routers.ROUTERS)
    for path in routers.ROUTERS.values():
        module, _, name = path.partition(":")
        assert callable(getattr(importlib.import_module(module), name).from_config)
