"""Moving users to green in sticky cohorts, watching the gates, obeying other terminals.

A cohort step sets the router's split (the allow-lists and the largest percentage of this step
and those before it), then reads the gates every interval for the step's `hold`. `failures`
failing readings in a row are a breach: the step fails and the engine rolls back, traffic to
blue first. A step whose readings were all inconclusive pauses for a human (in CI, or with
`on_inconclusive: rollback`, it rolls back). Between readings the step takes the requests other
terminals left in the journal: `promote` ends the step now, `pause` holds it (the hold clock
stops) until `resume`, `abort` and `rollback` end the release.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from deployctl.errors import StepFailed
from deployctl.fleet.routers import Split
from deployctl.gates.watch import Watch
from deployctl.log import log
from deployctl.playbook import CohortStep, Playbook

POLL_S = 0.2  # how often a waiting step looks for requests from other terminals


class OperatorRollback(StepFailed):
    """An operator asked to roll back."""

    ended_by = "operator"


class Aborted(OperatorRollback):
    """An operator asked to abort: users back on blue now, green and the capture kept."""


class GateBreach(StepFailed):
    """The gates judged green failing (`breach`), or could not judge it where that rolls back
    (`inconclusive`)."""

    def __init__(self, message: str, ended_by: str = "breach") -> None:
        super().__init__(message)
        self.ended_by = ended_by


def _ended_by(command: str, when: str) -> StepFailed:
    """What an operator's `abort` or `rollback` raises."""
    return (Aborted if command == "abort" else OperatorRollback)(
        f"{command} requested by an operator {when}")


def split_for(pb: Playbook, upto: int) -> Split:
    """The split of cohort step `upto`: everyone let in by it or by a step before it."""
    steps = pb.cohorts[: upto + 1]
    allow = tuple(dict.fromkeys(user for step in steps for user in step.allow))
    return Split(allow=allow, percent=max(step.percent for step in steps))


def in_ci() -> bool:
    """Run by CI (CI=true, as CI services set it): nobody answers a pause."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class Operator:
    """The requests other terminals leave for this release in the journal. A pause is recorded
    under `step` (for `deployctl status`) and told through `tell` (the `paused` notification)."""

    def __init__(self, journal: Any, release_id: int, step: str | None = None,
                 tell: Callable[..., None] | None = None) -> None:
        self.journal, self.release_id, self.step, self.tell = journal, release_id, step, tell

    def take(self) -> str | None:
        request = self.journal.take_request(self.release_id)
        if request is None:
            return None
        log.info("operator request", command=request["command"], by=request["requested_by"],
                 release=self.release_id)
        return str(request["command"])

    def wait(self, seconds: float) -> str | None:
        """Sleep up to `seconds`; return early with the first request that arrives."""
        deadline = time.monotonic() + seconds
        while (command := self.take()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(POLL_S, left))
        return command

    def hold(self, why: str, limit: float) -> str:
        """Paused: wait for `resume`, `promote`, `abort` or `rollback` (return which); after
        `limit` seconds without an answer, `rollback`."""
        log.warning("release paused: waiting for an operator", reason=why, rolls_back_after_s=limit,
                    next="deployctl resume | promote | abort | rollback")
        until = datetime.now(UTC) + timedelta(seconds=limit)
        if self.step is not None:
            self.journal.event(self.release_id, self.step, "info",
                               {"paused": why, "rolls_back_at": until.isoformat()})
        if self.tell is not None:
            self.tell("paused", f"paused, waiting for an operator ({why}): it rolls back on its own at "
                                f"{until:%Y-%m-%d %H:%M:%S} UTC unless `deployctl resume|promote|abort|"
                                f"rollback {self.release_id}`", reason=why,
                      rolls_back_at=until.isoformat())
        command = "rollback"
        deadline = time.monotonic() + limit
        while (left := deadline - time.monotonic()) > 0:
            answer = self.wait(left)
            if answer in ("resume", "promote", "abort", "rollback"):
                command = answer
                break
        else:
            log.warning("nobody answered the pause: rolling back", reason=why)
        if self.step is not None:
            self.journal.event(self.release_id, self.step, "info", {"pause_ended": command})
        return command


def run_step(pb: Playbook, index: int, watch: Watch, operator: Operator,
             record: Any, unattended: bool = False) -> dict[str, Any]:
    """Hold cohort step `index` while its gates pass; return what the journal keeps of it.
    `unattended` (`--yes`) or CI: a step no reading could judge rolls back instead of pausing."""
    step: CohortStep = pb.cohorts[index]
    gates = pb.gates
    held = 0.0
    failing = 0
    readings = conclusive = 0
    ended = "held"
    # A step does not end on a failing reading: it goes on (a few readings at most) until the
    # gates pass or breach.
    overtime = 2 * gates.failures * gates.interval
    while held < step.hold or (failing and held < step.hold + overtime):
        started = time.monotonic()
        command = operator.wait(min(gates.interval, max(step.hold - held, 0) or gates.interval))
        if command is not None:
            if command == "pause":
                command = operator.hold("paused by an operator", gates.max_pause)
            if command == "promote":
                ended = "promoted"
                break
            if command in ("abort", "rollback"):
                raise _ended_by(command, f"during cohort {step.name}")
            continue  # resumed: the hold clock did not run while paused
        held += time.monotonic() - started
        verdict, figures = watch.read()
        readings += 1
        conclusive += verdict.status != "inconclusive"
        record({"cohort": step.name, **verdict.as_dict(), **figures, "held_s": round(held, 3),
                "hold_s": step.hold})
        if verdict.status == "fail":
            failing += 1
            if failing >= gates.failures:
                raise GateBreach(f"gate breach in cohort {step.name}: {verdict.failures()}")
        elif verdict.status == "pass":
            failing = 0
    if ended == "held" and readings and not conclusive:
        policy = gates.on_inconclusive
        if policy == "pause" and (unattended or in_ci()):
            policy = "rollback"
        why = f"cohort {step.name}: no gate reading was conclusive in {readings} readings"
        if policy == "rollback":
            raise GateBreach(why, "inconclusive")
        if policy == "pause":
            command = operator.hold(why, gates.max_pause)
            if command in ("abort", "rollback"):
                raise _ended_by(command, f"while paused ({why})")
            ended = "continued by an operator"
    return {"cohort": step.name, "ended": ended, "readings": readings, "conclusive": conclusive,
            "held_s": round(held, 3)}
