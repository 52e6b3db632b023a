"""A playbook file as untrusted input: read whole, parsed safely, bounded in every dimension.

A playbook is a page or two of settings; these bounds are far above any real one and far below
what hurts: a file read whole into memory (or a FIFO, or /dev/zero), text that is not UTF-8,
YAML aliases that expand into millions of values, nesting the YAML composer recurses into,
duplicate keys that silently override each other. Every refusal is one PlaybookError with the
line and column where it can.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deployctl.errors import PlaybookError

MAX_BYTES = 1 << 20
MAX_NODES = 20_000
MAX_DEPTH = 32


def read_text(file: Path) -> str:
    """The text of the playbook file: a regular file of UTF-8 text, at most MAX_BYTES."""
    try:
        # Non-blocking, so a FIFO is refused below instead of waiting for a writer.
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise PlaybookError(str(file), "", f"cannot read the playbook: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PlaybookError(str(file), "", "not a regular file (give the playbook's YAML file)")
        data = stream.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise PlaybookError(str(file), "", f"larger than {MAX_BYTES // 1024} KiB: not a playbook")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PlaybookError(str(file), "", "UTF-16 text: save the playbook as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PlaybookError(str(file), "", f"not UTF-8 text (byte 0x{data[exc.start]:02x}): save the "
                            "playbook as UTF-8", line=line) from None
    return text


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with nesting bounded: its composer recurses once per level."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                # PyYAML's methods are untyped: the event's mark is where the nesting goes too deep.
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise _Refused(event.start_mark, f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Refused(Exception):
    def __init__(self, mark: yaml.Mark | None, problem: str) -> None:
        super().__init__(problem)
        self.mark, self.problem = mark, problem


def _position(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _check_nodes(root: yaml.Node) -> None:
    """Refuse duplicate keys, aliases that refer to themselves, and aliases that expand past
    MAX_NODES (the "billion laughs"): an alias is a reference, so each node is counted once per
    place it appears without building anything."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise _Refused(node.start_mark, "an alias refers to the node that holds it")
        open_nodes.add(id(node))
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in seen:
                        raise _Refused(key.start_mark, f"duplicate key {key.value!r} (first at "
                                                       f"{_position(seen[key.value].start_mark)})")
                    seen[key.value] = key
                total += size(key) + size(value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        if total > MAX_NODES:
            raise _Refused(node.start_mark, f"expands to more than {MAX_NODES} values "
                                            "(YAML aliases repeated inside each other?)")
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root)


Path_ = tuple[str | int, ...]


@dataclass
class Marks:
    """Where each value and each key of a document is written: 1-based (line, column) by the
    value's path (keys as text, list items by index), so that an error about a setting can say
    where in the file it is."""

    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def add(self, node: yaml.Node, path: Path_ = ()) -> None:
        if path in self.values:  # an alias: its first place is where it is written
            return
        self.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    self.keys[(*path, key.value)] = (key.start_mark.line + 1, key.start_mark.column + 1)
                    self.add(value, (*path, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.add(item, (*path, index))

    def at(self, path: Path_, *, key: bool = False) -> tuple[int, int] | tuple[None, None]:
        """The key's place (`key`) or the value's at `path`, else the nearest written parent's."""
        if key and path in self.keys:
            return self.keys[path]
        while path:
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), (None, None))


def read_yaml(text: str, file: str, marks: Marks | None = None) -> Any:
    """The YAML document in `text`, or one PlaybookError naming where in `file` it is wrong;
    where each value is written goes into `marks`."""
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # it reads the text at once: a NUL or other control character fails here
        root = loader.get_single_node()
        if root is None:
            return None
        _check_nodes(root)
        document = loader.construct_document(root)
        if marks is not None:  # after construction, which resolves merge keys (<<) in place
            marks.add(root)
        return document
    except _Refused as exc:
        raise PlaybookError(file, "", exc.problem, line=_line(exc.mark), column=_column(exc.mark)) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise PlaybookError(file, "", f"not valid YAML: control character U+{exc.character:04X} "
                                      "is not allowed", line=line) from None
    except ValueError as exc:  # PyYAML building a value Python refuses (an integer of 5000 digits)
        raise PlaybookError(file, "", f"not valid YAML: {str(exc).splitlines()[0]}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PlaybookError(file, "", f"not valid YAML: {problem}", line=_line(mark),
                            column=_column(mark)) from None
    finally:
        if loader is not None:
            loader.dispose()


def _line(mark: yaml.Mark | None) -> int | None:
    return mark.line + 1 if mark else None


def _column(mark: yaml.Mark | None) -> int | None:
    return mark.column + 1 if mark else None
