"""Run every benchmark against one throwaway cluster and print `name value` lines.

    python -m bench                      # everything (what `make bench` runs)
    python -m bench capture replay       # only some parts

BENCH_ROUNDS (default 3) sets how many interleaved rounds each comparison gets.
"""

from __future__ import annotations

import os
import sys
import time

from bench import capture_tps, replay_speed, restore_pause, rollback_big, traffic
from bench.common import progress, throwaway_cluster
from deployctl.log import configure

PARTS = {"capture": capture_tps.run, "replay": replay_speed.run, "restore": restore_pause.run,
         "rollback": rollback_big.run, "traffic": traffic.run}


def main(argv: list[str] | None = None) -> int:
    wanted = (sys.argv[1:] if argv is None else argv) or list(PARTS)
    unknown = [w for w in wanted if w not in PARTS]
    if unknown:
        print(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    configure(json=False)  # deployctl's logs go to stderr: stdout is for results only
    started = time.monotonic()
    with throwaway_cluster() as cluster:
        for part in wanted:
            progress(f"-- {part}")
            PARTS[part](cluster, rounds)
    progress(f"done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
