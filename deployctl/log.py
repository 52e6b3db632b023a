"""Logging: readable on a terminal, JSON lines when not (CI), secrets always masked."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from deployctl.redact import redact


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    return redact(dict(event))


def use_color(wanted: bool | None = None) -> bool:
    """Colour only where a person reads it: on a terminal, and never with NO_COLOR set
    (no-color.org) or `--no-color`; `--color` forces it."""
    if wanted is not None:
        return wanted
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR")


def configure(*, json: bool | None = None, debug: bool = False, color: bool | None = None) -> None:
    """Log to stderr; stdout is kept for results (`--json`)."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json
        else structlog.dev.ConsoleRenderer(colors=use_color(color))
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if debug else logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


log = structlog.get_logger("deployctl")
