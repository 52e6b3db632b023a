"""Replication slots that hold WAL nobody will read: a slot left behind fills the server's disk.

A slot keeps every WAL segment from its restart_lsn on, across the whole cluster, until it is
read or dropped. deployctl's capture slots (`deployctl_<app>_<release id>`) belong to a release
while the journal shows that release unfinished; any other slot that is not in use (a replica
that went away, a tool that crashed) holds WAL for no one. Everything here only reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg

from deployctl.db.capture import object_name, wal_keep_size

GIB = 1 << 30
# Without max_slot_wal_keep_size a slot may hold WAL until the disk is full.
DEFAULT_LIMIT = GIB


@dataclass(frozen=True)
class Slot:
    name: str
    type: str                  # logical or physical
    database: str | None
    active: bool
    held_bytes: int            # WAL kept for it: pg_wal_lsn_diff(current LSN, restart_lsn)
    wal_status: str | None     # `lost` once max_slot_wal_keep_size invalidated it


@dataclass(frozen=True)
class Orphan:
    slot: Slot
    why: str
    left_by_release: bool = False  # a capture slot of a release the journal shows ended


def list_slots(conn: psycopg.Connection[Any]) -> list[Slot]:
    """Every slot of the cluster with the WAL it holds."""
    # On a standby pg_current_wal_lsn() raises; the replayed position is its "now".
    rows = conn.execute(
        """SELECT slot_name, slot_type, database, active,
                  coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                                ELSE pg_current_wal_lsn() END, restart_lsn), 0)::bigint,
                  wal_status
           FROM pg_replication_slots ORDER BY slot_name""").fetchall()
    return [Slot(*row) for row in rows]


def wal_limit(conn: psycopg.Connection[Any]) -> tuple[int, str]:
    """WAL an orphan slot may hold before preflight fails, and where that limit comes from."""
    keep = wal_keep_size(conn)
    if keep is None:
        return DEFAULT_LIMIT, "max_slot_wal_keep_size is unlimited"
    # Past max_slot_wal_keep_size the server invalidates the slot: a running release's capture
    # would be lost with it, so an orphan already taking half the room is too much.
    return keep // 2, "half of max_slot_wal_keep_size"




def orphans(slots: list[Slot], app: str, open_ids: set[int] | None) -> list[Orphan]:
    """The slots no unfinished release of `app` owns and nothing else reads."""
    ours = re.compile(re.escape(object_name(app, 0)[:-1]) + r"(\d+)")
    found = []
    for slot in slots:
        match = ours.fullmatch(slot.name)
        if match is None:
            if not slot.active:
                found.append(Orphan(slot, "inactive"))
        elif open_ids is None:
            found.append(Orphan(slot, "owner unknown: the journal could not be read"))
        elif int(match.group(1)) not in open_ids:
            found.append(Orphan(slot, f"left by release #{match.group(1)}, finished or unknown "
                                      "to the journal", left_by_release=True))
    return found
