"""Smoke checks against green before any user reaches it: HTTP and SQL.

A check returns a `Result`; it never raises for a failed check, only the step decides.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import psycopg

from deployctl.playbook import HttpCheck, SmokeCheck, SqlCheck


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str
    latency_ms: float | None = None


def check_http(name: str, check: HttpCheck) -> Result:
    # http(s) only: the playbook's pattern for the URL.
    request = urllib.request.Request(check.url, method=check.method, headers=check.headers)  # noqa: S310
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=check.timeout) as resp:  # noqa: S310
            status, body = int(resp.status), resp.read(1 << 20)
    except urllib.error.HTTPError as exc:
        status, body = int(exc.code), exc.read(1 << 20)
    except (OSError, ValueError) as exc:
        return Result(name, False, f"{check.url}: no answer ({exc})")
    latency_ms = (time.monotonic() - started) * 1000
    if status != check.status:
        return Result(name, False, f"{check.url}: status {status}, expected {check.status}",
                      latency_ms)
    if check.body_contains is not None and check.body_contains.encode() not in body:
        return Result(name, False, f"{check.url}: body lacks {check.body_contains!r}", latency_ms)
    if check.max_latency is not None and latency_ms > check.max_latency * 1000:
        return Result(name, False, f"{check.url}: took {latency_ms:.0f} ms, more than "
                      f"{check.max_latency * 1000:.0f} ms", latency_ms)
    return Result(name, True, f"{check.url}: status {status} in {latency_ms:.0f} ms", latency_ms)


def _sql(name: str, check: SqlCheck, dsn: str) -> Result:
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            conn.read_only = True  # a smoke check looks, it never writes
            row = conn.execute(check.query).fetchone()
    except psycopg.Error as exc:
        return Result(name, False, f"query failed: {str(exc).strip().splitlines()[0]}")
    if row is None or len(row) != 1 or row[0] is not True:
        return Result(name, False, f"query returned {row[0] if row else 'no row'!r}, expected true")
    return Result(name, True, "query returned true")


def run(check: SmokeCheck, dsn: str) -> Result:
    """Run one check, retrying `check.retries` times `check.interval` apart."""
    for attempt in range(check.retries + 1):
        if check.http is not None:
            result = check_http(check.name, check.http)
        else:
            assert check.sql is not None
            result = _sql(check.name, check.sql, dsn)
        if result.ok or attempt == check.retries:
            return result
        time.sleep(check.interval)
    raise AssertionError("unreachable")
