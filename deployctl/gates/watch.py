"""Gates during a cohort step: what green's users experience, read every interval.

Each reading compares the window since the previous one: the router's error rate and response
time per backend (green judged against blue over the same window), SQL business metrics against
their baseline from before the release, HTTP probes, and PromQL queries (`prometheus`). A check
with too little data is *inconclusive*, never a pass: a step whose readings were all
inconclusive is not evidence that green works.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import psycopg

from deployctl.fleet.routers import Reading, Router
from deployctl.gates import prometheus
from deployctl.gates.smoke import check_http
from deployctl.playbook import GatesConfig, RateGate

Status = Literal["pass", "fail", "inconclusive"]
# Under this many green errors in a window, "green errs more than blue" is noise, not a breach.
MIN_ERRORS_VS_BLUE = 3
GATE_QUERY_TIMEOUT = "10s"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    value: float | None = None


@dataclass
class Verdict:
    checks: list[Check] = field(default_factory=list)

    @property
    def status(self) -> Status:
        found = {c.status for c in self.checks}
        if "fail" in found:
            return "fail"
        return "inconclusive" if "inconclusive" in found or not found else "pass"

    def failures(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.checks if c.status == "fail")

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "checks": [asdict(c) for c in self.checks]}


@dataclass(frozen=True)
class Window:
    """What one backend did between two readings."""

    requests: int
    errors: int
    response_ms: float | None

    @classmethod
    def between(cls, before: Reading | None, after: Reading | None) -> Window | None:
        if before is None or after is None:
            return None
        return cls(max(after.requests - before.requests, 0), max(after.errors - before.errors, 0),
                   after.response_ms)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def baselines(gates: GatesConfig, dsn: str, started_at: datetime) -> dict[str, float | None]:
    """Each SQL gate's baseline, measured before any user reaches green."""
    return {g.name: _number(dsn, g.baseline, started_at) for g in gates.sql}


def _number(dsn: str, query: str, started_at: datetime) -> float | None:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        conn.read_only = True  # a gate looks, it never writes
        conn.execute(f"SET statement_timeout = '{GATE_QUERY_TIMEOUT}'")  # a stuck query is no reading
        row = conn.execute(query, {"started_at": started_at}).fetchone()
    return None if row is None or row[0] is None else float(row[0])


class Watch:
    """Reads the gates of one cohort step; `read()` judges the window since the last call."""

    def __init__(self, gates: GatesConfig, router: Router, dsn: str, started_at: datetime,
                 baselines: dict[str, float | None], versions: tuple[str, str | None] = ("", None)) -> None:
        self.gates, self.router, self.dsn, self.started_at = gates, router, dsn, started_at
        self.baselines = baselines
        self.green, self.blue = versions  # for the Prometheus gates' `$version`
        self.step_started = time.monotonic()
        self.last = router.readings()

    def read(self) -> tuple[Verdict, dict[str, Any]]:
        """The verdict of this window, and the raw figures behind it (for the journal)."""
        now = self.router.readings()
        green = Window.between(self.last.green, now.green)
        blue = Window.between(self.last.blue, now.blue)
        self.last = now
        verdict = Verdict()
        verdict.checks += self._errors(green, blue)
        verdict.checks += self._latency(green, blue)
        verdict.checks += [self._sql(g.name, g.query, g.min_ratio) for g in self.gates.sql]
        for probe in self.gates.http:
            result = check_http(probe.name, probe.http)
            verdict.checks.append(Check(probe.name, "pass" if result.ok else "fail", result.detail,
                                        result.latency_ms))
        window = max(time.monotonic() - self.step_started, self.gates.interval)
        for gate in self.gates.prometheus:
            assert self.gates.prometheus_url is not None  # the playbook requires it
            judged = prometheus.judge(gate, self.gates.prometheus_url, self.green, self.blue, window)
            verdict.checks.append(Check(gate.name, judged.status, judged.detail, judged.value))
        figures = {"green": asdict(green) if green else None, "blue": asdict(blue) if blue else None}
        return verdict, figures

    def _enough(self, window: Window | None) -> bool:
        return window is not None and window.requests >= self.gates.min_requests

    def _errors(self, green: Window | None, blue: Window | None) -> list[Check]:
        gate = self.gates.error_rate
        if gate.max is None and gate.max_vs_blue is None:
            return []
        if not self._enough(green):
            return [_no_data("error rate", green, self.gates.min_requests)]
        assert green is not None
        rate = green.error_rate
        shown = f"{rate:.2%} of {green.requests} requests"
        if gate.max is not None and rate > gate.max:
            return [Check("error rate", "fail", f"{shown}, above {gate.max:.2%}", rate)]
        if gate.max_vs_blue is not None and self._enough(blue) and green.errors >= MIN_ERRORS_VS_BLUE:
            assert blue is not None
            if rate > gate.max_vs_blue * blue.error_rate:
                return [Check("error rate", "fail", f"{shown}, above {gate.max_vs_blue:g}× blue's "
                              f"{blue.error_rate:.2%}", rate)]
        return [Check("error rate", "pass", shown, rate)]

    def _latency(self, green: Window | None, blue: Window | None) -> list[Check]:
        gate: RateGate = self.gates.latency_ms
        if gate.max is None and gate.max_vs_blue is None:
            return []
        if not self._enough(green) or green is None or green.response_ms is None:
            return [_no_data("response time", green, self.gates.min_requests)]
        ms = green.response_ms
        if gate.max is not None and ms > gate.max:
            return [Check("response time", "fail", f"{ms:.0f} ms, above {gate.max:.0f} ms", ms)]
        if (gate.max_vs_blue is not None and self._enough(blue) and blue and blue.response_ms
                and ms > gate.max_vs_blue * blue.response_ms):
                return [Check("response time", "fail", f"{ms:.0f} ms, above {gate.max_vs_blue:g}× "
                              f"blue's {blue.response_ms:.0f} ms", ms)]
        return [Check("response time", "pass", f"{ms:.0f} ms", ms)]

    def _sql(self, name: str, query: str, min_ratio: float) -> Check:
        baseline = self.baselines.get(name)
        try:
            value = _number(self.dsn, query, self.started_at)
        except psycopg.Error as exc:
            return Check(name, "inconclusive", f"query failed: {str(exc).strip().splitlines()[0]}")
        if value is None or not baseline:
            return Check(name, "inconclusive", f"no data (now {value}, before the release {baseline})", value)
        ratio = value / baseline
        shown = f"{value:g} now, {baseline:g} before the release ({ratio:.0%})"
        return Check(name, "fail" if ratio < min_ratio else "pass",
                     shown + (f", below {min_ratio:.0%}" if ratio < min_ratio else ""), value)


def _no_data(name: str, window: Window | None, needed: int) -> Check:
    if window is None:
        return Check(name, "inconclusive", "the router cannot measure it")
    return Check(name, "inconclusive", f"{window.requests} requests on green, fewer than {needed}")
