"""The capture keeper: an aborted release's slot kept within its WAL budget, with no release
process left to do it.

An abort moves every user back to blue and ends the release's process; green, the migrated
database and the capture stay for a look until `deployctl rollback`. Users keep writing
meanwhile, and the slot would hold their WAL without limit. `_abort` starts this keeper, detached:
every `capture.interval` it collects the slot into the journal when more than the budget is
unstored (as the release's own worker does), and it exits as soon as the release is no longer
aborted, another deployctl process holds the application's lock (a rollback, a resume), the
capture stops, or the journal stays unreachable. Its log is `<workdir>/<app>-<id>-keeper.log`.

    DEPLOYCTL_STATE_DSN=… python -m deployctl.capture_keeper RELEASE_ID
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from deployctl import playbook
from deployctl.db import capture
from deployctl.files import private_dir
from deployctl.journal import Journal
from deployctl.log import configure, log

PARENT_EXIT_S = 60.0  # how long the aborting process may take to exit and let go of the lock


def log_path(pb: playbook.Playbook, release_id: int) -> Path:
    return pb.workdir / f"{pb.app}-{release_id}-keeper.log"


def spawn(pb: playbook.Playbook, state_dsn: str, release_id: int) -> int:
    """Start the keeper in a session of its own (it outlives this process); returns its pid."""
    private_dir(pb.workdir)
    fd = os.open(log_path(pb, release_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        # The journal's DSN goes by the environment: it may hold a password, and `ps` shows
        # every process's arguments to every user.
        child = subprocess.Popen([sys.executable, "-m", "deployctl.capture_keeper", str(release_id)],
                                 env={**os.environ, "DEPLOYCTL_STATE_DSN": state_dsn},
                                 stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True)
    finally:
        os.close(fd)
    return child.pid


def _needed(journal: Journal, release_id: int, app: str) -> str | None:
    """Why the keeper should stop now, or None."""
    release = journal.get(release_id)
    if release.status != "aborted":
        return f"the release is {release.status}"
    if journal.lock_holder(app)["alive"]:
        return "another deployctl process works on the release"
    found = journal.capture(release_id)
    if found is None or found["status"] != "active":
        return "the capture is no longer active"
    return None


def keep(state_dsn: str, release_id: int) -> str:
    """Run until the keeper is no longer needed; returns why it stopped."""
    with Journal(state_dsn) as journal:
        stored = journal.get(release_id)
        pb = playbook.parse(stored.playbook_text, Path(stored.playbook_path), stored=True)
        # The aborting process holds the application's lock until it exits, right after
        # starting this keeper; whoever holds it after that is another deployctl process.
        deadline = time.monotonic() + PARENT_EXIT_S
        while journal.lock_holder(pb.app)["alive"] and time.monotonic() < deadline:
            time.sleep(0.2)
        why = _needed(journal, release_id, pb.app)
        if why:
            return why
        found = journal.capture(release_id)
        assert found is not None
        worker = capture.Worker(pb.database.dsn, state_dsn, capture.CaptureInfo.from_row(found),
                                pb.capture.interval, "lazy", pb.capture.max_retained_wal)
        worker.start()
        try:
            while not (why := _needed(journal, release_id, pb.app)) and worker.is_alive():
                time.sleep(pb.capture.interval)
        finally:
            worker.stop()
        if worker.lost:
            journal.set_capture(release_id, "incomplete", worker.lost)
            return worker.lost
        return why or "the capture worker ended"


def main(argv: list[str]) -> int:
    configure(json=False)
    release_id = int(argv[0])
    why = keep(os.environ["DEPLOYCTL_STATE_DSN"], release_id)
    log.info("capture keeper stopped", release=release_id, reason=why)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
