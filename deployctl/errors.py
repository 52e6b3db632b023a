"""The errors deployctl raises, each carrying the exit code the CLI turns it into.

Exit codes are a contract for CI (DESIGN.md): 0 released; 1 failed and rolled back cleanly;
2 bad input, nothing touched; 3 rollback itself failed, a human is needed; 4 another release
holds the lock.
"""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_ROLLED_BACK = 1
EXIT_BAD_INPUT = 2
EXIT_ROLLBACK_FAILED = 3
EXIT_LOCKED = 4

# What a release's status means for the process that ran it (and for `status --watch`).
STATUS_EXIT_CODES = {
    "released": EXIT_OK,
    "rolled_back": EXIT_ROLLED_BACK,
    "refused": EXIT_BAD_INPUT,
    "rollback_failed": EXIT_ROLLBACK_FAILED,
    "aborted": EXIT_ROLLED_BACK,
}


class DeployctlError(Exception):
    """Base class: one line a user can act on."""

    exit_code = EXIT_BAD_INPUT


class BadInput(DeployctlError):
    """The command line or the state it names is wrong; nothing was touched."""


class PlaybookError(BadInput):
    """A playbook that does not validate: each problem on its own line, as compilers write them
    (`app.yaml:12:5: database.rollback: expected …`), in the order of the file. `field`,
    `problem` and the position are the first problem's; `more` are the others."""

    def __init__(self, path: str, field: str, problem: str, *, line: int | None = None,
                 column: int | None = None, more: Sequence[PlaybookError] = ()) -> None:
        self.path, self.field, self.problem = path, field, problem
        self.line, self.column = line, column
        where = path if line is None else f"{path}:{line}" if column is None else f"{path}:{line}:{column}"
        self.lines = [f"{where}: {field}: {problem}" if field else f"{where}: {problem}"]
        self.lines += [text for other in more for text in other.lines]
        super().__init__("\n".join(self.lines))


class LockHeld(DeployctlError):
    """Another release of the same application is running or unfinished."""

    exit_code = EXIT_LOCKED


class StepFailed(DeployctlError):
    """A release step could not do its job; the engine rolls back."""

    exit_code = EXIT_ROLLED_BACK


class LockLost(DeployctlError):
    """Another process took the application's lock while this one could not reach the journal:
    this one stops at once, touching nothing more (the other works on the release)."""

    exit_code = EXIT_LOCKED


class RollbackFailed(DeployctlError):
    """A rollback step failed: a human is needed."""

    exit_code = EXIT_ROLLBACK_FAILED
