"""Prometheus gates: a PromQL query read at every gate reading, for green and, where asked, for
blue over the same window, through Prometheus's HTTP API (`/api/v1/query`).

In the query, `$version` stands for the version read (green's, then blue's) and `$window` for
the step's window so far (`45s`: from the step's start, at least one gate interval), so one
query serves both versions: `sum(rate(http_requests_total{version="$version",code=~"5.."}
[$window])) / sum(rate(http_requests_total{version="$version"}[$window]))`. A query must give
one number; no data (an empty result, NaN) is inconclusive, never a pass, and so is a query
Prometheus refuses or a server that does not answer.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Literal

from deployctl.playbook import PrometheusGate

TIMEOUT_S = 10.0


class NoReading(Exception):
    """Prometheus gave no number: what it said instead."""


@dataclass(frozen=True)
class Judged:
    status: Literal["pass", "fail", "inconclusive"]
    detail: str
    value: float | None


def promql(query: str, version: str, window_s: float) -> str:
    """`query` for one version over the window."""
    return query.replace("$version", version).replace("$window", f"{max(1, math.ceil(window_s))}s")


def value(url: str, query: str) -> float | None:
    """The one number `query` gives now (None: no data)."""
    address = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    try:
        with urllib.request.urlopen(address, timeout=TIMEOUT_S) as resp:  # noqa: S310 (http(s) only)
            answer = json.load(resp)
    except urllib.error.HTTPError as exc:  # 400 and 422 carry Prometheus's reason
        try:
            said = json.load(exc).get("error") or exc.reason
        except (ValueError, AttributeError):
            said = exc.reason
        raise NoReading(f"Prometheus refused the query: {said}") from None
    except (OSError, ValueError) as exc:
        raise NoReading(f"Prometheus did not answer: {exc}") from None
    data = answer.get("data", {})
    result = data.get("result")
    if data.get("resultType") == "scalar":
        found = result[1]
    elif data.get("resultType") == "vector":
        if not result:
            return None
        if len(result) > 1:
            raise NoReading(f"the query gives {len(result)} series: aggregate them into one "
                            "(sum, avg, max)")
        found = result[0]["value"][1]
    else:
        raise NoReading(f"the query gives a {data.get('resultType')}, not one number")
    number = float(found)
    return None if math.isnan(number) else number


def judge(gate: PrometheusGate, url: str, green: str, blue: str | None, window_s: float) -> Judged:
    """Green's value against the gate's `max` and `min`, multiples of blue's with `vs_blue`."""
    try:
        mine = value(url, promql(gate.query, green, window_s))
        theirs = value(url, promql(gate.query, blue, window_s)) if gate.vs_blue and blue else None
    except NoReading as exc:
        return Judged("inconclusive", str(exc), None)
    if mine is None:
        return Judged("inconclusive", f"no data for version {green}", None)
    shown = f"{mine:g}"
    scale = 1.0
    if gate.vs_blue:
        if blue is None or theirs is None:
            return Judged("inconclusive", f"{shown}; no data for blue{f' (version {blue})' if blue else ''}",
                          mine)
        if theirs == 0:
            return Judged("inconclusive", f"{shown}; blue's is 0: nothing to compare with", mine)
        scale, shown = theirs, f"{mine:g} against blue's {theirs:g}"
    unit = "× blue's" if gate.vs_blue else ""
    if gate.max is not None and mine > gate.max * scale:
        return Judged("fail", f"{shown}, above {gate.max:g}{unit}", mine)
    if gate.min is not None and mine < gate.min * scale:
        return Judged("fail", f"{shown}, below {gate.min:g}{unit}", mine)
    return Judged("pass", shown, mine)
