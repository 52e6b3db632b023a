"""The README keeps up with the code: commands, exit codes and the sample playbooks."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from deployctl import errors, playbook
from deployctl.cli import main
from deployctl.playbook import reference

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PLAYBOOKS = sorted((ROOT / "playbooks").glob("*.yaml"))
# Distinctive, so that what load() registers as a secret masks nothing else in this process.
SOCIAL_URL = "postgresql://docs-test@127.0.0.1:5432/social_docs_test"


def _commands(group: click.Group = main, prefix: str = "") -> dict[str, click.Command]:
    """Every command by its full name (`delta show`), subcommands of groups included."""
    found: dict[str, click.Command] = {}
    with click.Context(group) as ctx:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if command is None:
                continue
            found[f"{prefix}{name}"] = command
            if isinstance(command, click.Group):
                found.update(_commands(command, f"{prefix}{name} "))
    return found


def _readme_row(name: str) -> str:
    """The README's table row of command `name` (`lock acquire` is in the row of `lock status|…`)."""
    group, _, sub = name.partition(" ")
    for line in README.splitlines():
        match = re.match(r"\| `deployctl ([a-z-]+)(?: ([a-z|\\]+))?", line)
        if match and match.group(1) == group and (
                not sub or sub in (match.group(2) or "").replace("\\", "").split("|")):
            return line
    return ""


def _exit_code_table() -> dict[int, str]:
    section = README.split("### Exit codes", 1)[1]
    rows = re.findall(r"^\|\s*(\d+)\s*\|(.*)\|\s*$", section.split("\n## ", 1)[0], flags=re.M)
    return {int(code): meaning.strip() for code, meaning in rows}


def test_the_cli_has_commands() -> None:
    assert {"release", "plan", "status", "history", "resume", "rollback"} <= set(_commands())


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_command_has_help_text(name: str) -> None:
    command = _commands()[name]
    assert command.help and command.help.strip()
    assert command.get_short_help_str().strip()


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_option_of_every_command_has_help_text(name: str) -> None:
    command = _commands()[name]
    missing = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
    assert missing == []


@pytest.mark.parametrize("name", sorted(name for name, c in _commands().items()
                                         if not isinstance(c, click.Group)))
def test_every_command_and_its_options_are_in_the_readme_table(name: str) -> None:
    row = _readme_row(name)
    assert row, f"no row for `deployctl {name}` in the README's table of commands"
    missing = [p.opts[0] for p in _commands()[name].params
               if isinstance(p, click.Option) and not any(opt in row for opt in p.opts)]
    assert missing == [], f"`deployctl {name}` options missing from its README row: {missing}"


def test_every_command_the_readme_names_exists() -> None:
    named = set(re.findall(r"`deployctl ([a-z][a-z-]*)", README))
    assert named and named <= set(_commands())


def test_exit_codes_are_zero_to_four() -> None:
    codes = {name: value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    assert sorted(codes.values()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("code", [0, 1, 2, 3, 4])
def test_every_exit_code_is_in_the_readme_table(code: int) -> None:
    assert code in {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    assert _exit_code_table().get(code), f"exit code {code} missing from README's exit-code table"


def test_every_error_class_exits_with_a_documented_code() -> None:
    def subclasses(cls: type[errors.DeployctlError]) -> list[type[errors.DeployctlError]]:
        return [cls] + [c for sub in cls.__subclasses__() for c in subclasses(sub)]

    documented = set(_exit_code_table())
    for cls in subclasses(errors.DeployctlError):
        assert cls.exit_code in documented, cls.__name__


@pytest.fixture
def social_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """SOCIAL_DATABASE_URL set as the demo sets it; the optional SOCIAL_* knobs at their defaults."""
    for name in ("SOCIAL_BLUE_PORT", "SOCIAL_GREEN_PORT", "SOCIAL_ROLLBACK", "SOCIAL_FAIL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SOCIAL_DATABASE_URL", SOCIAL_URL)
    known_hosts = tmp_path / "known_hosts"  # the ssh example's: validation needs the file
    known_hosts.write_text("")
    monkeypatch.setenv("SOCIAL_KNOWN_HOSTS", str(known_hosts))


def test_there_are_sample_playbooks() -> None:
    assert PLAYBOOKS


@pytest.mark.parametrize("path", PLAYBOOKS, ids=lambda p: p.name)
def test_sample_playbook_validates(path: Path, social_env: None) -> None:
    pb = playbook.load(path)
    assert pb.app == "social"
    assert pb.database.dsn == SOCIAL_URL
    assert pb.deploy.env["DATABASE_URL"] == SOCIAL_URL
    assert pb.migrations.alembic_ini.is_file()


@pytest.mark.parametrize("path", PLAYBOOKS, ids=lambda p: p.name)
def test_sample_playbook_without_its_database_url_names_the_variable(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOCIAL_DATABASE_URL", raising=False)
    with pytest.raises(errors.PlaybookError, match="SOCIAL_DATABASE_URL is not set") as caught:
        playbook.load(path)
    assert caught.value.field == "database.dsn"


def test_the_playbook_reference_is_up_to_date() -> None:
    """docs/playbook.md is made from the models: regenerate it with
    `deployctl schema --format markdown -o docs/playbook.md`."""
    assert (ROOT / "docs" / "playbook.md").read_text() == reference.markdown()


def test_every_setting_of_the_playbook_is_described() -> None:
    undescribed = [f"{path}.{name}" for path, model, _ in reference.sections(playbook.Playbook, "")
                   for name, field in model.model_fields.items()
                   if not field.exclude and not (field.description or "").strip()]
    assert undescribed == []
    assert all((model.__doc__ or "").strip() for _, model, _ in reference.sections(playbook.Playbook, ""))


def test_the_readme_links_the_playbook_reference() -> None:
    assert "docs/playbook.md" in README
