"""The report of one release, from its journal alone: an incident timeline for the on-call engineer.

`build()` reads the journal (the release, its events, operator requests, the capture and the
delta's counts) into one stable dict: what happened in a few sentences, each step with its
times and result, every gate reading, the decision and why, the delta and what became of it,
and what the users of each cohort saw. Before anything is rendered, columns the playbook marks
`personal` are masked wherever the journal could hold their values (conflict listings, and any
text quoting a value the delta captured), and secrets are redacted. `render()` turns the dict
into Markdown, JSON or a self-contained HTML page (the words are in report_text.py, the page and
its chart in report_html.py).

The JSON (`schema`: deployctl.report/1) has these keys, always present: `release` (app, versions,
who, times, status, exit code and its meaning, who works on it now), `summary` (sentences),
`steps` (in order, skipped and pending ones included: result, times, duration, error, detail),
`readings` (numbered gate readings: cohort, status, checks, green/blue requests, errors, error
rate, response time), `decision` (kind: released, breach, inconclusive, operator, step failed,
refused or in progress; the deciding step, readings and operator requests), `delta` (captured
counts per table and operation, the rollback's replay and reconciliation file, later replays
with their conflicts), `cohorts` (size and what green's and blue's users saw per step),
`gates` (the thresholds) and `personal_columns`. Times are ISO 8601 in UTC.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from deployctl import cohorts as cohort_steps
from deployctl import delta as deltas
from deployctl.errors import STATUS_EXIT_CODES, DeployctlError
from deployctl.files import private_dir, write_private
from deployctl.journal import Journal, Release
from deployctl.journal import delta as delta_rows
from deployctl.log import log
from deployctl.playbook import Playbook, parse
from deployctl.redact import MASK, is_personal, redact
from deployctl.report_html import page
from deployctl.report_text import blocks, markdown, narrative, step_summary
from deployctl.steps import forward, rollback

SCHEMA = "deployctl.report/1"
FORMATS = ("md", "json", "html")
# What each outcome means for whoever reads the exit code (DESIGN.md's contract).
MEANING = {
    "released": "released",
    "rolled_back": "failed and rolled back cleanly",
    "aborted": "aborted by an operator: users are on blue; green and the delta are kept until "
               "`deployctl rollback`",
    "refused": "refused by preflight: nothing was touched",
    "rollback_failed": "the rollback itself failed: a human is needed",
    "running": "still running",
    "rolling_back": "still rolling back",
}
# Where a journal detail carries row values, next to the `table` they belong to.
_ROW_PARTS = ("key", "ours", "theirs", "new", "old")
# Personal values shorter than this are not searched for in free text: they would mask
# digits and syllables everywhere and protect nothing.
_MIN_SCRUB_LEN = 3
_MAX_SCRUB_VALUES = 20_000
_UNSET_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# -- reading the journal ------------------------------------------------------------------------

def _iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat(timespec="milliseconds") if at else None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


def _playbook(release: Release) -> tuple[Playbook | None, list[str]]:
    """The release's playbook (None if it no longer validates here), and its personal columns.

    The engineer reading the report may not have the release's secrets: a `${VAR}` that is not
    set here reads as `(unset)` (the steps, cohorts and gates do not depend on it).
    """
    text = _UNSET_REF.sub(lambda m: m.group(0) if m.group(1) in os.environ else f"${{{m.group(1)}:-(unset)}}",
                          release.playbook_text)
    try:
        pb = parse(text, Path(release.playbook_path), stored=True)
        return pb, list(pb.personal)
    except DeployctlError:  # written for another version of deployctl: keep what it marked personal
        raw = yaml.safe_load(release.playbook_text) or {}
        personal = raw.get("personal") if isinstance(raw, dict) else None
        return None, [str(p) for p in personal] if isinstance(personal, list) else []


def _steps(events: list[dict[str, Any]], release: Release, pb: Playbook | None,
           start: datetime, alive: bool) -> list[dict[str, Any]]:
    """Each step that ran, with its times and result; planned steps that did not run, in place.

    A step started without an end is `running` while a deployctl process holds the release, else
    `interrupted` (its process died).
    """
    ran: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["phase"] == "info":
            continue
        step = ran.setdefault(event["step"], {
            "step": event["step"], "kind": "rollback" if event["step"].startswith("rollback.") else "forward",
            "result": "running", "attempts": 0, "started_at": None, "ended_at": None,
            "offset_s": None, "duration_s": None, "error": None, "detail": {}})
        if event["phase"] == "started":
            step["attempts"] += 1
            step["started_at"] = step["started_at"] or event["at"]
            step["result"], step["ended_at"] = "running", None
            continue
        detail = dict(event["detail"])
        step["result"], step["ended_at"] = event["phase"], event["at"]
        step["duration_s"] = detail.pop("duration_s", None)
        step["error"] = detail.pop("error", None)
        step["detail"] = detail
    order = list(ran)
    if pb is not None:
        plan = [name for name, _ in forward(pb)]
        if release.status in ("rolling_back", "rolled_back", "rollback_failed", "aborted") or any(
                name.startswith("rollback.") for name in ran):
            plan += [name for name, _ in rollback(pb)]
        missing = "skipped" if release.status in ("released", "rolled_back", "refused") else "pending"
        for i, name in enumerate(plan):
            if name in ran:
                continue
            before = next((p for p in reversed(plan[:i]) if p in order), None)
            order.insert(order.index(before) + 1 if before else 0, name)
            ran[name] = {"step": name, "kind": "rollback" if name.startswith("rollback.") else "forward",
                         "result": missing, "attempts": 0, "started_at": None, "ended_at": None,
                         "offset_s": None, "duration_s": None, "error": None, "detail": {}}
    out = []
    for name in order:
        step = ran[name]
        if step["result"] == "running" and not alive:
            step["result"] = "interrupted"
        if step["duration_s"] is None and step["result"] in ("done", "failed"):
            step["duration_s"] = _seconds(step["started_at"], step["ended_at"])
        step["offset_s"] = _seconds(start, step["started_at"])
        step["summary"] = step_summary(name, step["detail"]) if step["result"] == "done" else ""
        out.append(step)
    return out


def _readings(events: list[dict[str, Any]], start: datetime) -> list[dict[str, Any]]:
    """Every gate reading, numbered, with error rates worked out for each backend."""
    out: list[dict[str, Any]] = []
    for event in events:
        detail = event["detail"]
        if event["phase"] != "info" or "checks" not in detail:
            continue
        sides: dict[str, dict[str, Any] | None] = {}
        for side in ("green", "blue"):
            window = detail.get(side)
            sides[side] = None if not window else {
                "requests": window.get("requests"), "errors": window.get("errors"),
                "response_ms": window.get("response_ms"),
                "error_rate": round(window["errors"] / window["requests"], 4)
                if window.get("requests") else None}
        out.append({"n": len(out) + 1, "at": event["at"], "offset_s": _seconds(start, event["at"]),
                    "step": event["step"], "cohort": detail.get("cohort"), "status": detail.get("status"),
                    "checks": [{"name": c.get("name"), "status": c.get("status"), "detail": c.get("detail"),
                                "value": c.get("value")} for c in detail["checks"]],
                    **sides})
    return out


def _totals(readings: list[dict[str, Any]], side: str) -> dict[str, Any]:
    windows = [r[side] for r in readings if r[side]]
    requests = sum(w["requests"] or 0 for w in windows)
    errors = sum(w["errors"] or 0 for w in windows)
    ms = [w["response_ms"] for w in windows if w["response_ms"] is not None]
    return {"requests": requests, "errors": errors,
            "error_rate": round(errors / requests, 4) if requests else None,
            "max_response_ms": max(ms) if ms else None}


def _cohorts(steps: list[dict[str, Any]], events: list[dict[str, Any]], readings: list[dict[str, Any]],
             pb: Playbook | None) -> list[dict[str, Any]]:
    """What the users of each cohort step saw: its size, and green's and blue's errors."""
    splits = {e["step"]: e["detail"]["split"] for e in events
              if e["phase"] == "info" and isinstance(e["detail"].get("split"), dict)}
    planned: dict[str, dict[str, Any]] = {}
    if pb is not None:
        for i, planned_step in enumerate(pb.cohorts):
            split = cohort_steps.split_for(pb, i)
            planned[f"cohort.{planned_step.name}"] = {"percent": split.percent, "allow": len(split.allow)}
    out = []
    for step in steps:
        name = step["step"]
        if not name.startswith("cohort."):
            continue
        mine = [r for r in readings if r["step"] == name]
        size = splits.get(name) or planned.get(name) or {
            "percent": step["detail"].get("percent"), "allow": step["detail"].get("allow")}
        statuses = [r["status"] for r in mine]
        out.append({
            "step": name, "cohort": name.removeprefix("cohort."), "result": step["result"],
            "percent": size.get("percent"), "allow": size.get("allow"),
            "started_at": step["started_at"], "ended_at": step["ended_at"],
            "duration_s": step["duration_s"], "ended": step["detail"].get("ended"),
            "readings": len(mine),
            "by_status": {s: statuses.count(s) for s in ("pass", "fail", "inconclusive")},
            "green": _totals(mine, "green"), "blue": _totals(mine, "blue")})
    return out


def _during(steps: list[dict[str, Any]], at: datetime) -> str | None:
    """The step that was running at `at` (the last one started before it)."""
    found = None
    for step in steps:
        if step["started_at"] and step["started_at"] <= at:
            found = step["step"]
    return found


def _decision(release: Release, steps: list[dict[str, Any]], readings: list[dict[str, Any]],
              requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Why the release ended as it did: a breach, no conclusive reading, an operator, a failure."""
    reason = release.reason or ""
    failed = next((s for s in steps if s["kind"] == "forward" and s["result"] == "failed"), None)
    if release.status == "released":
        kind = "released"
    elif release.status in ("running", "rolling_back") and not reason:
        kind = "in progress"
    elif release.status == "refused":
        kind = "refused"
    elif release.ended_by is not None:
        kind = release.ended_by.replace("_", " ")
    # Releases the journal kept before it recorded what ended them: read from their reason.
    elif "gate breach" in reason:
        kind = "breach"
    elif "no gate reading was conclusive" in reason:
        kind = "inconclusive"
    elif (release.status == "aborted" or "operator" in reason
          or re.search(r"\b(abort|rollback) requested", reason)):
        kind = "operator"
    else:
        kind = "step failed"
    decisive: list[int] = []
    if failed and kind in ("breach", "inconclusive"):
        mine = [r for r in readings if r["step"] == failed["step"]]
        if kind == "inconclusive":
            decisive = [r["n"] for r in mine]
        else:  # the failing readings the engine counted: a pass resets the count, no data does not
            for r in reversed(mine):
                if r["status"] == "pass":
                    break
                if r["status"] == "fail":
                    decisive.insert(0, r["n"])
    at = failed["ended_at"] if failed else None
    traffic = next((s for s in steps if s["step"] == "rollback.traffic" and s["result"] == "done"), None)
    return {
        "kind": kind, "status": release.status, "reason": release.reason,
        "step": failed["step"] if failed else None, "at": at, "decisive_readings": decisive,
        "users_on_blue_after_s": _seconds(at, traffic["ended_at"]) if traffic and at else None,
        "operator_requests": [{**r, "during": _during(steps, r["requested_at"])} for r in requests],
    }


def _delta(journal: Journal, release_id: int, steps: list[dict[str, Any]], events: list[dict[str, Any]],
           pb: Playbook | None) -> dict[str, Any]:
    """The changes captured, and what the rollback and later replays did with them."""
    shown: dict[str, Any] = deltas.show(journal, release_id) if journal.capture(release_id) else {}
    db = next((s for s in steps if s["step"] == "rollback.database"), None)
    done = db["detail"] if db and db["result"] == "done" else {}
    side_rows = done.get("side_effect_rows")
    reconciliation = done.get("reconciliation")
    if reconciliation is None and side_rows and pb is not None:
        reconciliation = str(deltas.reconciliation_file(pb, release_id))
    replays = [{"at": e["at"], **{k: e["detail"].get(k) for k in (
        "by", "into", "on_conflict", "applied", "conflicts", "side_effect_rows", "reconciliation",
        "summary", "error")}, "conflict_list": e["detail"].get("conflict_list", [])}
        for e in events if e["phase"] == "info" and e["step"] == "delta.replay"]
    return {
        "captured": bool(shown), "mode": shown.get("mode"), "status": shown.get("status"),
        "problem": shown.get("problem"), "changes": shown.get("changes", 0),
        "transactions": shown.get("transactions", 0),
        "first_change_at": shown.get("first_change_at"), "last_change_at": shown.get("last_change_at"),
        "tables": shown.get("tables", {}), "excluded": shown.get("excluded"),
        "rollback": {"mode": done.get("mode"), "action": done.get("action"), "pause_ms": done.get("pause_ms"),
                     "replayed": done.get("replayed"), "conflicts": done.get("conflicts"),
                     "side_effect_rows": side_rows, "reconciliation": reconciliation,
                     "summary": done.get("summary"), "kept_as": done.get("kept_as"),
                     "conflict_list": done.get("conflict_list", [])} if done else None,
        "replays": replays,
    }


def build(journal: Journal, release_id: int, personal: Iterable[str] = ()) -> dict[str, Any]:
    """The report of one release as a JSON-ready dict, personal data masked, secrets redacted.

    `personal`: columns to mask besides those the release's playbook marks (table.column).
    """
    release = journal.get(release_id)
    pb, marked = _playbook(release)
    masked = sorted(set(marked) | set(personal))
    events = journal.events(release_id)
    start = release.started_at
    last = max((e["at"] for e in events), default=start)
    ended = release.finished_at or (None if release.open and release.status != "aborted" else last)
    lock = journal.lock_holder(release.app) if release.open else {}
    alive = bool(lock.get("alive") and lock.get("release_id") == release.id)
    steps = _steps(events, release, pb, start, alive)
    readings = _readings(events, start)
    code = STATUS_EXIT_CODES.get(release.status)
    data = {
        "schema": SCHEMA,
        "release": {
            "id": release.id, "app": release.app, "version": release.version,
            "from_version": release.from_version, "started_by": release.started_by,
            "started_at": start, "ended_at": ended, "duration_s": _seconds(start, ended),
            "status": release.status, "reason": release.reason, "exit_code": code,
            "exit_meaning": MEANING.get(release.status, release.status),
            "playbook": release.playbook_path,
            # Whether a deployctl process is working on it now (an open release nobody runs
            # waits for `deployctl resume` or `deployctl rollback`).
            "worked_on_by": lock.get("holder") if alive else None,
        },
        "steps": steps,
        "readings": readings,
        "decision": _decision(release, steps, readings, journal.requests(release_id)),
        "delta": _delta(journal, release_id, steps, events, pb),
        "cohorts": _cohorts(steps, events, readings, pb),
        "gates": pb.gates.model_dump(mode="json") if pb else None,
        "personal_columns": masked,
    }
    data = _jsonable(data)
    data["summary"] = narrative(data)
    values = _personal_values(journal, release_id, masked)
    safe = _mask_rows(data, frozenset(masked), values)
    return redact(_scrub(safe, values))


def _jsonable(node: Any) -> Any:
    if isinstance(node, datetime):
        return _iso(node)
    if isinstance(node, dict):
        return {str(k): _jsonable(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_jsonable(v) for v in node]
    return node


# -- personal data ------------------------------------------------------------------------------

def _personal_values(journal: Journal, release_id: int, personal: list[str]) -> set[str]:
    """The values of personal columns the delta captured: text quoting one gets it masked."""
    found: set[str] = set()
    for item in personal:
        table, column = item.rsplit(".", 1)
        found |= delta_rows.values_of(journal, release_id, table.rsplit(".", 1)[-1], column,
                                      shortest=_MIN_SCRUB_LEN, most=_MAX_SCRUB_VALUES)
    return found


def _mask_rows(node: Any, personal: frozenset[str], values: set[str]) -> Any:
    """Mask personal columns in row images that sit next to their `table` (conflict listings);
    the masked values join `values`, so text elsewhere that quotes them is masked too."""
    if isinstance(node, list):
        return [_mask_rows(v, personal, values) for v in node]
    if not isinstance(node, dict):
        return node
    table = node.get("table") if isinstance(node.get("table"), str) else None
    out = {}
    for key, value in node.items():
        if table and key in _ROW_PARTS and isinstance(value, dict):
            row = {}
            for column, v in value.items():
                masked = v is not None and is_personal(table, column, personal)
                if masked and isinstance(v, str | int | float) and len(str(v)) >= _MIN_SCRUB_LEN:
                    values.add(str(v))
                row[column] = MASK if masked else v
            out[key] = _mask_rows(row, personal, values)
        else:
            out[key] = _mask_rows(value, personal, values)
    return out


def _scrub(node: Any, values: set[str], key: str = "") -> Any:
    """Mask every personal value wherever a string quotes it (errors, summaries)."""
    if not values:
        return node
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(
        re.escape(v) for v in sorted(values, key=len, reverse=True)) + r")(?!\w)")

    def walk(item: Any, name: str) -> Any:
        if isinstance(item, str):
            # Timestamps are ours, not the users': a value like "2024" must not eat a date.
            return item if name == "at" or name.endswith("_at") else pattern.sub(MASK, item)
        if isinstance(item, dict):
            return {k: walk(v, k) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v, name) for v in item]
        return item

    return walk(node, key)


def render(data: dict[str, Any], fmt: str) -> str:
    """The report in `fmt` (md, json or html), secrets redacted once more on the way out."""
    if fmt == "json":
        text = json.dumps(data, indent=2, default=str)
    elif fmt == "html":
        text = page(data, blocks(data))
    elif fmt == "md":
        text = markdown(data)
    else:
        raise ValueError(f"unknown report format {fmt!r}: one of {', '.join(FORMATS)}")
    return redact(text)


def write(path: Path, text: str) -> None:
    """Write the report 0600: it can hold user data (replaces an existing file's mode too)."""
    write_private(path, text.encode())


def save(journal: Journal, release_id: int, workdir: Path) -> Path | None:
    """The release's HTML report written into `workdir/reports/` as it ends (0600), for the last
    notification to point at; None when it could not be (logged: a report never fails a release)."""
    path = workdir / "reports" / f"release-{release_id}.html"
    try:
        private_dir(path.parent, workdir)
        write(path, render(build(journal, release_id), "html"))
    except Exception as exc:  # noqa: BLE001
        log.warning("the release's report could not be written", path=str(path), problem=str(exc))
        return None
    return path
