"""The playbook's reference, made from the models: its JSON Schema (`deployctl schema`, for
editors) and docs/playbook.md (`deployctl schema --format markdown`; a test fails when the file
is out of date). Each setting's description is its docstring in `models`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from deployctl.playbook.models import Playbook
from deployctl.playbook.validate import PATTERNS
from deployctl.playbook.values import parse_duration, parse_size

SCHEMA_URL = "https://json-schema.org/draft/2020-12/schema"


def schema() -> dict[str, Any]:
    """The playbook's JSON Schema."""
    return {"$schema": SCHEMA_URL, **Playbook.model_json_schema()}


def _parsed_by(kind: Any, metadata: Sequence[Any]) -> str | None:
    """`duration` or `size` for the settings written as `5s` or `2GB`."""
    found = [*metadata, *(get_args(kind)[1:] if get_origin(kind) is Annotated else ())]
    for item in found:
        func = getattr(item, "func", None)
        if func is parse_duration:
            return "duration"
        if func is parse_size:
            return "size"
    return None


def _type(kind: Any, metadata: Sequence[Any] = ()) -> str:
    """A setting's type in words."""
    if (parsed := _parsed_by(kind, metadata)) is not None:
        return parsed
    origin = get_origin(kind)
    if origin is Annotated:
        return _type(get_args(kind)[0], list(get_args(kind)[1:]))
    if origin in (Union, UnionType):
        return " or ".join(_type(a) for a in get_args(kind) if a is not type(None))
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in get_args(kind))
    if origin is list:
        return f"list of {_type(get_args(kind)[0]).replace('section', 'sections')}"
    if origin is dict:
        return f"mapping of names to {_type(get_args(kind)[1]).replace('section', 'sections')}"
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return "section"
    return {str: "text", int: "integer", float: "number", bool: "true or false", Path: "path"}.get(
        kind, getattr(kind, "__name__", str(kind)))


def _bounds(field: FieldInfo, kind: str) -> str:
    """What else a value must be: bounds, lengths, patterns (in words)."""
    said = []
    size = "items" if kind.startswith("list") else "characters"
    for item in field.metadata:
        for name, words in (("ge", "at least {}"), ("gt", "above {}"), ("le", "at most {}"),
                            ("lt", "below {}"), ("min_length", f"at least {{}} {size}"),
                            ("max_length", f"at most {{}} {size}")):
            if getattr(item, name, None) is not None:
                said.append(words.format(getattr(item, name)))
        if getattr(item, "pattern", None):
            said.append(PATTERNS[item.pattern])
    return "; ".join(said)


def _seconds(value: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if value >= size and value % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value * 1000:g}ms"


def _default(field: FieldInfo, kind: str, value: Any) -> str:
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "see below"
    if value is None or value in ([], {}):
        return "—"
    if kind == "duration":
        return f"`{_seconds(value)}`"
    if kind == "size":
        return f"`{value >> 30}GB`" if value % (1 << 30) == 0 else f"`{value >> 20}MB`"
    if isinstance(value, list):
        return ", ".join(f"`{v}`" for v in value)
    return f"`{value}`"


def _words(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _defaults(model: type[BaseModel], instance: BaseModel | None) -> dict[str, Any]:
    """Each setting's default: the section's own default's value where the section has one
    (`gates.error_rate` defaults to `{max: 0.02, max_vs_blue: 2}`), else the model's."""
    return {name: getattr(instance, name) if instance is not None else
            PydanticUndefined if field.is_required() else field.get_default(call_default_factory=True)
            for name, field in model.model_fields.items()}


def sections(model: type[BaseModel], path: str, instance: BaseModel | None = None
              ) -> Iterator[tuple[str, type[BaseModel], dict[str, Any]]]:
    """Each section of the playbook, by its path, in the order of the fields, with its defaults."""
    defaults = _defaults(model, instance)
    yield path, model, defaults
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = field.alias or name
        kind, suffix = field.annotation, ""
        while True:
            origin = get_origin(kind)
            if origin in (Union, UnionType):
                kind = next(a for a in get_args(kind) if a is not type(None))
            elif origin is list:
                kind, suffix = get_args(kind)[0], suffix + "[]"
            elif origin is dict:
                kind, suffix = get_args(kind)[1], suffix + f".<{key.rstrip('s')}>"
            else:
                break
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            default = defaults[name] if isinstance(defaults[name], BaseModel) and not suffix else None
            yield from sections(kind, f"{path}.{key}{suffix}" if path else f"{key}{suffix}", default)


def markdown() -> str:
    """docs/playbook.md."""
    out = ["# Playbook reference", "",
           "Every setting of a playbook, made from deployctl's models (`deployctl schema --format "
           "markdown`); `deployctl schema` prints the same as a JSON Schema for editors. Any value "
           "may be `${VAR}` or `${VAR:-default}` from the environment; relative paths are relative "
           "to the playbook's folder. A duration is a number of seconds or text such as `500ms`, "
           "`5s`, `2m`, `1h`, `7d` (at most 7 days); a size is a number of bytes or text such as "
           "`512MB`, `2GB`.", ""]
    for path, model, defaults in sections(Playbook, ""):
        out += [f"## `{path}`" if path else "## The top level", "", _words(model.__doc__), "",
                "| setting | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            kind = _type(field.annotation, field.metadata)
            bounds = _bounds(field, kind)
            out.append(f"| `{field.alias or name}` | {kind}{f' ({bounds})' if bounds else ''} | "
                       f"{_default(field, kind, defaults[name])} | {_words(field.description)} |")
        out.append("")
    return "\n".join(out)
