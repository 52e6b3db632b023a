"""The sample "social" application that deployctl's demo and integration tests release.

One code base, two versions chosen by ``--version``, so the demo can run version 1 as "blue" and
version 2 as "green" side by side against the same PostgreSQL database:

- version 1 needs schema revision ``0001`` (users, messages, likes);
- version 2 needs ``0002`` (adds ``users.bio`` and the ``reactions`` table).

Because ``0002`` only adds things, version 1 keeps working on the ``0002`` schema, which is what
makes the ``keep`` rollback mode possible. Only the standard library and psycopg 3 are used, so
the app can be copied to a host and started without installing a web framework.

Usage::

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/social \\
        python examples/social/app.py serve --version 1 --port 8001 [--host 127.0.0.1]
    DATABASE_URL=... python examples/social/app.py seed --users 20 --messages 50

Environment: ``DATABASE_URL`` (required), ``SOCIAL_FAIL`` (non-empty and not ``0``: version 2's
``GET /feed`` answers 500, the deliberate bug the smoke check must catch; ``users``: version 2
answers 500 to every request carrying a user id in ``X-User-Id``, a bug only real users meet,
which the gates of a cohort step must catch), ``SOCIAL_SLOW`` (milliseconds: version 2 waits
that long before answering a request with a user id, for latency gates), and
``SOCIAL_STARTUP_DELAY`` (seconds to wait before listening, to make a deploy step slow).
``GET /metrics`` answers Prometheus: requests by status code and time spent, by version.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import psycopg
from psycopg import errors, sql
from psycopg.rows import dict_row

T = TypeVar("T")
Row = dict[str, Any]
Conn = psycopg.Connection[Row]

log = logging.getLogger("social")

MAX_BODY_BYTES = 64 * 1024
FEED_LIMIT = 20


def libpq_conninfo(url: str) -> str:
    """Accept the SQLAlchemy spelling too, so one DATABASE_URL serves the app and Alembic."""
    return re.sub(r"^postgres(?:ql)?\+\w+://", "postgresql://", url)


class Database:
    """A tiny pool that survives its database being terminated, renamed or swapped.

    A rollback by restore renames databases under the running app and terminates its
    connections. Idle connections are therefore suspect: when one fails at BEGIN, the whole idle
    set is thrown away and the transaction starts on a brand-new connection.
    """

    def __init__(self, conninfo: str, max_idle: int = 4, connect_timeout: int = 5) -> None:
        self._conninfo = libpq_conninfo(conninfo)
        self._max_idle = max_idle
        self._connect_timeout = connect_timeout
        self._idle: list[Conn] = []
        self._lock = threading.Lock()

    def _connect(self) -> Conn:
        return psycopg.connect(
            self._conninfo,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=self._connect_timeout,
            application_name="social",
        )

    def _take(self) -> Conn:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _give_back(self, conn: Conn) -> None:
        reusable = (
            not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        )
        if reusable:
            with self._lock:
                if len(self._idle) < self._max_idle:
                    self._idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def run(self, work: Callable[[Conn], T]) -> T:
        """Run ``work`` in one transaction, on a fresh connection if the idle one is dead.

        Only the BEGIN is retried: it writes nothing, so a stale connection (terminated by a
        swap) is replaced safely. A failure after it is never retried, because a COMMIT whose
        reply was lost may have happened, and repeating the write would apply it twice.
        """
        conn = self._take()
        try:
            conn.execute("BEGIN")
        except psycopg.OperationalError as exc:
            conn.close()
            self.close()
            log.warning("database connection lost (%s); reconnecting", exc.__class__.__name__)
            conn = self._connect()
            conn.execute("BEGIN")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except psycopg.OperationalError:
            conn.close()
            raise
        except BaseException:
            if not conn.closed:
                conn.execute("ROLLBACK")
            self._give_back(conn)
            raise
        self._give_back(conn)
        return result


class HttpError(Exception):
    """An answer other than success, raised from deep inside a handler."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def require_str(body: Row, name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise HttpError(400, f"missing field {name!r}")
        return None
    if not isinstance(value, str) or not value.strip():
        raise HttpError(400, f"field {name!r} must be a non-empty string")
    return value


def require_id(body: Row, name: str) -> int:
    value = body.get(name)
    if value is None:
        raise HttpError(400, f"missing field {name!r}")
    # bool is an int subclass; `true` as an id is a client bug, not id 1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise HttpError(400, f"field {name!r} must be a positive integer")
    return value


@dataclass(frozen=True)
class Response:
    status: int
    body: Row | None = None


Handler = Callable[["SocialApp", Row, tuple[str, ...]], Response]


class Metrics:
    """What `GET /metrics` tells Prometheus: requests answered by status code, and the time spent
    answering them, labelled with the version (Prometheus's text format)."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.lock = threading.Lock()
        self.requests: dict[int, int] = {}
        self.seconds = 0.0

    def observe(self, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[status] = self.requests.get(status, 0) + 1
            self.seconds += seconds

    def text(self) -> str:
        label = f'version="{self.version}"'
        with self.lock:
            lines = ["# HELP social_http_requests_total HTTP requests answered, by status code.",
                     "# TYPE social_http_requests_total counter"]
            lines += [f'social_http_requests_total{{{label},code="{code}"}} {n}'
                      for code, n in sorted(self.requests.items())]
            lines += ["# HELP social_http_request_duration_seconds Time spent answering requests.",
                      "# TYPE social_http_request_duration_seconds summary",
                      f"social_http_request_duration_seconds_sum{{{label}}} {self.seconds}",
                      f"social_http_request_duration_seconds_count{{{label}}} {sum(self.requests.values())}"]
        return "\n".join(lines) + "\n"


class SocialApp:
    """The endpoints of one version, independent of HTTP plumbing so each is easy to follow."""

    def __init__(self, db: Database, version: int, fail_feed: bool, fail_users: bool = False,
                 slow_ms: float = 0.0) -> None:
        self.db = db
        self.version = version
        self.fail_feed = fail_feed
        self.fail_users = fail_users
        self.slow_ms = slow_ms
        self.metrics = Metrics(version)
        routes: list[tuple[str, str, Handler, int]] = [
            ("GET", r"/", SocialApp.index, 1),
            ("GET", r"/health", SocialApp.health, 1),
            ("POST", r"/users", SocialApp.create_user, 1),
            ("GET", r"/users/(\d+)", SocialApp.get_user, 1),
            ("PATCH", r"/users/(\d+)", SocialApp.update_user, 1),
            ("POST", r"/messages", SocialApp.create_message, 1),
            ("DELETE", r"/messages/(\d+)", SocialApp.delete_message, 1),
            ("POST", r"/likes", SocialApp.like, 1),
            ("DELETE", r"/likes", SocialApp.unlike, 1),
            ("GET", r"/feed", SocialApp.feed, 1),
            ("POST", r"/reactions", SocialApp.react, 2),
        ]
        self.routes = [
            (method, re.compile(pattern + r"\Z"), handler)
            for method, pattern, handler, since in routes
            if version >= since
        ]

    def dispatch(self, method: str, path: str, body: Row) -> Response:
        allowed = []
        for route_method, pattern, handler in self.routes:
            match = pattern.match(path)
            if match:
                if route_method == method:
                    return handler(self, body, match.groups())
                allowed.append(route_method)
        if allowed:
            raise HttpError(405, f"method {method} not allowed on {path}")
        raise HttpError(404, f"no such path: {path}")

    def index(self, body: Row, args: tuple[str, ...]) -> Response:
        return Response(200, {"app": "social", "version": str(self.version)})

    def health(self, body: Row, args: tuple[str, ...]) -> Response:
        try:
            self.db.run(lambda conn: conn.execute("SELECT 1").fetchone())
        except psycopg.Error as exc:
            log.warning("health check failed: %s", exc.__class__.__name__)
            return Response(503, {"status": "db-unavailable"})
        return Response(200, {"status": "ok", "version": str(self.version)})

    def create_user(self, body: Row, args: tuple[str, ...]) -> Response:
        name = require_str(body, "name")
        email = require_str(body, "email")
        assert email is not None
        if "@" not in email:
            raise HttpError(400, "field 'email' must be an email address")
        if self.version >= 2:
            bio = require_str(body, "bio", required=False)
            query = "INSERT INTO users (name, email, bio) VALUES (%s, %s, %s) RETURNING id"
            params: tuple[Any, ...] = (name, email, bio)
        else:
            query = "INSERT INTO users (name, email) VALUES (%s, %s) RETURNING id"
            params = (name, email)
        try:
            row = self.db.run(lambda conn: conn.execute(query, params).fetchone())
        except errors.UniqueViolation:
            raise HttpError(409, "email already registered") from None
        assert row is not None
        return Response(201, {"id": row["id"]})

    def _user_columns(self) -> sql.Composable:
        names = ["id", "name", "email"] + (["bio"] if self.version >= 2 else [])
        return sql.SQL(", ").join(sql.Identifier(name) for name in names)

    def get_user(self, body: Row, args: tuple[str, ...]) -> Response:
        query = sql.SQL("SELECT {} FROM users WHERE id = %s").format(self._user_columns())
        row = self.db.run(lambda conn: conn.execute(query, (int(args[0]),)).fetchone())
        if row is None:
            raise HttpError(404, "user not found")
        return Response(200, row)

    def update_user(self, body: Row, args: tuple[str, ...]) -> Response:
        changes: dict[str, Any] = {}
        if "name" in body:
            changes["name"] = require_str(body, "name")
        # Version 1 does not know about bio and ignores it like any other unknown field.
        if self.version >= 2 and "bio" in body:
            bio = body["bio"]
            if bio is not None and not isinstance(bio, str):
                raise HttpError(400, "field 'bio' must be a string or null")
            changes["bio"] = bio
        if not changes:
            fields = "'name' or 'bio'" if self.version >= 2 else "'name'"
            raise HttpError(400, f"nothing to update: send {fields}")
        query = sql.SQL("UPDATE users SET {} WHERE id = %s RETURNING {}").format(
            sql.SQL(", ").join(
                sql.SQL("{} = %s").format(sql.Identifier(column)) for column in changes
            ),
            self._user_columns(),
        )
        params = (*changes.values(), int(args[0]))
        row = self.db.run(lambda conn: conn.execute(query, params).fetchone())
        if row is None:
            raise HttpError(404, "user not found")
        return Response(200, row)

    def create_message(self, body: Row, args: tuple[str, ...]) -> Response:
        user_id = require_id(body, "user_id")
        text = require_str(body, "body")
        query = "INSERT INTO messages (user_id, body) VALUES (%s, %s) RETURNING id"
        try:
            row = self.db.run(lambda conn: conn.execute(query, (user_id, text)).fetchone())
        except errors.ForeignKeyViolation:
            raise HttpError(404, "user not found") from None
        assert row is not None
        return Response(201, {"id": row["id"]})

    def delete_message(self, body: Row, args: tuple[str, ...]) -> Response:
        query = "DELETE FROM messages WHERE id = %s RETURNING id"
        row = self.db.run(lambda conn: conn.execute(query, (int(args[0]),)).fetchone())
        if row is None:
            raise HttpError(404, "message not found")
        return Response(204)

    def like(self, body: Row, args: tuple[str, ...]) -> Response:
        user_id = require_id(body, "user_id")
        message_id = require_id(body, "message_id")
        query = (
            "INSERT INTO likes (user_id, message_id) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING RETURNING user_id"
        )
        try:
            row = self.db.run(lambda conn: conn.execute(query, (user_id, message_id)).fetchone())
        except errors.ForeignKeyViolation:
            raise HttpError(404, "user or message not found") from None
        result = {"user_id": user_id, "message_id": message_id}
        # A repeated like is not an error (double clicks, client retries): it changes nothing.
        return Response(201 if row is not None else 200, result)

    def unlike(self, body: Row, args: tuple[str, ...]) -> Response:
        user_id = require_id(body, "user_id")
        message_id = require_id(body, "message_id")
        query = "DELETE FROM likes WHERE user_id = %s AND message_id = %s"
        # Idempotent like its counterpart: removing a like that is not there still succeeds.
        self.db.run(lambda conn: conn.execute(query, (user_id, message_id)))
        return Response(204)

    def react(self, body: Row, args: tuple[str, ...]) -> Response:
        user_id = require_id(body, "user_id")
        message_id = require_id(body, "message_id")
        emoji = require_str(body, "emoji")
        assert emoji is not None
        if len(emoji) > 16:
            raise HttpError(400, "field 'emoji' must be at most 16 characters")
        query = (
            "INSERT INTO reactions (user_id, message_id, emoji) VALUES (%s, %s, %s) RETURNING id"
        )
        params = (user_id, message_id, emoji)
        try:
            row = self.db.run(lambda conn: conn.execute(query, params).fetchone())
        except errors.ForeignKeyViolation:
            raise HttpError(404, "user or message not found") from None
        assert row is not None
        return Response(201, {"id": row["id"]})

    def feed(self, body: Row, args: tuple[str, ...]) -> Response:
        if self.fail_feed and self.version >= 2:
            # The deliberate bug of the demo: health stays green, only the smoke check sees it.
            raise HttpError(500, "feed is broken")
        if self.version >= 2:
            query = """
                SELECT m.id, m.user_id, u.name AS author, u.bio, m.body, m.created_at,
                       (SELECT count(*) FROM likes l WHERE l.message_id = m.id) AS likes,
                       (SELECT count(*) FROM reactions r WHERE r.message_id = m.id) AS reactions
                FROM messages m JOIN users u ON u.id = m.user_id
                ORDER BY m.id DESC LIMIT %s
            """
        else:
            query = """
                SELECT m.id, m.user_id, u.name AS author, m.body, m.created_at,
                       (SELECT count(*) FROM likes l WHERE l.message_id = m.id) AS likes
                FROM messages m JOIN users u ON u.id = m.user_id
                ORDER BY m.id DESC LIMIT %s
            """
        rows = self.db.run(lambda conn: conn.execute(query, (FEED_LIMIT,)).fetchall())
        return Response(200, {"messages": rows})


def to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


class RequestHandler(BaseHTTPRequestHandler):
    """HTTP plumbing: parse JSON, call the app, write JSON, log one line per request."""

    server: SocialServer
    # HTTP/1.0 closes each connection after one answer, so a shutdown never waits on keep-alive.
    protocol_version = "HTTP/1.0"
    # A client that never finishes its request must not hold a thread (and shutdown) forever.
    timeout = 30

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle()

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle()

    def _read_json(self) -> Row:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if length > MAX_BODY_BYTES:
            raise HttpError(413, f"body larger than {MAX_BODY_BYTES} bytes")
        if length <= 0:
            return {}
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpError(400, f"bad JSON: {exc}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object")
        return body

    def _handle(self) -> None:
        started = time.monotonic()
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if self.command == "GET" and path == "/metrics":  # Prometheus's scrape: not counted
            self._send_text(app.metrics.text())
            return
        try:
            body = self._read_json() if self.command in ("POST", "PATCH", "DELETE") else {}
            if app.version >= 2 and self.headers.get("X-User-Id"):
                if app.slow_ms:
                    time.sleep(app.slow_ms / 1000)
                if app.fail_users:
                    raise HttpError(500, "broken for signed-in users")
            response = app.dispatch(self.command, path, body)
        except HttpError as exc:
            response = Response(exc.status, {"error": exc.message})
        except psycopg.DataError as exc:
            # Out-of-range ids, NUL bytes in text: the client sent a value the schema refuses.
            response = Response(400, {"error": f"invalid value: {exc.__class__.__name__}"})
        except psycopg.OperationalError as exc:
            log.error("database unavailable: %s", exc)
            response = Response(503, {"error": "database unavailable"})
        except Exception:
            log.exception("unhandled error on %s %s", self.command, path)
            response = Response(500, {"error": "internal error"})
        self._send(response)
        app.metrics.observe(response.status, time.monotonic() - started)
        elapsed_ms = (time.monotonic() - started) * 1000
        log.info(
            '%s "%s %s" %d %.1fms',
            self.client_address[0],
            self.command,
            self.path,
            response.status,
            elapsed_ms,
        )

    def _send(self, response: Response) -> None:
        payload = b""
        if response.status != 204 and response.body is not None:
            payload = json.dumps(response.body, default=to_json).encode() + b"\n"
        self.send_response_only(response.status)
        self.send_header("Server", f"social/{self.server.app.version}")
        self.send_header("Date", self.date_time_string())
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _send_text(self, text: str) -> None:
        payload = text.encode()
        self.send_response_only(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        # Only reached for requests http.server rejects itself (malformed request lines).
        log.info("%s %s", self.client_address[0], format % args)


class SocialServer(ThreadingHTTPServer):
    """A threading HTTP server whose close waits for requests in flight (a clean SIGTERM)."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], app: SocialApp) -> None:
        self.app = app
        super().__init__(address, RequestHandler)


def database_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        raise SystemExit(
            "DATABASE_URL is not set; export a libpq URL such as "
            "postgresql://postgres@127.0.0.1:5432/social"
        )
    return url


def flag_enabled(name: str) -> bool:
    value = os.environ.get(name, "").strip()
    return value not in ("", "0")


def startup_delay() -> float:
    raw = os.environ.get("SOCIAL_STARTUP_DELAY", "").strip() or "0"
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise SystemExit(f"SOCIAL_STARTUP_DELAY must be a number of seconds, got {raw!r}") from None


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(version: int, host: str, port: int) -> int:
    db = Database(database_url())
    fail = os.environ.get("SOCIAL_FAIL", "").strip()
    app = SocialApp(db, version, fail_feed=flag_enabled("SOCIAL_FAIL") and fail != "users",
                    fail_users=fail == "users", slow_ms=float(os.environ.get("SOCIAL_SLOW") or 0))
    with stop_on_signals() as stop:
        delay = startup_delay()
        if delay:
            log.info("waiting %.1fs before listening (SOCIAL_STARTUP_DELAY)", delay)
            if stop.wait(delay):
                return 0
        try:
            server = SocialServer((host, port), app)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", host, port, exc)
            return 1
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
        thread.start()
        log.info(
            "social v%d listening on http://%s:%d (feed bug %s)",
            version,
            host,
            server.server_address[1],
            "ON" if app.fail_feed else "off",
        )
        # Waiting in slices keeps the main thread responsive to signals on every platform.
        while not stop.wait(0.5):
            pass
        log.info("shutting down")
        server.shutdown()
        thread.join()
        server.server_close()
        db.close()
    return 0


def seed(users: int, messages: int) -> dict[str, int]:
    """Insert deterministic sample rows; running it again inserts nothing new."""
    if users < 1 and messages > 0:
        raise SystemExit("seed: --messages needs at least one user (--users >= 1)")
    with psycopg.connect(libpq_conninfo(database_url()), row_factory=dict_row) as conn:
        inserted = {"users": 0, "messages": 0, "likes": 0}
        user_ids: list[int] = []
        for i in range(1, users + 1):
            email = f"user{i:03d}@example.com"
            # The NOT EXISTS keeps reruns from burning sequence values, so ids stay predictable.
            cur = conn.execute(
                "INSERT INTO users (name, email) SELECT %(n)s, %(e)s"
                " WHERE NOT EXISTS (SELECT 1 FROM users WHERE email = %(e)s)"
                " ON CONFLICT (email) DO NOTHING",
                {"n": f"User {i:03d}", "e": email},
            )
            inserted["users"] += cur.rowcount
            row = conn.execute("SELECT id FROM users WHERE email = %s", (email,)).fetchone()
            assert row is not None
            user_ids.append(row["id"])
        for j in range(messages):
            author = user_ids[(j * 7) % len(user_ids)]
            text = f"Seed message {j + 1:04d}"
            # messages has no natural key; (author, body) stands in for one so reruns are no-ops.
            cur = conn.execute(
                "INSERT INTO messages (user_id, body) SELECT %(u)s, %(b)s WHERE NOT EXISTS"
                " (SELECT 1 FROM messages WHERE user_id = %(u)s AND body = %(b)s)",
                {"u": author, "b": text},
            )
            inserted["messages"] += cur.rowcount
            row = conn.execute(
                "SELECT min(id) AS id FROM messages WHERE user_id = %s AND body = %s",
                (author, text),
            ).fetchone()
            assert row is not None
            for k in range(j % 5):
                liker = user_ids[(j + k + 1) % len(user_ids)]
                cur = conn.execute(
                    "INSERT INTO likes (user_id, message_id) VALUES (%s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (liker, row["id"]),
                )
                inserted["likes"] += cur.rowcount
    return inserted


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="app.py", description="The deployctl sample app.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve the HTTP API")
    serve_cmd.add_argument("--version", type=int, choices=(1, 2), required=True)
    serve_cmd.add_argument("--port", type=int, required=True)
    serve_cmd.add_argument("--host", default="127.0.0.1")
    seed_cmd = commands.add_parser("seed", help="insert deterministic sample data")
    seed_cmd.add_argument("--users", type=int, default=20)
    seed_cmd.add_argument("--messages", type=int, default=50)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = f"social-v{args.version}" if args.command == "serve" else "social-seed"
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(message)s",
    )
    if args.command == "serve":
        return serve(args.version, args.host, args.port)
    counts = seed(args.users, args.messages)
    print(json.dumps({"inserted": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
