"""The words of the release report: step lines, the story, and the blocks every text format lays out.

`blocks()` turns a report dict (see report.py) into headings, paragraphs, lists and tables;
`markdown()` prints them, report_html.py makes a page of them. Nothing here reads the journal
or sees a value report.py has not masked already.
"""

from __future__ import annotations

import json
from typing import Any

from deployctl.redact import MASK


def _size(n: Any) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _pct(rate: Any) -> str:
    return "-" if rate is None else f"{rate:.2%}"


def step_summary(name: str, d: dict[str, Any]) -> str:
    """One line saying what a step that finished did, from its journal detail."""
    if name == "preflight":
        checks = d.get("checks", [])
        other = [c for c in checks if c.get("status") != "pass"]
        return f"{len(checks)} checks, " + ("all passed" if not other else "; ".join(
            f"{c.get('name')} {c.get('status')}: {c.get('message')}" for c in other))
    if name == "snapshot":
        return (f"{_size(d.get('bytes'))} in {d.get('files')} files at LSN {d.get('lsn')}, revision "
                f"{d.get('revision') or 'base'}; {d.get('capture')} capture started")
    if name == "migrate":
        return f"{d.get('from_revision') or 'base'} → {d.get('to_revision') or 'base'}"
    if name == "smoke":
        return "; ".join(f"{c.get('name')}: {'ok' if c.get('ok') else 'failed'} ({c.get('detail')})"
                         for c in d.get("checks", [])) or "no smoke checks"
    if name == "route":
        base = d.get("baselines") or {}
        return f"green at {', '.join(d.get('green', []))}, no user on it yet" + (
            "; baselines " + ", ".join(f"{k} {v}" for k, v in base.items()) if base else "")
    if name.startswith("cohort."):
        return (f"{d.get('percent')}% of users + {d.get('allow')} allow-listed; {d.get('readings')} readings "
                f"({d.get('conclusive')} conclusive) in {d.get('held_s')} s; {d.get('ended')}")
    if name == "deploy":
        return (f"green healthy after {d['healthy_after_s']} s" if "healthy_after_s" in d
                else f"green started on {len(d.get('hosts', {}))} hosts")
    if name == "rollback.blue":
        return ("blue had no earlier release to return to" if not d.get("blue") else
                f"blue ({d['blue']}) " + ("restarted" if d.get("restarted") else "was serving"))
    if name == "rollback.green":
        return "green stopped" if d.get("stopped") else "green was not running"
    if name == "finalize":
        kept = ("the delta was discarded undecoded (capture.drain: lazy)" if d.get("capture") == "discarded"
                else f"{d.get('changes_captured', 0)} changes captured")
        return (f"live: {d.get('live_version')}" + (f", stopped {d['stopped_version']}"
                                                     if d.get("stopped_version") else "") + f"; {kept}")
    if name == "rollback.traffic":
        return f"every user on blue; the switch took {d.get('switched_s')} s"
    if name == "rollback.database":
        text = f"mode {d.get('mode')}: {d.get('action')}"
        if "pause_ms" in d:
            text += (f"; writes paused {d['pause_ms']} ms, {d.get('replayed', 0)} rows replayed, "
                     f"{d.get('conflicts', 0)} conflicts, {d.get('side_effect_rows', 0)} side-effect rows "
                     "for reconciliation")
        return text
    if name == "rollback.capture":
        return f"capture {d.get('capture')}; {d.get('changes_captured', 0)} changes kept in the delta"
    return ", ".join(f"{k} {v}" for k, v in d.items() if isinstance(v, str | int | float | bool) or v is None)


def _clock(at: Any) -> str:
    """HH:MM:SS.mmm of an ISO time (the date is in the header)."""
    return str(at)[11:23] if at else "-"


def _reading_line(r: dict[str, Any]) -> str:
    """A reading in one line: its time, cohort, status and what did not pass."""
    line = f"reading #{r['n']} at {_clock(r['at'])} in cohort {r['cohort']}: {r['status']}"
    bad = [f"{c['name']}: {c['detail']}" for c in r["checks"] if c["status"] != "pass"]
    return line + (" — " + "; ".join(bad) if bad else "")


# What to do about an unfinished release nobody is working on.
NEXT = {
    "running": "run `deployctl resume {id}` to go on, or `deployctl rollback {id}`",
    "rolling_back": "run `deployctl resume {id}` to finish its rollback",
    "rollback_failed": "a human is needed: fix the cause, then run `deployctl rollback {id}`",
    "aborted": "users are on blue; finish with `deployctl rollback {id}`",
}


def narrative(data: dict[str, Any]) -> list[str]:
    """What happened, in a few sentences, for the engineer who was not watching."""
    rel, decision, delta = data["release"], data["decision"], data["delta"]
    out = [f"Release #{rel['id']} of {rel['app']} {rel['version']}"
           + (f" (from {rel['from_version']})" if rel["from_version"] else " (first release)")
           + f" was started by {rel['started_by']}; outcome: {rel['status']}"
           + (f" after {rel['duration_s']:.1f} s" if rel["duration_s"] is not None else "") + "."]
    if rel["status"] in NEXT and not rel["worked_on_by"]:
        where = next((s["step"] for s in reversed(data["steps"])
                      if s["result"] in ("interrupted", "failed")), None)
        out.append("No deployctl process is working on it" + (f" (it stopped in {where})" if where else "")
                   + ": " + NEXT[rel["status"]].format(id=rel["id"]) + ".")
    elif rel["worked_on_by"]:
        out.append(f"{rel['worked_on_by']} is working on it now.")
    reached = [c for c in data["cohorts"] if c["result"] not in ("skipped", "pending")]
    if reached:
        last = reached[-1]
        out.append(f"Users reached green up to cohort {last['cohort']} ({last['percent']}% of users"
                   f" + {last['allow']} allow-listed); {len(data['readings'])} gate readings were taken.")
    for r in decision["operator_requests"]:
        out.append(f"{r['requested_by']} requested `{r['command']}` at {_clock(r['requested_at'])}"
                   + (f" during {r['during']}" if r["during"] else "") + ".")
    kind = decision["kind"]
    if kind == "breach":
        decisive = [r for r in data["readings"] if r["n"] in decision["decisive_readings"]]
        out.append(f"The gates breached in {decision['step']}: {len(decisive)} failing reading(s) in a row"
                   + (f", the last at {_clock(decisive[-1]['at'])}" if decisive else "")
                   + f" ({decision['reason']}); deployctl rolled back.")
    elif kind == "inconclusive":
        out.append(f"No gate reading of {decision['step']} was conclusive; deployctl rolled back "
                   "(could not measure is not a pass).")
    elif kind in ("step failed", "operator", "refused") and decision["reason"]:
        out.append(f"Why: {decision['reason']}.")
    if decision["users_on_blue_after_s"] is not None:
        out.append(f"Every user was back on blue {decision['users_on_blue_after_s']:.2f} s after the "
                   "decision.")
    back = delta["rollback"]
    if back:
        line = f"Database: {back['mode']} — {back['action']}"
        if back.get("pause_ms") is not None:
            line += (f"; writes paused {back['pause_ms']} ms, {back['replayed']} rows replayed, "
                     f"{back['conflicts']} conflicts")
        if back.get("side_effect_rows"):
            line += (f"; {back['side_effect_rows']} side-effect rows wait for reconciliation in "
                     f"{back['reconciliation']}")
        out.append(line + ".")
    if delta["captured"]:
        out.append(f"Users made {delta['changes']} changes in {delta['transactions']} transactions while "
                   f"the release ran ({delta['mode']} capture, {delta['status']}).")
    for replay in delta["replays"]:
        out.append(f"Later, {replay['by']} replayed the delta into {replay['into']} "
                   f"(on conflict: {replay['on_conflict']}): {replay['summary']}.")
    return out


Block = tuple[str, Any]


def blocks(data: dict[str, Any]) -> list[Block]:
    """The report as headings, paragraphs, lists and tables, for any text format."""
    rel, decision, delta = data["release"], data["decision"], data["delta"]
    out: list[Block] = [("h1", f"Release #{rel['id']}: {rel['app']} {rel['version']} — {rel['status']}")]
    code = rel["exit_code"]
    out.append(("facts", [
        ("app", rel["app"]), ("version", rel["version"]), ("from version", rel["from_version"] or "none"),
        ("started by", rel["started_by"]), ("started", rel["started_at"]),
        ("ended", rel["ended_at"] or "not yet"),
        ("duration", f"{rel['duration_s']:.1f} s" if rel["duration_s"] is not None else "-"),
        ("outcome", rel["status"] + (f": {rel['exit_meaning']}" if rel["exit_meaning"] != rel["status"]
                                     else "") + (f" (exit code {code})" if code is not None else "")),
        ("reason", rel["reason"] or "-"), ("playbook", rel["playbook"])]))
    out += [("h2", "What happened"), ("ul", data["summary"])]

    rows = []
    for s in data["steps"]:
        what = s["error"] if s["result"] == "failed" else s["summary"]
        rows.append([_clock(s["started_at"]), _clock(s["ended_at"]),
                     f"{s['duration_s']:.3f} s" if s["duration_s"] is not None else "-",
                     s["step"], s["result"] + (f" ({s['attempts']} attempts)" if s["attempts"] > 1 else ""),
                     what or ""])
    out += [("h2", "Timeline (UTC)"),
            ("table", (["start", "end", "duration", "step", "result", "what it did / error"], rows))]

    out.append(("h2", "Gate readings"))
    if data["readings"]:
        out.append(("chart", None))
        rows = []
        for r in data["readings"]:
            g, b = r["green"] or {}, r["blue"] or {}
            rows.append([str(r["n"]), _clock(r["at"]), r["cohort"], r["status"],
                         f"{g.get('requests', '-')}", f"{g.get('errors', '-')}", _pct(g.get("error_rate")),
                         _ms(g.get("response_ms")), f"{b.get('requests', '-')}", f"{b.get('errors', '-')}",
                         _pct(b.get("error_rate")), _ms(b.get("response_ms")),
                         "; ".join(f"{c['name']} {c['status']}: {c['detail']}" for c in r["checks"])])
        out.append(("table", (["#", "time", "cohort", "status", "green req", "green err", "green rate",
                               "green ms", "blue req", "blue err", "blue rate", "blue ms", "checks"], rows)))
    else:
        out.append(("p", "No gate readings: the release moved no users in cohort steps."))

    out.append(("h2", "Decision"))
    items = [f"{decision['kind']}: {decision['reason'] or 'every step passed'}"]
    if decision["step"]:
        items.append(f"decided in step {decision['step']} at {_clock(decision['at'])}")
    items += [_reading_line(r) for r in data["readings"] if r["n"] in decision["decisive_readings"]]
    if decision["users_on_blue_after_s"] is not None:
        items.append(f"every user back on blue {decision['users_on_blue_after_s']:.3f} s later")
    items += [f"operator: {r['requested_by']} asked `{r['command']}` at {_clock(r['requested_at'])}"
              f" during {r['during'] or '-'} (carried out at {_clock(r['handled_at'])})"
              for r in decision["operator_requests"]]
    out.append(("ul", items))

    out += _delta_blocks(delta, data["personal_columns"])

    out.append(("h2", "What users saw"))
    if data["cohorts"]:
        out.append(("table", (["cohort", "result", "users on green", "readings", "pass/fail/inconclusive",
                               "green requests", "green error rate", "green max ms", "blue requests",
                               "blue error rate", "blue max ms"], [
            [c["cohort"], c["result"] + (f" ({c['ended']})" if c["ended"] else ""),
             f"{c['percent']}% + {c['allow']} allow-listed", str(c["readings"]),
             "/".join(str(c["by_status"][s]) for s in ("pass", "fail", "inconclusive")),
             str(c["green"]["requests"]), _pct(c["green"]["error_rate"]), _ms(c["green"]["max_response_ms"]),
             str(c["blue"]["requests"]), _pct(c["blue"]["error_rate"]), _ms(c["blue"]["max_response_ms"])]
            for c in data["cohorts"]])))
    else:
        out.append(("p", "Every user moved at once at finalize (no cohort steps)."))
    return out


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}"


def _conflict_rows(conflicts: list[dict[str, Any]]) -> Block:
    return ("table", (["table", "kind", "key", "delta's values", "database's values", "resolution"], [
        [str(c.get("table")), str(c.get("kind")), json.dumps(c.get("key"), default=str),
         json.dumps(c.get("ours"), default=str), json.dumps(c.get("theirs"), default=str),
         str(c.get("resolution"))] for c in conflicts]))


def _delta_blocks(delta: dict[str, Any], personal: list[str]) -> list[Block]:
    out: list[Block] = [("h2", "Delta: what users changed meanwhile")]
    if not delta["captured"]:
        return out + [("p", "No delta: the release stopped before its snapshot.")]
    out.append(("p", f"{delta['changes']} changes in {delta['transactions']} transactions, "
                     f"{delta['mode']} capture, {delta['status']}"
                     + (f" — problem: {delta['problem']}" if delta["problem"] else "")
                     + (f"; first at {_clock(delta['first_change_at'])}, last at "
                        f"{_clock(delta['last_change_at'])}" if delta["first_change_at"] else "") + "."))
    ops = ("insert", "update", "delete", "truncate")
    out.append(("table", (["table", *ops], [[t, *(str(per.get(op, 0)) for op in ops)]
                                           for t, per in delta["tables"].items()])))
    excluded = delta["excluded"] or {}
    out.append(("p", f"Left out: {excluded.get('in_snapshot', 0)} transactions already in the snapshot, "
                     f"{excluded.get('migrations', 0)} migrations, {excluded.get('own_replays', 0)} "
                     "deployctl replays."))
    back = delta["rollback"]
    if back:
        facts = [("rollback", f"{back['mode']}: {back['action']}")]
        if back.get("pause_ms") is not None:
            facts += [("writes paused", f"{back['pause_ms']} ms"), ("replayed", str(back["replayed"])),
                      ("conflicts", str(back["conflicts"]))]
        facts += [("side-effect rows waiting for reconciliation", str(back.get("side_effect_rows") or 0)),
                  ("reconciliation file", back.get("reconciliation") or "-")]
        if back.get("kept_as"):
            facts.append(("failed database kept as", back["kept_as"]))
        if back.get("summary"):
            facts.append(("replay", back["summary"]))
        out.append(("facts", facts))
        if back["conflict_list"]:
            out += [("h3", "Conflicts of the rollback's replay"), _conflict_rows(back["conflict_list"])]
    for replay in delta["replays"]:
        out += [("h3", f"Replay at {replay['at']} by {replay['by']}"),
                ("p", f"Into {replay['into']}, on conflict {replay['on_conflict']}: {replay['summary']}"
                      + (f" — {replay['error']}" if replay.get("error") else "")
                      + (f"; reconciliation file {replay['reconciliation']}" if replay["reconciliation"]
                         else "") + ".")]
        if replay["conflict_list"]:
            out.append(_conflict_rows(replay["conflict_list"]))
    if personal:
        out.append(("p", f"Personal columns masked as {MASK}: {', '.join(personal)}."))
    return out


def _md_cell(value: Any) -> str:
    text = str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return f"**{text}**" if text in ("failed", "fail") else text


def markdown(data: dict[str, Any]) -> str:
    lines: list[str] = []
    for kind, body in blocks(data):
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + body.replace("\n", " "), ""]
        elif kind == "p":
            lines += [body, ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in body] + [""]
        elif kind == "facts":
            lines += ["| | |", "|---|---|"] + [f"| {k} | {_md_cell(v)} |" for k, v in body] + [""]
        elif kind == "table":
            headers, rows = body
            lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows] + [""]
    return "\n".join(lines)
