"""Playbooks drawn at random, as a fuzzer would: whatever the text, `load` gives a playbook or
one PlaybookError (exit 2 at the CLI), never another exception, and never takes long.

Two kinds of input: a valid playbook with values at random places replaced by random YAML
values (wrong types, NaN, huge numbers, control characters, deep lists), keys dropped or added;
and the valid playbook's bytes with random bytes changed, inserted or cut. The CLI's side of
it (one line, exit 2, nothing touched) is tested case by case in test_playbook_validation.py.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployctl.errors import PlaybookError
from deployctl.playbook import load

ROOT = Path(__file__).resolve().parent.parent
SOCIAL = ROOT / "examples" / "social"
VALID: dict[str, Any] = {
    "app": "social",
    "version": "2",
    "workdir": "work",
    "database": {"dsn": "postgresql://app@127.0.0.1:5432/social", "rollback": "restore",
                 "lock_timeout": "2s", "lock_retries": 3},
    "migrations": {"alembic_ini": str(SOCIAL / "alembic.ini"), "target": "0002"},
    "capture": {"mode": "auto", "schemas": ["public"], "interval": "1s"},
    "deploy": {"command": [sys.executable, "app.py", "serve"], "env": {"PORT": "8002"},
               "health": {"url": "http://127.0.0.1:8002/health", "timeout": "20s"},
               "stop_timeout": "5s"},
    "smoke": [{"name": "feed", "http": {"url": "http://127.0.0.1:8002/feed", "status": 200},
               "retries": 2}],
    "replay": {"tables": {"items": {"to": "products", "columns": {"label": {"from": "title"}}}}},
}

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.just(10**400), st.just(-(10**400)),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["../../etc/passwd", "1e400", ".nan", "-5s", "99999h", "${NOPE}",
                     "postgresql://", "a\nb", "\x00", "é" * 40]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _mutated(data: Any, draw: st.DrawFn) -> Any:
    import copy

    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(data)
        if not paths:
            break
        *parents, last = draw(st.sampled_from(paths))
        node = data
        for part in parents:
            node = node[part]
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace":
            node[last] = draw(VALUES)
        elif action == "drop":
            del node[last]
        elif isinstance(node, dict):
            node[draw(st.text(min_size=1, max_size=10))] = draw(VALUES)
    return data


@st.composite
def mutated_playbooks(draw: st.DrawFn) -> bytes:
    return yaml.safe_dump(_mutated(VALID, draw), allow_unicode=True).encode()


@st.composite
def corrupted_bytes(draw: st.DrawFn) -> bytes:
    text = bytearray(yaml.safe_dump(VALID, allow_unicode=True).encode())
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        at = draw(st.integers(min_value=0, max_value=len(text)))
        action = draw(st.sampled_from(["set", "insert", "cut"]))
        piece = draw(st.binary(min_size=1, max_size=6))
        if action == "set" and at < len(text):
            text[at] = piece[0]
        elif action == "insert":
            text[at:at] = piece
        else:
            del text[at:at + len(piece)]
    return bytes(text)


def _refused_or_valid(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "fuzzed.yaml"
    path.write_bytes(body)
    try:
        load(path)
    except PlaybookError as exc:
        # One line per problem, each naming the file (and where in it, when known).
        assert str(exc).splitlines() == exc.lines, exc
        for line in exc.lines:
            assert re.match(rf"{re.escape(str(path))}(:\d+(:\d+)?)?: \S", line), line


SETTINGS = settings(max_examples=300, deadline=2000,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(body=mutated_playbooks())
def test_a_playbook_with_random_values_is_valid_or_refused_with_a_playbook_error(
        tmp_path: Path, body: bytes) -> None:
    _refused_or_valid(tmp_path, body)


@SETTINGS
@given(body=corrupted_bytes())
def test_a_playbook_with_random_bytes_changed_is_valid_or_refused_with_a_playbook_error(
        tmp_path: Path, body: bytes) -> None:
    _refused_or_valid(tmp_path, body)
