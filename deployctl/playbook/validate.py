"""Reading a playbook: its file, `${VAR}` values from the environment, validation into the
models, and every problem reported at once, one line each in the order of the file, with the
line and column, the field path and what was expected
(`app.yaml:31:15: smoke[1].http.status: Input should be less than 600, got 700`); for an
unknown setting, the known one closest to it. Values from the environment are registered as
secrets, so the log and the CLI never print them."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from deployctl.errors import PlaybookError
from deployctl.playbook import source
from deployctl.playbook.models import Playbook
from deployctl.redact import register_secret

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, loc: tuple[Any, ...], unset: list[tuple[tuple[Any, ...], str]]) -> Any:
    """`node` with every `${VAR}` and `${VAR:-default}` replaced; each variable that is not set
    goes into `unset` with where it is."""
    if isinstance(node, dict):
        return {k: _interpolate(v, (*loc, k if isinstance(k, str) else str(k)), unset)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, (*loc, i), unset) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                unset.append((loc, f"environment variable {name} is not set (export it, or write "
                                   f"${{{name}:-default}})"))
                return match.group(0)
            return default  # written in the playbook: not a secret
        register_secret(value)
        return value

    return _ENV_REF.sub(substitute, node)


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not re.fullmatch(r"[\w-]+", str(part)):
            out += f"[{str(part)!r}]"  # a key written with spaces, dots or newlines, as written
        else:
            out += f".{part}" if out else str(part)
    return out


# What each pattern of the models accepts, in words: an error never shows a regular expression.
PATTERNS = {
    r"^[a-z][a-z0-9_-]{0,62}$": "lowercase letters, digits, _ and - (at most 63), starting with a letter",
    r"^[a-z0-9][a-z0-9_-]*$": "lowercase letters, digits, _ and -, starting with a letter or a digit",
    r"^[A-Za-z_][A-Za-z0-9_]*$": "an environment variable's name (letters, digits and _, not "
                                "starting with a digit)",
    r"^[A-Za-z0-9][A-Za-z0-9._-]*$": "letters, digits, . _ and -, starting with a letter or a digit",
    r"^[A-Za-z0-9-]+$": "an HTTP header's name (letters, digits and -)",
    r"^\w+$": "letters, digits and _ only",
    r"^https?://": "an http:// or https:// URL",
    r"^/": "an absolute path (starting with /)",
}


def _unwrapped(kind: Any) -> Any:
    """`X` of `X | None` and of `Annotated[X, …]`."""
    while True:
        if get_origin(kind) is Annotated:
            kind = get_args(kind)[0]
        elif get_origin(kind) in (Union, UnionType):
            kind = next(a for a in get_args(kind) if a is not type(None))
        else:
            return kind


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model whose settings are at `loc` in a playbook (None if not a model)."""
    kind: Any = Playbook
    for part in loc:
        kind = _unwrapped(kind)
        if get_origin(kind) is list and isinstance(part, int):
            kind = get_args(kind)[0]
        elif get_origin(kind) is dict and isinstance(part, str):
            kind = get_args(kind)[1]
        elif isinstance(kind, type) and issubclass(kind, BaseModel):
            found = next((f for name, f in kind.model_fields.items() if part in (name, f.alias)), None)
            if found is None:
                return None
            kind = found.annotation
        else:
            return None
    kind = _unwrapped(kind)
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _settings(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items() if not f.exclude]


def _problem(error: ErrorDetails) -> str:
    """What was expected, in the playbook's words."""
    kind, loc = error["type"], tuple(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        known = _settings(model) if model else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        return (f"unknown setting: did you mean `{close[0]}`?" if close else
                "unknown setting (check its spelling" + (f"; known here: {', '.join(known)})"
                                                         if known else ")"))
    if kind == "missing":
        return "required setting is missing"
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        message = f"expected {PATTERNS.get(pattern, 'another form')}"
    if "input" in error and kind != "value_error" and not isinstance(error["input"], dict | list):
        message = f"{message}, got {error['input']!r}"
    return message


def parse(text: str, path: Path, *, stored: bool = False) -> Playbook:
    """Validate playbook text; `path` names it in errors and anchors relative paths. `stored`:
    the text of a release in the journal, validated when it was released (by a deployctl that
    may have allowed versions this one refuses as new input). Every problem is reported at once,
    in the order of the file, each with its line and column."""
    file = str(path)
    marks = source.Marks()
    raw = source.read_yaml(text, file, marks)
    if not isinstance(raw, dict):
        raise PlaybookError(file, "", "expected a mapping of settings at the top level")
    unset: list[tuple[tuple[Any, ...], str]] = []
    raw = _interpolate(raw, (), unset)
    problems = [(loc, problem, False) for loc, problem in unset]
    if not problems:
        try:
            return Playbook.model_validate(
                {**raw, "source_path": path, "source_text": text},
                context={"base": str(path.resolve().parent), "stored": stored},
            )
        except ValidationError as exc:
            problems = [(tuple(e["loc"]), _problem(e), e["type"] == "extra_forbidden")
                        for e in exc.errors()]

    def error(loc: tuple[Any, ...], problem: str, key: bool) -> PlaybookError:
        line, column = marks.at(loc, key=key) if loc else (None, None)
        return PlaybookError(file, _field_path(loc), problem, line=line, column=column)

    found = sorted((error(*p) for p in problems), key=lambda e: (e.line or 0, e.column or 0))
    first = found[0]
    raise PlaybookError(file, first.field, first.problem, line=first.line, column=first.column,
                        more=found[1:])


def load(path: str | os.PathLike[str]) -> Playbook:
    """Read and validate the playbook at `path` (see deployctl/source.py for what a
    playbook file may be)."""
    file = Path(path)
    return parse(source.read_text(file), file)
