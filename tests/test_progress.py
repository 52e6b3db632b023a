"""The progress line of long steps: on a terminal redrawn in place, elsewhere JSON log lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from deployctl.progress import line

MiB = 1024 * 1024


def test_the_line_says_what_is_done_of_how_much_the_rate_and_the_time_left() -> None:
    assert line("restore", 120 * MiB, 400 * MiB, 3.0, "bytes") == (
        "restore: 120.0 MiB of 400.0 MiB (30%), 40.0 MiB/s, about 7 s left")
    assert line("snapshot", 512, None, 2.0, "bytes") == "snapshot: 512 B, 256 B/s"
    assert line("replay", 5000, 5000, 2.0, "rows") == "replay: 5,000 rows of 5,000 rows (100%), 2,500 rows/s"


SCRIPT = """
import time
from pathlib import Path
from deployctl import progress
from deployctl.log import configure
configure(json=True)
progress.LOG_EVERY_S = 0.1
path = Path({path!r})
path.write_bytes(b"")
with progress.watching("snapshot", lambda: path.stat().st_size, 10_000):
    for _ in range(10):
        with path.open("ab") as fh:
            fh.write(b"x" * 1000)
        time.sleep(0.05)
"""


def test_off_a_terminal_progress_goes_out_as_json_log_lines(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(path=str(tmp_path / "growing"))],
                          capture_output=True, text=True, check=True)
    lines = [json.loads(raw) for raw in done.stderr.splitlines()]
    seen = [entry for entry in lines if entry["event"] == "progress"]
    assert len(seen) >= 2, done.stderr
    assert all(e["step"] == "snapshot" and e["total"] == 10_000 and e["unit"] == "bytes" for e in seen)
    counts = [e["done"] for e in seen]
    assert counts == sorted(counts) and counts[-1] > counts[0] > 0
