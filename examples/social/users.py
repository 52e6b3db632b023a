"""Simulated users of the sample app, and the check that none of their actions was lost.

Each worker plays a few users: it creates them, posts messages with unique bodies, likes and
unlikes, edits its profile name, deletes some of its own messages and, on version 2, sets a bio
and reacts. Every request goes to one of the URLs it is given (blue and green both get traffic).

What the server acknowledged (a 2xx answer) is recorded with what it acknowledged: ids, bodies,
names, and the order of each worker's actions (a user belongs to one worker, so that is the
order per user). Nothing is retried: a write whose answer was lost may or may not have happened,
so it is recorded as not acknowledged, with how it ended:

- ``refused``: it certainly did not happen (connection refused, or a 4xx: the app checked it
  and rolled back);
- ``failed``: the app answered 5xx. Usually nothing happened, but a 503 can also hide a COMMIT
  whose reply the app lost while its connection was being cut, so it *may* have happened;
- ``unknown``: no answer at all (timeout, connection reset): it may have happened.

`check()` then compares a database with what was acknowledged, row by row: every acknowledged
user, message and like is there exactly once, what was acknowledged deleted or unliked is gone,
and each user's name is the last acknowledged edit (writes that may have happened widen what is
accepted, they never count as acknowledged).

Usage::

    python examples/social/users.py --url http://127.0.0.1:18001 --url http://127.0.0.1:18002 \\
        --duration 10 --workers 6 --acks acks.jsonl [--unknown maybe.jsonl]

From Python: ``run_users(urls, stop)`` runs until the event is set and returns the
acknowledged actions; `Traffic` gives the refused and unknown ones too, and can add a URL once
it answers ``/health``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("create_user", "create_message", "like", "unlike", "edit_name", "delete_message",
         "set_bio", "react")
V2_ONLY = frozenset({"set_bio", "react"})
# How often each action is picked when it is possible (per worker, per step).
WEIGHTS = {"create_user": 1, "create_message": 5, "like": 5, "unlike": 2, "edit_name": 2,
           "delete_message": 1, "set_bio": 1, "react": 3}
USERS_PER_WORKER = 3
REQUEST_TIMEOUT = 10.0
DOWN_FOR = 0.3  # seconds a URL that refused a connection is left alone
EMOJIS = ("👍", "🎉", "😂", "❤️", "🚀")


@dataclass
class Action:
    """One write a simulated user sent, and how it ended."""

    kind: str
    worker: int
    seq: int                      # order among this worker's actions (so: per user)
    url: str
    outcome: str                  # ack | refused | failed | unknown
    status: int | None            # HTTP status, None when nothing answered
    version: str | None           # the app version that answered ("1", "2")
    sent: float                   # wall-clock times, to line up with the journal's events
    at: float
    user_id: int | None = None
    message_id: int | None = None
    reaction_id: int | None = None
    email: str | None = None
    name: str | None = None
    body: str | None = None
    bio: str | None = None
    emoji: str | None = None
    error: str | None = None

    @property
    def acknowledged(self) -> bool:
        return self.outcome == "ack"

    @property
    def maybe_applied(self) -> bool:
        """Not acknowledged, but it may have happened all the same."""
        return self.outcome in ("failed", "unknown")


@dataclass
class _Answer:
    outcome: str
    status: int | None
    version: str | None
    body: dict[str, Any]
    error: str | None = None


def _request(method: str, url: str, payload: dict[str, Any] | None = None) -> _Answer:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT) as resp:  # noqa: S310 (http only)
            raw = resp.read()
            return _Answer("ack", resp.status, _version(resp.headers.get("Server")),
                           json.loads(raw) if raw else {})
    except urllib.error.HTTPError as exc:
        exc.read()
        outcome = "refused" if exc.code < 500 else "failed"
        return _Answer(outcome, exc.code, _version(exc.headers.get("Server")), {}, f"HTTP {exc.code}")
    except urllib.error.URLError as exc:
        # Refused: the request never reached a server. Anything else: it may have.
        refused = isinstance(exc.reason, ConnectionRefusedError)
        return _Answer("refused" if refused else "unknown", None, None, {}, _name(exc.reason))
    except (OSError, http.client.HTTPException) as exc:  # timeout or reset mid-answer
        return _Answer("unknown", None, None, {}, _name(exc))


def _name(error: object) -> str:
    """`connection refused`, `connection reset`, `timed out`: what went wrong, in words."""
    if isinstance(error, str):
        return error
    # RemoteDisconnected is a ConnectionResetError: name it first.
    words = {http.client.RemoteDisconnected: "connection closed", ConnectionResetError: "connection reset",
             ConnectionRefusedError: "connection refused", TimeoutError: "timed out"}
    return next((text for kind, text in words.items() if isinstance(error, kind)),
                type(error).__name__)


def _version(server: str | None) -> str | None:
    # The app answers with `Server: social/<version>`.
    return server.rsplit("/", 1)[-1] if server and server.startswith("social/") else None


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:  # noqa: S310
            return int(resp.status) == 200
    except (OSError, http.client.HTTPException):
        return False


class Traffic:
    """Simulated users sending writes to a changing set of URLs until stopped."""

    def __init__(self, urls: Iterable[str] = (), workers: int = 6, seed: int | None = None) -> None:
        self.tag = uuid.uuid4().hex[:8]  # unique bodies, names and emails across runs
        self.workers = workers
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._urls: list[str] = [u.rstrip("/") for u in urls]
        self._down_until: dict[str, float] = {}
        self._versions: dict[str, str] = {}
        self._pool: set[int] = set()       # message ids anyone may like or react to
        self.actions: list[Action] = []    # every write sent, whatever its outcome
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # -- the URLs ------------------------------------------------------------------------------

    def add_url(self, url: str) -> None:
        with self._lock:
            if url.rstrip("/") not in self._urls:
                self._urls.append(url.rstrip("/"))

    def remove_url(self, url: str) -> None:
        with self._lock:
            if url.rstrip("/") in self._urls:
                self._urls.remove(url.rstrip("/"))

    def add_when_healthy(self, url: str, interval: float = 0.05) -> threading.Thread:
        """Start sending to `url` as soon as it answers /health (polled in the background)."""

        def watch() -> None:
            while not self._stop.is_set():
                if healthy(url, timeout=1.0):
                    self.add_url(url)
                    return
                self._stop.wait(interval)

        thread = threading.Thread(target=watch, name=f"watch {url}", daemon=True)
        thread.start()
        return thread

    def _pick_url(self, rnd: random.Random) -> str | None:
        now = time.monotonic()
        with self._lock:
            up = [u for u in self._urls if self._down_until.get(u, 0.0) <= now]
        return rnd.choice(up) if up else None

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the workers in the background; `stop()` ends them."""
        self._stop.clear()
        self._load_pool()
        for number in range(self.workers):
            rnd = random.Random(self._random.random())
            thread = threading.Thread(target=_Worker(self, number, rnd).run, name=f"user-{number}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> list[Action]:
        """Stop the workers (each finishes the request it has in flight); the acknowledged actions."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=REQUEST_TIMEOUT + 5)
        self._threads.clear()
        return self.acknowledged()

    def run(self, stop: threading.Event) -> list[Action]:
        """Run until `stop` is set; return the acknowledged actions."""
        self.start()
        stop.wait()
        return self.stop()

    def _load_pool(self) -> None:
        """Messages that exist already (the feed) can be liked too."""
        for url in list(self._urls):
            try:
                with urllib.request.urlopen(f"{url}/feed", timeout=5) as resp:  # noqa: S310
                    for message in json.loads(resp.read())["messages"]:
                        self._pool.add(int(message["id"]))
                return
            except (OSError, ValueError, KeyError, http.client.HTTPException):
                continue

    def _record(self, action: Action) -> None:
        with self._lock:
            self.actions.append(action)
            if action.version and action.status is not None:
                self._versions[action.url] = action.version
            if action.outcome == "refused" and action.status is None:
                self._down_until[action.url] = time.monotonic() + DOWN_FOR

    def version_of(self, url: str) -> str | None:
        with self._lock:
            return self._versions.get(url)

    # -- what happened -------------------------------------------------------------------------

    def acknowledged(self) -> list[Action]:
        with self._lock:
            return [a for a in self.actions if a.acknowledged]

    def maybe_applied(self) -> list[Action]:
        with self._lock:
            return [a for a in self.actions if a.maybe_applied]

    def tally(self) -> dict[str, dict[str, int]]:
        """Counts per outcome and kind: {"ack": {"like": 12, …}, "failed": {…}, …}."""
        out: dict[str, Counter[str]] = {}
        with self._lock:
            for a in self.actions:
                out.setdefault(a.outcome, Counter())[a.kind] += 1
        return {outcome: dict(sorted(kinds.items())) for outcome, kinds in sorted(out.items())}


class _Worker:
    """One thread: a few users of its own, one request at a time."""

    def __init__(self, traffic: Traffic, number: int, rnd: random.Random) -> None:
        self.traffic, self.number, self.rnd = traffic, number, rnd
        self.seq = 0
        self.counter = 0
        self.users: list[int] = []
        self.messages: dict[int, int] = {}      # own message id -> author
        self.likes: set[tuple[int, int]] = set()

    def unique(self, what: str) -> str:
        self.counter += 1
        return f"sim {self.traffic.tag} w{self.number} {what} {self.counter}"

    def run(self) -> None:
        stop = self.traffic._stop
        while not stop.is_set():
            url = self.traffic._pick_url(self.rnd)
            if url is None:
                stop.wait(0.05)
                continue
            self.step(url)
            stop.wait(self.rnd.uniform(0.002, 0.02))  # a user's think time, kept short

    def possible(self, url: str) -> list[str]:
        if not self.users:
            return ["create_user"]
        kinds = ["create_message", "edit_name"]
        if len(self.users) < USERS_PER_WORKER:
            kinds.append("create_user")
        if self.traffic._pool:
            kinds.append("like")
        if self.likes:
            kinds.append("unlike")
        if self.messages:
            kinds.append("delete_message")
        if self.traffic.version_of(url) == "2":
            kinds.append("set_bio")
            if self.traffic._pool:
                kinds.append("react")
        return kinds

    def step(self, url: str) -> None:
        kinds = self.possible(url)
        kind = self.rnd.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]
        getattr(self, kind)(url)

    def send(self, kind: str, url: str, method: str, path: str, payload: dict[str, Any] | None,
             **known: Any) -> Action:
        self.seq += 1
        sent = time.time()
        answer = _request(method, url + path, payload)
        action = Action(kind, self.number, self.seq, url, answer.outcome, answer.status,
                        answer.version, sent, time.time(), error=answer.error, **known)
        created = {"create_user": "user_id", "create_message": "message_id", "react": "reaction_id"}
        if answer.outcome == "ack" and "id" in answer.body and kind in created:
            setattr(action, created[kind], int(answer.body["id"]))
        self.traffic._record(action)
        return action

    def a_user(self) -> int:
        return self.rnd.choice(self.users)

    def a_message(self) -> int:
        with self.traffic._lock:
            return self.rnd.choice(sorted(self.traffic._pool))

    # -- the actions -------------------------------------------------------------------------

    def create_user(self, url: str) -> None:
        n = len(self.users) + 1
        email = f"sim-{self.traffic.tag}-w{self.number}-u{n}-{self.counter}@example.com"
        name = self.unique("name")
        done = self.send("create_user", url, "POST", "/users", {"name": name, "email": email},
                         email=email, name=name)
        if done.acknowledged and done.user_id is not None:
            self.users.append(done.user_id)

    def create_message(self, url: str) -> None:
        user, body = self.a_user(), self.unique("message")
        done = self.send("create_message", url, "POST", "/messages", {"user_id": user, "body": body},
                         user_id=user, body=body)
        if done.acknowledged and done.message_id is not None:
            self.messages[done.message_id] = user
            with self.traffic._lock:
                self.traffic._pool.add(done.message_id)

    def like(self, url: str) -> None:
        user, message = self.a_user(), self.a_message()
        done = self.send("like", url, "POST", "/likes", {"user_id": user, "message_id": message},
                         user_id=user, message_id=message)
        if done.acknowledged:
            self.likes.add((user, message))

    def unlike(self, url: str) -> None:
        user, message = self.rnd.choice(sorted(self.likes))
        done = self.send("unlike", url, "DELETE", "/likes", {"user_id": user, "message_id": message},
                         user_id=user, message_id=message)
        if done.acknowledged:
            self.likes.discard((user, message))

    def edit_name(self, url: str) -> None:
        user, name = self.a_user(), self.unique("name")
        self.send("edit_name", url, "PATCH", f"/users/{user}", {"name": name}, user_id=user, name=name)

    def delete_message(self, url: str) -> None:
        message = self.rnd.choice(sorted(self.messages))
        done = self.send("delete_message", url, "DELETE", f"/messages/{message}", None,
                         user_id=self.messages[message], message_id=message)
        if done.acknowledged or done.status == 404:
            del self.messages[message]
            with self.traffic._lock:
                self.traffic._pool.discard(message)

    def set_bio(self, url: str) -> None:
        user, bio = self.a_user(), self.unique("bio")
        self.send("set_bio", url, "PATCH", f"/users/{user}", {"bio": bio}, user_id=user, bio=bio)

    def react(self, url: str) -> None:
        user, message, emoji = self.a_user(), self.a_message(), self.rnd.choice(EMOJIS)
        self.send("react", url, "POST", "/reactions", {"user_id": user, "message_id": message,
                                                       "emoji": emoji},
                  user_id=user, message_id=message, emoji=emoji)


def run_users(urls: Iterable[str], stop: threading.Event, workers: int = 6) -> list[Action]:
    """Simulated users against `urls` until `stop` is set; the acknowledged actions."""
    return Traffic(urls, workers).run(stop)


# -- the check ---------------------------------------------------------------------------------

@dataclass
class Check:
    """A database compared with what users were told, row by row."""

    compared: dict[str, tuple[int, int]] = field(default_factory=dict)  # what: (expected, found)
    problems: list[str] = field(default_factory=list)
    not_in_schema: dict[str, int] = field(default_factory=dict)  # acknowledged, table/column absent

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        out = [f"{what:<36} expected {want:>5}, found {got:>5}" + ("" if want == got else "  <-- !")
               for what, (want, got) in self.compared.items()]
        out += [f"{what:<36} {n:>5} acknowledged; not in this schema (the delta keeps them)"
                for what, n in self.not_in_schema.items()]
        return out


def _ordered(actions: Iterable[Action]) -> list[Action]:
    return sorted(actions, key=lambda a: (a.worker, a.seq))


def expected_state(actions: Iterable[Action]) -> dict[str, Any]:
    """What the database must hold after these actions (refused ones are ignored).

    A write that may have happened leaves both answers open until a later acknowledged write
    settles the row again.
    """
    users: dict[int, str] = {}                       # acknowledged user -> email
    names: dict[int, set[str]] = {}                  # user -> acceptable names
    bodies: dict[str, tuple[int, int] | None] = {}   # body -> (id, author) if acknowledged
    deleted: dict[int, str] = {}                     # message id -> "yes" | "maybe"
    likes: dict[tuple[int, int], str] = {}           # (user, message) -> yes | no | maybe
    emails: set[str] = set()
    for a in _ordered(actions):
        if a.outcome == "refused":
            continue
        sure = a.acknowledged
        if a.kind == "create_user" and a.email:
            emails.add(a.email)
            if sure and a.user_id is not None and a.name is not None:
                users[a.user_id] = a.email
                names[a.user_id] = {a.name}
        elif a.kind == "edit_name" and a.user_id is not None and a.name is not None:
            if sure:
                names[a.user_id] = {a.name}
            else:
                names.setdefault(a.user_id, set()).add(a.name)
        elif a.kind == "create_message" and a.body:
            bodies[a.body] = (a.message_id, a.user_id) if sure else None  # type: ignore[assignment]
        elif a.kind == "delete_message" and a.message_id is not None:
            if sure or deleted.get(a.message_id) != "yes":
                deleted[a.message_id] = "yes" if sure else "maybe"
        elif a.kind in ("like", "unlike") and a.user_id is not None and a.message_id is not None:
            key, want = (a.user_id, a.message_id), "yes" if a.kind == "like" else "no"
            if sure:
                likes[key] = want
            elif likes.get(key) != want:
                likes[key] = "maybe"
    # A deleted message takes its likes with it (ON DELETE CASCADE), whatever their order.
    for (user, message), state in list(likes.items()):
        gone = deleted.get(message)
        if gone == "yes":
            likes[(user, message)] = "no"
        elif gone == "maybe" and state == "yes":
            likes[(user, message)] = "maybe"
    return {"users": users, "names": names, "bodies": bodies, "deleted": deleted, "likes": likes,
            "emails": emails}


def check(conn: Any, actions: Iterable[Action]) -> Check:
    """Compare the database behind `conn` (a psycopg connection) with `actions`, row by row."""
    actions = list(actions)
    want = expected_state(actions)
    result = Check()
    problems = result.problems

    def compare(what: str, expected: int, found: int) -> None:
        result.compared[what] = (expected, found)

    # Users: each acknowledged one exactly once, under its email, with its last acknowledged name.
    rows = conn.execute("SELECT id, name, email FROM users WHERE email = ANY(%s)",
                        (sorted(want["emails"]),)).fetchall()
    by_email: dict[str, list[tuple[int, str]]] = {}
    for user_id, name, email in rows:
        by_email.setdefault(email, []).append((user_id, name))
    present = 0
    for user_id, email in want["users"].items():
        found = by_email.get(email, [])
        if [u for u, _ in found] == [user_id]:
            present += 1
        else:
            problems.append(f"user {user_id} <{email}>: expected once, found ids {[u for u, _ in found]}")
    compare("acknowledged users present once", len(want["users"]), present)
    duplicated = [e for e, found in by_email.items() if len(found) > 1]
    problems += [f"user <{e}> is there {len(by_email[e])} times" for e in duplicated]
    names_right = 0
    for user_id, email in want["users"].items():
        found = by_email.get(email, [])
        if found and found[0][1] in want["names"][user_id]:
            names_right += 1
        elif found:
            problems.append(f"user {user_id}: name {found[0][1]!r}, expected one of "
                            f"{sorted(want['names'][user_id])}")
    compare("names = last acknowledged edit", len(want["users"]), names_right)

    # Messages: counted by their unique body.
    rows = conn.execute("SELECT body, id, user_id FROM messages WHERE body = ANY(%s)",
                        (sorted(want["bodies"]),)).fetchall()
    by_body: dict[str, list[tuple[int, int]]] = {}
    for body, message_id, user_id in rows:
        by_body.setdefault(body, []).append((message_id, user_id))
    kept = {b: ids for b, ids in want["bodies"].items()
            if ids is not None and ids[0] not in want["deleted"]}
    gone = {b: ids for b, ids in want["bodies"].items()
            if ids is not None and want["deleted"].get(ids[0]) == "yes"}
    found_kept = sum(1 for b, ids in kept.items() if by_body.get(b) == [ids])
    problems += [f"message {ids[0]} {b!r}: expected once, found {by_body.get(b, [])}"
                 for b, ids in kept.items() if by_body.get(b) != [ids]]
    compare("acknowledged messages present once", len(kept), found_kept)
    still_there = [b for b in gone if b in by_body]
    problems += [f"message {gone[b][0]} {b!r} was acknowledged deleted but is there" for b in still_there]
    compare("acknowledged deletes absent", len(gone), len(gone) - len(still_there))
    dups = {b: found for b, found in by_body.items() if len(found) > 1}
    problems += [f"message {b!r} is there {len(found)} times" for b, found in dups.items()]
    compare("duplicated messages", 0, len(dups))

    # Likes: per (user, message), the last acknowledged like or unlike.
    sim_users = sorted({u for u, _ in want["likes"]})
    rows = conn.execute("SELECT user_id, message_id FROM likes WHERE user_id = ANY(%s)",
                        (sim_users,)).fetchall()
    liked = {(u, m) for u, m in rows}
    must = {k for k, v in want["likes"].items() if v == "yes"}
    must_not = {k for k, v in want["likes"].items() if v == "no"}
    compare("acknowledged likes present", len(must), len(must & liked))
    compare("acknowledged unlikes absent", len(must_not), len(must_not - liked))
    problems += [f"like {k} was acknowledged but is missing" for k in sorted(must - liked)]
    problems += [f"like {k} was acknowledged undone but is there" for k in sorted(must_not & liked)]
    stray = liked - set(want["likes"])
    problems += [f"like {k} was never sent by these users" for k in sorted(stray)]

    # Version 2's additions, where this database has them.
    acked = [a for a in actions if a.acknowledged]
    reactions = [a for a in acked if a.kind == "react"]
    bios = [a for a in acked if a.kind == "set_bio"]
    has_reactions = conn.execute("SELECT to_regclass('reactions') IS NOT NULL").fetchone()[0]
    if reactions and has_reactions:
        ids = [a.reaction_id for a in reactions]
        found_ids = {r[0] for r in conn.execute("SELECT id FROM reactions WHERE id = ANY(%s)",
                                                (ids,)).fetchall()}
        compare("acknowledged reactions present", len(ids), len(found_ids))
        problems += [f"reaction {i} was acknowledged but is missing" for i in ids if i not in found_ids]
    elif reactions:
        result.not_in_schema["reactions"] = len(reactions)
    has_bio = conn.execute("SELECT 1 FROM information_schema.columns WHERE table_name = 'users' "
                           "AND column_name = 'bio' AND table_schema = current_schema()").fetchone()
    if bios and not has_bio:
        result.not_in_schema["users.bio values"] = len(bios)
    return result


# -- the command line --------------------------------------------------------------------------

def write_jsonl(path: Path, actions: Iterable[Action]) -> None:
    """JSON lines, created 0600: they name users and hold what they wrote."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as out:
        for action in actions:
            out.write(json.dumps(asdict(action), ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[Action]:
    return [Action(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", action="append", required=True,
                        help="base URL of a running version (repeat: every URL gets traffic)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run (default 10)")
    parser.add_argument("--workers", type=int, default=6, help="concurrent users (default 6)")
    parser.add_argument("--acks", type=Path, help="write the acknowledged actions here (JSON lines)")
    parser.add_argument("--unknown", type=Path,
                        help="write here the writes that may or may not have happened (JSON lines)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.duration <= 0:
        parser.error("--workers and --duration must be positive")

    traffic = Traffic(args.url, args.workers)
    stop = threading.Event()
    timer = threading.Timer(args.duration, stop.set)
    timer.start()
    try:
        acks = traffic.run(stop)
    except KeyboardInterrupt:
        acks = traffic.stop()
    finally:
        timer.cancel()
    if args.acks:
        write_jsonl(args.acks, acks)
    if args.unknown:
        write_jsonl(args.unknown, traffic.maybe_applied())
    tally = traffic.tally()
    print(json.dumps({"acknowledged": len(acks), "by_outcome": tally}, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
