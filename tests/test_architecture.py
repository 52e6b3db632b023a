"""The layers of docs/architecture.md hold: deployctl's modules import one another without a
loop (imports inside functions included; those only for the type checker left out), so each
module stands above everything it imports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "deployctl"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    where = PACKAGE.parent.joinpath(*name.split("."))
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """The deployctl modules `path` imports at run time."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                   for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("deployctl")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deployctl"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if _is_module(name) else node.module)
    return found


def graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path) & set(modules) - {name} for name, path in modules.items()}


def test_the_modules_import_each_other_without_a_loop() -> None:
    edges = graph()
    assert len(edges) > 40
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            loop = path[path.index(name):] + [name]
            raise AssertionError(f"import loop: {' -> '.join(loop)}")
        if name in done:
            return
        for imported in sorted(edges[name]):
            visit(imported, [*path, name])
        done.add(name)

    for name in sorted(edges):
        visit(name, [])


def test_the_architecture_page_names_every_top_level_module() -> None:
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    top = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    top += [f"{p.name}/" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    assert [name for name in top if f"`{name}`" not in page] == []


def test_only_the_journal_names_the_state_tables() -> None:
    schema = (PACKAGE / "sql" / "state.sql").read_text()
    tables = set(re.findall(r"CREATE TABLE IF NOT EXISTS deployctl\.(\w+)", schema))
    assert {"releases", "changes", "captures", "wal_batches"} <= tables
    named = re.compile(rf"\bdeployctl\.({'|'.join(sorted(tables))})\b")
    outside = [f"{path.relative_to(PACKAGE.parent)}: deployctl.{m.group(1)}"
               for path in sorted(PACKAGE.rglob("*.py")) if "journal" not in path.relative_to(PACKAGE).parts
               for m in named.finditer(path.read_text())]
    assert outside == []
