"""Prometheus gates against a real Prometheus server (Debian's `prometheus`, started here): the
query's number for green, against limits or against blue's over the same window; no data, a
refused query or a server away is inconclusive, never a pass; and a release whose green error
rate breaches in Prometheus rolls back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deployctl.gates import prometheus
from deployctl.playbook import PrometheusGate
from tests.conftest import Env, free_port, wait_for
from tests.prometheus_env import prometheus as prometheus_server
from tests.routers_env import HaproxyEnv
from tests.traffic_env import Users, released_v1, routed, versions_now

pytestmark = pytest.mark.integration

EXPOSED = b'demo_value{version="1"} 10\ndemo_value{version="2"} 30\n'


class _Exporter(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(EXPOSED)))
        self.end_headers()
        self.wfile.write(EXPOSED)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus that scrapes fixed values: demo_value is 10 for version 1, 30 for version 2."""
    exporter = ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    threading.Thread(target=exporter.serve_forever, daemon=True).start()
    with prometheus_server(tmp_path_factory.mktemp("prometheus"),
                           [f"127.0.0.1:{exporter.server_address[1]}"]) as url:
        wait_for("the first scrape", lambda: prometheus.value(url, 'demo_value{version="2"}') == 30,
                 timeout=60, every=0.2)
        yield url
    exporter.shutdown()


def _gate(query: str = 'demo_value{version="$version"}', **limits: Any) -> PrometheusGate:
    return PrometheusGate(name="demo", query=query, **limits)


@pytest.mark.parametrize(("gate", "status", "said"), [
    (_gate(max=40), "pass", "30"),
    (_gate(max=20), "fail", "30, above 20"),
    (_gate(min=35), "fail", "30, below 35"),
    (_gate(max=4, vs_blue=True), "pass", "30 against blue's 10"),
    (_gate(max=2, vs_blue=True), "fail", "30 against blue's 10, above 2× blue's"),
    (_gate(min=4, vs_blue=True), "fail", "below 4× blue's"),
    (_gate("sum(count_over_time(demo_value{version=\"$version\"}[$window]))", min=1), "pass", ""),
    (_gate('missing_metric{version="$version"}', max=1), "inconclusive", "no data for version 2"),
    (_gate("demo_value", max=100), "inconclusive", "gives 2 series: aggregate them"),
    (_gate('demo_value{version="$version"', max=1), "inconclusive", "Prometheus refused the query"),
], ids=["under-max", "over-max", "under-min", "within-blue", "over-blue", "under-blue", "window",
        "no-data", "two-series", "bad-query"])
def test_a_prometheus_gate_judges_green(scraped: str, gate: PrometheusGate, status: str, said: str) -> None:
    judged = prometheus.judge(gate, scraped, "2", "1", window_s=10)
    assert (judged.status, said in judged.detail) == (status, True), judged


def test_no_data_for_blue_or_no_server_is_inconclusive(scraped: str) -> None:
    assert prometheus.judge(_gate(max=2, vs_blue=True), scraped, "2", "9", 10).detail == (
        "30; no data for blue (version 9)")
    assert prometheus.judge(_gate(max=2, vs_blue=True), scraped, "2", None, 10).status == "inconclusive"
    away = prometheus.judge(_gate(max=40), f"http://127.0.0.1:{free_port()}", "2", "1", 10)
    assert away.status == "inconclusive" and "Prometheus did not answer" in away.detail


ERROR_RATIO = ('sum(rate(social_http_requests_total{version="$version",code=~"5.."}[$window])) '
               '/ sum(rate(social_http_requests_total{version="$version"}[$window]))')


def test_a_release_whose_green_error_rate_breaches_in_prometheus_rolls_back(
        env: Env, haproxy: HaproxyEnv, tmp_path: Path) -> None:
    released_v1(env, haproxy)
    with prometheus_server(tmp_path / "prometheus",
                           [f"127.0.0.1:{env.blue_port}", f"127.0.0.1:{env.green_port}"]) as url:
        # The router's error-rate gate is off: only Prometheus sees green fail its users.
        gates = {"interval": "1s", "failures": 2, "error_rate": {"max": None, "max_vs_blue": None},
                 "on_inconclusive": "continue", "prometheus_url": url,
                 "prometheus": [{"name": "green 5xx ratio", "query": ERROR_RATIO, "max": 0.05}]}
        playbook = routed(env, haproxy, "2", gates=gates,
                          deploy={"env": {"DATABASE_URL": env.app_dsn, "SOCIAL_FAIL": "users"}},
                          cohorts=[{"name": "beta", "percent": 50, "hold": "60s"}])
        with Users(haproxy.port):
            done = env.cli("release", str(playbook), timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    release = env.release_row()
    assert release is not None and release["status"] == "rolled_back"
    assert "gate breach in cohort beta: green 5xx ratio:" in release["reason"], release["reason"]
    assert "above 0.05" in release["reason"]
    assert set(versions_now(haproxy.port).values()) == {"1"}
    assert '"gate reading"' in done.stderr or "gate reading" in done.stderr  # logged as taken
