"""Keeps secrets out of everything deployctl prints.

Values that came from `${ENV}` references and passwords inside DSNs are registered here; every
log line and every CLI output passes through `redact()`.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar, cast

from psycopg.conninfo import conninfo_to_dict, make_conninfo

T = TypeVar("T")

MASK = "***"
# Short values ("0", "on", port numbers) would mask half the output and protect nothing.
_MIN_SECRET_LEN = 6
_secrets: set[str] = set()
_URL_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]+:)([^@\s]+)(@)")


def register_secret(value: str) -> None:
    if len(value) < _MIN_SECRET_LEN:
        return
    password = conninfo_password(value)
    for secret in (value, password) if password else (value,):
        # Also as repr() and JSON would escape it, for messages that quote the value.
        _secrets.update({secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]})


def conninfo_password(dsn: str) -> str | None:
    if not dsn.startswith(("postgresql://", "postgres://")):
        return None
    try:
        return conninfo_to_dict(dsn).get("password")  # type: ignore[return-value]
    except Exception:
        return None


def redact(value: T) -> T:
    """The same value with every registered secret and DSN password masked."""
    return cast(T, _masked(value))


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        for secret in sorted(_secrets, key=len, reverse=True):
            value = value.replace(secret, MASK)
        return _URL_PASSWORD.sub(rf"\g<1>{MASK}\g<3>", value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_masked(v) for v in value)
    return value


def safe_dsn(dsn: str) -> str:
    """A DSN fit for printing: no password."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return redact(dsn)
    params.pop("password", None)
    return make_conninfo(**params)  # type: ignore[arg-type]


# -- personal data: the playbook's `personal` columns (`table.column`), masked wherever rows are
# shown (conflict listings, exports, reports).

def is_personal(table: str, column: str, personal: frozenset[str]) -> bool:
    """Whether `table.column` is marked personal (`table` with or without its schema)."""
    return f"{table}.{column}" in personal or f"{table.rsplit('.', 1)[-1]}.{column}" in personal


def mask_personal(table: str, row: dict[str, Any] | None, personal: frozenset[str]
                  ) -> dict[str, Any] | None:
    """`row` of `table` (values by column) with its personal values masked."""
    if row is None:
        return None
    return {k: (MASK if v is not None and is_personal(table, k, personal) else v) for k, v in row.items()}
