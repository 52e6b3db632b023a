"""The kinds of values a playbook's settings take: durations, sizes, URLs, paths, commands; and
the base of every section's model."""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

# What the routers accept as a user id (in map files, nginx's configuration, environment).
USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+:-]{0,127}")

# A hold or a timeout longer than anyone waits is a typo.
MAX_DURATION_S = 7 * 24 * 3600.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any, limit: float | None = MAX_DURATION_S) -> float:
    """`250ms`, `5s`, `2m`, `1h`, `7d` or a number of seconds, as seconds (at most `limit`)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 5s or 2m")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer too large for a float
            seconds = math.inf
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration such as 500ms, 5s or 2m, got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"expected a positive, finite duration, got {value!r}")
    if limit is not None and seconds > limit:
        raise ValueError(f"expected a duration of at most {limit / 86400:g} days, got {value!r}")
    return seconds


# In the JSON Schema (for editors), what may be written: a number of seconds or `5s`-like text.
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(
    {"type": ["number", "string"], "examples": ["500ms", "5s", "2m", "1h"]})]

# PostgreSQL's size units (`max_slot_wal_keep_size`, `pg_size_bytes`): 1kB is 1024 bytes.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|MB|GB|TB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def parse_size(value: Any) -> int:
    """`512MB`, `2GB` or a number of bytes, as bytes."""
    match = None if isinstance(value, bool) else _SIZE.match(str(value))
    if not match:
        raise ValueError(f"expected a size such as 512MB or 2GB, got {value!r}")
    size = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if not 1 << 20 <= size <= 1 << 50:
        raise ValueError(f"expected a size between 1MB and 1024TB, got {value!r}")
    return int(size)


Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(
    {"type": ["integer", "string"], "examples": ["512MB", "2GB"]})]


def https_url(value: str) -> str:
    parts = urlsplit(value)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number
        port_ok = False
    if parts.scheme != "https" or not parts.hostname or not port_ok:
        raise ValueError(f"expected an https:// URL with a host, got {value!r}")
    return value


HttpsUrl = Annotated[str, AfterValidator(https_url)]


class Model(BaseModel):
    # No NaN or infinity in any number. Numbers may be written in quotes (a `${PORT}` is text).
    # Each setting's docstring is its description (`deployctl schema`, docs/playbook.md).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # Pydantic takes `true` as 1 and `false` as 0: in a playbook that is always a mistake.
        if isinstance(value, bool) and info.field_name is not None:
            wanted = cls.model_fields[info.field_name].annotation
            if wanted in (int, float) or wanted in (int | None, float | None):
                raise ValueError(f"expected a number, got {value!r}")
        return value


def path_text(value: Any) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError(f"expected a path, got {value!r}")
    return value


def existing_file(value: Any, info: ValidationInfo) -> Path:
    base = Path((info.context or {}).get("base", "."))
    path = (base / path_text(value)).resolve()
    if not path.is_file():
        raise ValueError(f"file not found: {path} (paths are relative to the playbook's folder)")
    return path


def folder(value: Any, info: ValidationInfo) -> Path:
    return (Path((info.context or {}).get("base", ".")) / path_text(value)).resolve()


def split_command(value: Any) -> Any:
    # A string is split like a shell would, without running a shell.
    return shlex.split(value) if isinstance(value, str) else value
