"""A progress line for long steps (snapshot, restore, replay): how much is done, the rate, the
time left.

On a terminal the line is redrawn in place on stderr; elsewhere (CI) a JSON log line goes out
every few seconds. `watching()` samples a measure (bytes written, rows replayed) on a thread of
its own while the step works.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from deployctl.log import log

TERMINAL_EVERY_S = 0.5
LOG_EVERY_S = 5.0


def amount(n: float, unit: str = "bytes") -> str:
    if unit != "bytes":
        return f"{n:,.0f} {unit}"
    for suffix in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or suffix == "GiB":
            return f"{n:.0f} {suffix}" if suffix == "B" else f"{n:.1f} {suffix}"
        n /= 1024
    raise AssertionError("unreachable")


def line(what: str, done: float, total: float | None, seconds: float, unit: str) -> str:
    """`snapshot: 120.0 MiB of 400.0 MiB (30%), 40.0 MiB/s, about 7 s left`."""
    rate = done / seconds if seconds > 0 else 0.0
    text = f"{what}: {amount(done, unit)}"
    if total:
        text += f" of {amount(total, unit)} ({min(done / total, 1):.0%})"
    text += f", {amount(rate, unit)}/s"
    if total and rate > 0 and done < total:
        text += f", about {(total - done) / rate:.0f} s left"
    return text


@contextmanager
def watching(what: str, measure: Callable[[], float], total: float | None,
             unit: str = "bytes") -> Iterator[None]:
    """Report `measure()` against `total` while the body runs."""
    terminal = sys.stderr.isatty()
    every = TERMINAL_EVERY_S if terminal else LOG_EVERY_S
    stop = threading.Event()
    started = time.monotonic()

    def report() -> None:
        while not stop.wait(every):
            try:
                done = measure()
            except Exception:  # noqa: BLE001, S112 (a progress line is never worth failing a step for)
                continue
            seconds = time.monotonic() - started
            if terminal:
                sys.stderr.write("\r\033[K" + line(what, done, total, seconds, unit))
                sys.stderr.flush()
            else:
                log.info("progress", step=what, done=round(done), total=round(total) if total else None,
                         unit=unit, rate_per_s=round(done / seconds) if seconds else None)

    thread = threading.Thread(target=report, name=f"progress-{what}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if terminal:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
