"""Waiting for a freshly started version to answer its health endpoint."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

from deployctl.errors import StepFailed
from deployctl.playbook import Playbook


def http_status(url: str, timeout: float) -> int | None:
    """The HTTP status of a GET, or None if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http(s) only)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def wait_healthy(url: str, *, timeout: float, interval: float,
                 died: Callable[[], str | None]) -> float:
    """Poll `url` until it answers 200; return the seconds it took.

    `died` returns why the process is gone (its last log lines), so that a crashed process
    fails the step at once instead of after the whole timeout.
    """
    started = time.monotonic()
    last: int | None = None
    while time.monotonic() - started < timeout:
        last = http_status(url, timeout=min(interval * 4, 5.0))
        if last == 200:
            return time.monotonic() - started
        reason = died()
        if reason is not None:
            raise StepFailed(f"the new version exited before it became healthy: {reason}")
        time.sleep(interval)
    seen = f"last status {last}" if last else "no answer"
    raise StepFailed(f"{url} not healthy after {timeout:g}s ({seen})")


def healthy(pb: Playbook, url: str, died: Callable[[], str | None]) -> float:
    """Seconds, rounded, until the version at `url` answered the playbook's health check."""
    health = pb.deploy.health
    return round(wait_healthy(url, timeout=health.timeout, interval=health.interval, died=died), 3)
