"""The command line's manners: exit code 2 for usage errors, colour only where a person reads
it, a version, shell completion."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest
import structlog

from deployctl.log import configure, log
from tests.conftest import Env

ESC = "\x1b["


def deployctl(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NO_COLOR", "DEPLOYCTL_PLAYBOOK", "DEPLOYCTL_STATE_DSN")}
    return subprocess.run([sys.executable, "-m", "deployctl", *args], capture_output=True, text=True,
                          env={**env, **extra}, timeout=60, check=False)


@pytest.mark.parametrize("args", [["delta", "show", "1"], ["status", "--no-such-option"],
                                  ["no-such-command"]])
def test_usage_errors_exit_2_with_one_line(args: list[str]) -> None:
    done = deployctl(*args)
    assert done.returncode == 2, done.stderr
    said = [line for line in done.stderr.splitlines() if line.lower().startswith("error:")]
    assert len(said) == 1 and "Traceback" not in done.stderr, done.stderr


def test_version() -> None:
    done = deployctl("--version")
    assert done.returncode == 0 and done.stdout.startswith("deployctl, version ")


def test_schema_prints_the_playbooks_json_schema() -> None:
    done = deployctl("schema")
    schema = json.loads(done.stdout)
    assert done.returncode == 0 and schema["$schema"].startswith("https://json-schema.org/")
    assert {"app", "version", "database", "deploy"} <= set(schema["required"])
    assert schema["$defs"]["DatabaseConfig"]["properties"]["rollback"]["enum"] == [
        "keep", "downgrade", "restore"]


def test_shell_completion_script() -> None:
    done = deployctl(_DEPLOYCTL_COMPLETE="bash_source")
    assert done.returncode == 0 and "_deployctl_completion" in done.stdout


def _logged(monkeypatch: pytest.MonkeyPatch, terminal: bool, color: bool | None = None) -> str:
    """What one text log line looks like on stderr: a terminal (a pty) or a pipe. The logging
    configuration of the test session is put back after (later tests log in this process)."""
    reader, writer = pty.openpty() if terminal else os.pipe()
    saved = structlog.get_config()
    try:
        with os.fdopen(writer, "w") as stream, monkeypatch.context() as patched:
            patched.setattr(sys, "stderr", stream)
            configure(json=False, color=color)
            log.info("hello", step="snapshot")
            stream.flush()
            text = os.read(reader, 65536).decode()
    finally:
        structlog.configure(**saved)
        os.close(reader)
    return text


@pytest.mark.parametrize(("terminal", "no_color", "flag", "coloured"), [
    (True, None, None, True), (True, "1", None, False), (True, None, False, False),
    (False, None, None, False), (False, "1", True, True)])
def test_text_logs_are_coloured_only_on_a_terminal_without_no_color(
        monkeypatch: pytest.MonkeyPatch, terminal: bool, no_color: str | None, flag: bool | None,
        coloured: bool) -> None:
    if no_color:
        monkeypatch.setenv("NO_COLOR", no_color)
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    text = _logged(monkeypatch, terminal, flag)
    assert "hello" in text and (ESC in text) == coloured, repr(text)


@pytest.mark.integration
def test_a_release_logging_text_into_a_pipe_writes_no_colour(env: Env) -> None:
    done = env.cli("--log-text", "release", str(env.playbook("1")))
    assert done.returncode == 0, done.stderr
    assert "snapshot" in done.stderr and ESC not in done.stderr
