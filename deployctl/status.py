"""What `deployctl status` shows of a release in a cohort step, besides its steps: the share of
users on green, the time left in the hold, the latest gate readings, and a pause waiting for an
operator (with when it rolls back on its own). All from the journal's events."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def cohort_now(events: list[dict[str, Any]], now: datetime) -> dict[str, Any] | None:
    """The cohort step the release is in (its last one started and not ended), or None."""
    phases = {e["step"]: e["phase"] for e in events if e["phase"] != "info"}
    running = [step for step, phase in phases.items() if step.startswith("cohort.") and phase == "started"]
    if not running:
        return None
    step = running[-1]
    begun = max(i for i, e in enumerate(events) if e["step"] == step and e["phase"] == "started")
    info = [e for e in events[begun:] if e["step"] == step and e["phase"] == "info"]
    split = next((e for e in reversed(info) if "split" in e["detail"]), None)
    readings = [e for e in info if "checks" in e["detail"]]
    pause = next((e for e in reversed(info) if {"paused", "pause_ended"} & set(e["detail"])), None)
    paused = pause["detail"] if pause is not None and "paused" in pause["detail"] else None
    hold = (split or {}).get("detail", {}).get("hold_s")
    last = readings[-1] if readings else None
    left = None
    if hold is not None:
        held = last["detail"].get("held_s", 0.0) if last else 0.0
        since = last["at"] if last else split["at"] if split else now
        # The hold's clock stops while paused.
        left = max(0.0, hold - held - (0.0 if paused is not None else (now - since).total_seconds()))
    return {
        "step": step,
        "percent": (split or {}).get("detail", {}).get("split", {}).get("percent"),
        "allow": (split or {}).get("detail", {}).get("split", {}).get("allow"),
        "hold_left_s": round(left, 1) if left is not None else None,
        "readings": len(readings),
        "latest": None if last is None else {"at": last["at"], "status": last["detail"].get("status"),
                                             "checks": last["detail"].get("checks", [])},
        "paused": None if paused is None else {"reason": paused["paused"],
                                               "rolls_back_at": paused.get("rolls_back_at")},
    }


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def text(now: dict[str, Any], release_id: int, version: str) -> str:
    """`now` (see cohort_now) for a person."""
    share = f"{now['percent']}% of users" if now["percent"] is not None else "users"
    lines = [f"now: {now['step']}: {share} and {now['allow'] or 0} allow-listed on version {version}"
             + (f", {_duration(now['hold_left_s'])} left in the hold" if now["hold_left_s"] is not None
                else "")]
    latest = now["latest"]
    if latest is None:
        lines.append("  no gate reading yet")
    else:
        lines.append(f"  latest gate reading ({latest['at']:%H:%M:%S}, {now['readings']} so far): "
                     f"{latest['status']}")
        lines += [f"    {c.get('name', ''):<22} {c.get('status', ''):<13} {c.get('detail', '')}"
                  for c in latest["checks"]]
    if now["paused"]:
        lines.append(f"paused, waiting for an operator: {now['paused']['reason']}; it rolls back on its own "
                     f"at {now['paused']['rolls_back_at']} unless `deployctl resume|promote|abort|rollback "
                     f"{release_id}`")
    return "\n".join(lines)
