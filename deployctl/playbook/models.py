"""The playbook's sections, as typed models: each setting with its type, default, bounds and a
description (its docstring), from which `deployctl schema` and docs/playbook.md are made.

Over 600 lines because every setting carries its description here, the one place it is written."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from deployctl.playbook.values import (
    USER_ID,
    Duration,
    HttpsUrl,
    Model,
    Size,
    existing_file,
    folder,
    path_text,
    split_command,
)

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class DatabaseConfig(Model):
    """The application's database, and how a failed release rolls it back."""

    dsn: str = Field(min_length=1)
    """postgresql:// URL of the application's database (usually `${VAR}` from the environment)."""
    state_dsn: str | None = None
    """postgresql:// URL of deployctl's journal. Default: database `deployctl` on the same server."""
    rollback: Literal["keep", "downgrade", "restore"] = "restore"
    """How a failed release rolls the database back: `restore` the snapshot beside the live database and
    replay the delta, `downgrade` with Alembic, or `keep` it migrated."""
    lock_timeout: Duration = 5.0
    """`lock_timeout` of the migration's session; a migration that times out on a lock is retried with
    backoff."""
    statement_timeout: Duration = 300.0
    """`statement_timeout` of the migration's session."""
    lock_retries: int = Field(default=5, ge=0, le=100)
    """How many times a migration that timed out on a lock is tried again."""

    @field_validator("dsn", "state_dsn")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected a URL starting with postgresql://")
        return value


class MigrationsConfig(Model):
    """The Alembic project that migrates the database to this version."""

    alembic_ini: Path
    """The project's alembic.ini (relative to the playbook's folder)."""
    target: str = "head"
    """The revision this version needs (`head` or a revision id)."""
    url_env: str = Field(default="DATABASE_URL", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The environment variable that carries the database URL to your Alembic env.py."""

    _ini = field_validator("alembic_ini", mode="before")(existing_file)


class SnapshotConfig(Model):
    """The snapshot taken before migrating (pg_dump's directory format)."""

    jobs: int = Field(default=2, ge=1, le=64)
    """Parallel jobs of pg_dump and pg_restore (`-j`)."""


class CaptureConfig(Model):
    """How the changes users make during the release (the delta) are captured."""

    mode: Literal["auto", "logical", "trigger"] = "auto"
    """`logical` (a replication slot, pgoutput), `trigger` (row triggers into a capture table), or
    `auto`: logical where the server and role allow it, else triggers."""
    schemas: list[str] = Field(default_factory=lambda: ["public"], min_length=1)
    """The schemas whose tables are captured."""
    interval: Duration = 1.0
    """How often the capture is looked at (drained, or checked against its WAL budget)."""
    drain: Literal["lazy", "continuous"] = "lazy"
    """`lazy`: the slot only holds WAL, decoded when the delta is needed (a rollback, `deployctl delta`);
    `continuous`: decoded into the journal as it happens."""
    max_retained_wal: Size = 1 << 30
    """Lazy capture's budget: when the slot holds more WAL, it is stored raw in the journal (never more
    than half the server's `max_slot_wal_keep_size`)."""


class ColumnMap(Model):
    """Where a column of the old schema takes its value from, in the new version's row."""

    model_config = ConfigDict(populate_by_name=True)  # merged with Model's
    from_: str | None = Field(default=None, alias="from", min_length=1)
    """The column of the new version whose value this column takes (a rename)."""
    expr: str | None = Field(default=None, min_length=1)
    """SQL computing this column's value from the new version's row, as jsonb `new`."""

    @model_validator(mode="after")
    def _one_source(self) -> ColumnMap:
        if (self.from_ is None) == (self.expr is None):
            raise ValueError("give exactly one of `from` (a column of the new version) or `expr` "
                             "(SQL over the new version's row as jsonb `new`)")
        return self


class TableMapConfig(Model):
    """Where one table of the old schema takes its rows from in the new version."""

    to: str | None = Field(default=None, min_length=1)
    """The table's name in the old schema, when the migration renamed it."""
    columns: dict[str, ColumnMap] = Field(default_factory=dict)
    """For each column of the old schema whose value is not in a column of the same name: where it comes
    from."""


class ReplayConfig(Model):
    """How the delta is replayed onto the old schema at a rollback."""

    on_conflict: Literal["fail", "skip", "overwrite"] = "skip"
    """What a replay does with a row the old database changed too: `fail` (nothing is applied), `skip` it
    (reported), or `overwrite` it."""
    side_effects: list[str] = Field(default_factory=list)
    """Tables whose changes are never replayed (payments, emails sent): they go to a reconciliation file
    for a human."""
    tables: dict[str, TableMapConfig] = Field(default_factory=dict)
    """How the tables of the new schema map onto the old one, by the new version's table name."""


class HealthConfig(Model):
    """The URL that says a started version is up."""

    url: str = Field(pattern=r"^https?://")
    """http(s) URL that answers 2xx once the version is up."""
    timeout: Duration = 30.0
    """How long a started version has to answer."""
    interval: Duration = 0.25
    """Time between two tries."""


class EndpointConfig(Model):
    """Where a version answers (`host:port` for short), for the router."""

    host: str = Field(min_length=1)
    """Host name or address."""
    port: int = Field(ge=1, le=65535)
    """TCP port."""

    @model_validator(mode="before")
    @classmethod
    def _host_port(cls, value: Any) -> Any:
        # `127.0.0.1:18002` for short.
        if isinstance(value, str):
            host, sep, port = value.rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"expected host:port, got {value!r}")
            return {"host": host, "port": int(port)}
        return value


class SshHostConfig(Model):
    """One host of the `ssh` transport."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """The host's name in logs and reports."""
    address: str = Field(min_length=1)
    """Address or host name to connect to."""
    port: int = Field(default=22, ge=1, le=65535)
    """sshd's port."""
    user: str | None = None
    """User to log in as. Default: the user running deployctl."""
    key: Path | None = None
    """Private key file. Default: the ssh-agent's keys."""
    passphrase_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The environment variable holding the key's passphrase."""

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, value: str, info: ValidationInfo) -> Path:
        return existing_file(str(Path(path_text(value)).expanduser()), info)


class SshConfig(Model):
    """The `ssh` transport: the hosts, and how to reach them safely."""

    known_hosts: Path
    """known_hosts file the hosts' keys are checked against; an unknown key is refused, never added."""
    hosts: list[SshHostConfig] = Field(min_length=1)
    """The hosts every version runs on."""
    root: str = Field(pattern=r"^/")
    """Absolute folder on each host holding `releases/<version>/`, the `current` link and `run/`."""
    artifact: Path | None = None
    """A file or folder uploaded into `releases/<version>/` by SFTP."""
    keep_releases: int = Field(default=5, ge=2, le=100)
    """How many releases stay on each host (blue's must, to roll back to)."""
    parallel: int = Field(default=4, ge=1, le=256)
    """How many hosts are worked on at once."""
    batch: int | str | None = None
    """Hosts per batch, each batch healthy before the next: a number (2) or a share (`25%`). Default: all
    at once."""
    connect_attempts: int = Field(default=5, ge=1, le=50)
    """Connection attempts per host, with exponential backoff."""
    connect_timeout: Duration = 10.0
    """Time to connect to a host."""

    _known = field_validator("known_hosts", mode="before")(existing_file)
    _artifact = field_validator("artifact", mode="before")(folder)

    @field_validator("batch")
    @classmethod
    def _batch(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1 or isinstance(value, str) and not re.fullmatch(
                r"(100|[1-9][0-9]?)%", value):
            raise ValueError(f"expected a number of hosts (2) or a share (25%), got {value!r}")
        return value

    @model_validator(mode="after")
    def _names(self) -> SshConfig:
        names = [h.name for h in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"every host needs its own name, got {names}")
        return self


class DeployConfig(Model):
    """How a version starts. With `ssh`, `{host}` in `command`, `health.url` and `endpoints`
    stands for each host's address."""

    transport: Literal["local", "ssh"] = "local"
    """Where versions run: `local` processes, or `ssh` hosts."""
    ssh: SshConfig | None = None
    """The hosts, for transport `ssh`."""
    command: list[str] = Field(min_length=1)
    """The command that starts this version (a list, or a string split like a shell would, without a
    shell); `{host}` is each host's address."""
    cwd: Path | None = None
    """Folder the command runs in (local). Default: the playbook's folder; with ssh, the release's
    folder."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables added for the command."""
    health: HealthConfig
    """How deployctl knows the started version is up."""
    stop_timeout: Duration = 10.0
    """How long a version has to exit after SIGTERM before SIGKILL."""
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    """Where this version answers, for the router (`host:port`; `{host}` is each host's address)."""

    _split = field_validator("command", mode="before")(split_command)

    @model_validator(mode="after")
    def _transport_settings(self) -> DeployConfig:
        if self.transport == "ssh" and self.ssh is None:
            raise ValueError("transport ssh needs its settings under `ssh:` (known_hosts, hosts, root)")
        return self

    @field_validator("cwd", mode="before")
    @classmethod
    def _cwd(cls, value: str, info: ValidationInfo) -> Path:
        return folder(value, info)


class HttpCheck(Model):
    """An HTTP request and what its answer must be."""

    url: str = Field(pattern=r"^https?://")
    """http(s) URL to request."""
    method: Literal["GET", "HEAD", "POST"] = "GET"
    """HTTP method."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Request headers."""
    status: int = Field(default=200, ge=100, lt=600)
    """The status the answer must have."""
    body_contains: str | None = None
    """Text the answer's body must contain."""
    max_latency: Duration | None = None
    """The longest the answer may take."""
    timeout: Duration = 10.0
    """Time before the request is given up."""


class SqlCheck(Model):
    """A query whose first column must be true."""

    query: str = Field(min_length=1)
    """SQL run on the application's database."""


class SmokeCheck(Model):
    """A check green must pass before any user reaches it: `http` or `sql`."""

    name: str = Field(min_length=1)
    """The check's name in logs and reports."""
    http: HttpCheck | None = None
    """An HTTP request to green."""
    sql: SqlCheck | None = None
    """A query on the migrated database (a string for short)."""
    retries: int = Field(default=0, ge=0, le=100)
    """Tries after the first failed one."""
    interval: Duration = 1.0
    """Time between two tries."""

    @field_validator("sql", mode="before")
    @classmethod
    def _sql_shorthand(cls, value: Any) -> Any:
        return {"query": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> SmokeCheck:
        if (self.http is None) == (self.sql is None):
            raise ValueError("a smoke check needs exactly one of `http` or `sql`")
        return self


class UserIdConfig(Model):
    """Where a request carries the user's id, which keeps each user on one version."""

    header: str | None = Field(default="X-User-Id", pattern=r"^[A-Za-z0-9-]+$")
    """The request header carrying the user's id."""
    cookie: str | None = Field(default=None, pattern=r"^\w+$")
    """The cookie carrying the user's id (instead of a header; nginx reads it as `$cookie_<name>`)."""

    @model_validator(mode="after")
    def _one_place(self) -> UserIdConfig:
        if self.cookie is not None:
            return self.model_copy(update={"header": None})
        if self.header is None:
            raise ValueError("give a `header` or a `cookie` that carries the user's id")
        return self


class HaproxyConfig(Model):
    """HAProxy, driven through its runtime API (never a reload)."""

    socket: Path
    """HAProxy's admin socket (`stats socket … level admin`)."""
    maps: Path
    """The folder of deployctl's map files (kept on disk for HAProxy's restarts)."""
    blue_backend: str = "blue"
    """The backend serving blue."""
    green_backend: str = "green"
    """The backend serving green."""

    _paths = field_validator("socket", "maps", mode="before")(folder)


class NginxConfig(Model):
    """nginx, driven by a rendered include, `nginx -t` and a graceful reload."""

    config: Path
    """nginx's main configuration file."""
    include: Path
    """The file deployctl writes and nginx's configuration includes."""
    access_log: Path | None = None
    """The access log in deployctl's log format, which the gates read."""
    binary: str = "nginx"
    """The nginx program."""

    _paths = field_validator("config", "include", "access_log", mode="before")(folder)


class CommandRouterConfig(Model):
    """A command of yours that moves users (cloud load balancers, Kubernetes)."""

    argv: list[str] = Field(min_length=1)
    """The command, run once per change with `DEPLOYCTL_ACTION`, `DEPLOYCTL_ALLOW`, `DEPLOYCTL_PERCENT`,
    `DEPLOYCTL_MAINTENANCE`, `DEPLOYCTL_BLUE` and `DEPLOYCTL_GREEN` in its environment. Unless it
    gives `readings`, it cannot measure: the error-rate and response-time gates are then always
    inconclusive (switch them off and gate on `prometheus`, `sql` or `http`)."""
    timeout: Duration = 60.0
    """Time the command has to finish."""
    readings: bool = False
    """The command also measures: run with `DEPLOYCTL_ACTION=readings`, it prints as its last
    line JSON of each color's cumulative counters, `{"blue": {"requests": 1200, "errors": 3,
    "response_ms": 41.5}, "green": {…}}`, which the error-rate and response-time gates read."""

    _split = field_validator("argv", mode="before")(split_command)


class RouterConfig(Model):
    """What moves users between blue and green."""

    type: Literal["haproxy", "nginx", "command"]
    """Which router: `haproxy`, `nginx` or `command`; its settings go under the key of that name."""
    haproxy: HaproxyConfig | None = None
    """Settings of router type `haproxy`."""
    nginx: NginxConfig | None = None
    """Settings of router type `nginx`."""
    command: CommandRouterConfig | None = None
    """Settings of router type `command`."""
    user_id: UserIdConfig = UserIdConfig()
    """Where a request carries the user's id, which keeps each user on one version."""
    retry_after: Duration = 5.0
    """`Retry-After` of the 503 answered while a restore swaps databases."""

    @model_validator(mode="after")
    def _settings_for_type(self) -> RouterConfig:
        if getattr(self, self.type) is None:
            raise ValueError(f"router type {self.type} needs its settings under `{self.type}:`")
        return self


class CohortStep(Model):
    """One stage of moving users to green; each keeps the users of the stages before it."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    """The step's name (lowercase letters, digits, `_`, `-`)."""
    allow: list[str] = Field(default_factory=list)
    """User ids sent to green in this step (staff, beta testers)."""
    percent: int = Field(default=0, ge=0, le=100)
    """Share of the other users sent to green, by `crc32(user id) mod 100`: a user on green stays on
    green in later steps."""
    hold: Duration = 60.0
    """How long the step lasts while the gates read."""

    @field_validator("allow")
    @classmethod
    def _user_ids(cls, value: list[str]) -> list[str]:
        for user_id in value:
            if not USER_ID.fullmatch(user_id):
                raise ValueError(f"{user_id!r} is not a user id the routers accept: up to 128 letters, "
                                 "digits and . _ @ + : -, starting with a letter or a digit")
        return value

    @model_validator(mode="after")
    def _moves_someone(self) -> CohortStep:
        if not self.allow and self.percent == 0:
            raise ValueError("a cohort step needs an `allow` list or a `percent` above 0")
        return self


class RateGate(Model):
    """A limit on green's value: absolute, relative to blue's over the same window, or both."""

    max: float | None = Field(default=None, ge=0)
    """The most green's value may be."""
    max_vs_blue: float | None = Field(default=None, gt=0)
    """The most green's value may be, as a multiple of blue's over the same window."""


class SqlGate(Model):
    """A business metric: `query` now against `baseline` (from before the release)."""

    name: str = Field(min_length=1)
    """The metric's name in logs and reports."""
    query: str = Field(min_length=1)
    """SQL giving the metric now (one number)."""
    baseline: str = Field(min_length=1)
    """SQL giving the metric before the release (`%(started_at)s` is when it started)."""
    min_ratio: float = Field(default=0.5, gt=0)
    """The lowest share of the baseline the metric may fall to."""


class HttpGate(Model):
    """An HTTP probe read at every gate reading."""

    name: str = Field(min_length=1)
    """The probe's name in logs and reports."""
    http: HttpCheck
    """The request, and what its answer must be."""


class PrometheusGate(Model):
    """A PromQL query read at every gate reading, for green (and for blue, with `vs_blue`)."""

    name: str = Field(min_length=1)
    """The gate's name in logs and reports."""
    query: str = Field(min_length=1)
    """PromQL giving one number. `$version` stands for the version read and `$window` for the
    step's window so far (from its start, at least one interval), e.g.
    `sum(rate(http_requests_total{version="$version",code=~"5.."}[$window]))`."""
    max: float | None = None
    """The most green's value may be (a multiple of blue's with `vs_blue`)."""
    min: float | None = None
    """The least green's value may be (a multiple of blue's with `vs_blue`)."""
    vs_blue: bool = False
    """Read the query for blue's version too, over the same window: `max` and `min` are then
    multiples of blue's value (no data for blue, or 0: inconclusive)."""

    @model_validator(mode="after")
    def _a_limit(self) -> PrometheusGate:
        if self.max is None and self.min is None:
            raise ValueError("a prometheus gate needs a `max` or a `min`")
        return self


class GatesConfig(Model):
    """What is read during each cohort step, and what a reading decides."""

    interval: Duration = 5.0
    """Time between two readings."""
    failures: int = Field(default=2, ge=1, le=100)
    """Failing readings in a row that roll back."""
    min_requests: int = Field(default=20, ge=1)
    """Fewer requests on green in a window make its error rate and response time inconclusive."""
    error_rate: RateGate = RateGate(max=0.02, max_vs_blue=2.0)
    """Green's share of 5xx answers, from the router."""
    latency_ms: RateGate = RateGate()
    """Green's response time in milliseconds, from the router. Default: not gated."""
    sql: list[SqlGate] = Field(default_factory=list)
    """Business metrics compared with their baseline from before the release."""
    http: list[HttpGate] = Field(default_factory=list)
    """HTTP probes."""
    prometheus: list[PrometheusGate] = Field(default_factory=list)
    """PromQL queries, green against limits or against blue."""
    prometheus_url: str | None = Field(default=None, pattern=r"^https?://")
    """The Prometheus server the `prometheus` gates query (`http://prometheus:9090`)."""
    on_inconclusive: Literal["pause", "rollback", "continue"] = "pause"
    """What a step whose readings were all inconclusive does: `pause` for an operator (rolls back with
    `CI=true` or `--yes`), `rollback`, or `continue`."""
    max_pause: Duration = 3600.0
    """A pause nobody answers rolls back after this long."""

    @model_validator(mode="after")
    def _prometheus_server(self) -> GatesConfig:
        if self.prometheus and self.prometheus_url is None:
            raise ValueError("prometheus gates need `prometheus_url`: the server they query")
        return self


Event = Literal["start", "cohort", "paused", "breach", "rollback", "end"]


class WebhookConfig(Model):
    """A Slack-compatible incoming webhook: JSON {"text": …} plus the event's fields."""

    url: str = Field(pattern=r"^https?://")
    """The webhook's URL (Slack-compatible: JSON `{"text": …}` plus the event's fields)."""
    events: list[Event] = Field(default_factory=lambda: list(get_args(Event)))
    """The events sent: `start`, `cohort`, `paused` (waiting for an operator, with when it rolls
    back on its own), `breach`, `rollback`, `end` (with the path of the release's HTML report)."""
    timeout: Duration = 5.0
    """Time a delivery may take."""
    retries: int = Field(default=3, ge=0, le=20)
    """Retries of a failed delivery, with exponential backoff from 0.5 s."""


class NotifyConfig(Model):
    """Where the release's events are sent."""

    webhooks: list[WebhookConfig] = Field(default_factory=list)
    """Webhooks notified of the release's events."""


class Playbook(Model):
    """A release of one version of an application."""

    app: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    """The application's name: one release at a time per app."""
    version: str = Field(min_length=1, max_length=100)
    """The version this playbook releases (a label: letters, digits and `. _ + -`)."""
    workdir: Path = Path(".deployctl")
    """Folder for snapshots, process files and reports (relative to the playbook's folder)."""
    database: DatabaseConfig
    """The application's database."""
    migrations: MigrationsConfig
    """The Alembic migrations."""
    snapshot: SnapshotConfig = SnapshotConfig()
    """The snapshot before migrating."""
    capture: CaptureConfig = CaptureConfig()
    """The capture of the delta."""
    deploy: DeployConfig
    """How this version starts, where, and how it is known to be up."""
    smoke: list[SmokeCheck] = Field(default_factory=list)
    """Checks green must pass before any user reaches it."""
    public_urls: list[HttpsUrl] = Field(default_factory=list)
    """https:// URLs users reach the app at: preflight warns of certificates expiring soon."""
    router: RouterConfig | None = None
    """What moves users between versions (needed by `cohorts`)."""
    cohorts: list[CohortStep] = Field(default_factory=list)
    """The steps that move users to green, in order; none: every user at once, at finalize."""
    gates: GatesConfig = GatesConfig()
    """What is watched during cohort steps."""
    notify: NotifyConfig = NotifyConfig()
    """Notifications."""
    replay: ReplayConfig = ReplayConfig()
    """How the delta is replayed at a rollback."""
    personal: list[str] = Field(default_factory=list)
    """`table.column`s masked in conflict listings, exports and reports."""

    @model_validator(mode="after")
    def _traffic(self) -> Playbook:
        if self.cohorts and self.router is None:
            raise ValueError("cohorts need a `router` that moves users between versions")
        if self.router is not None and not self.deploy.endpoints:
            raise ValueError("a router needs `deploy.endpoints`: where this version answers (host:port)")
        return self

    @field_validator("personal")
    @classmethod
    def _table_dot_column(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"[^.\s]+\.[^.\s]+", item):
                raise ValueError(f"expected table.column, got {item!r}")
        return value

    # Where the playbook came from: filled in by load(), not by the YAML.
    source_path: SkipJsonSchema[Path] = Field(default=Path(), exclude=True)
    source_text: SkipJsonSchema[str] = Field(default="", exclude=True)

    @field_validator("workdir", mode="before")
    @classmethod
    def _workdir(cls, value: str, info: ValidationInfo) -> Path:
        return folder(value, info)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any, info: ValidationInfo) -> Any:
        # `version: 2` in YAML is an int; a version is a label. `version: 1.10` would silently
        # become 1.1: refuse it.
        if isinstance(value, float):
            raise ValueError(f"write the version in quotes (YAML reads {value!r} as a number)")
        value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        # A version becomes a folder, a file name and a word in one-line output: no `/`, no
        # `..`, no whitespace. Git hashes, tags, PEP 440 and SemVer versions all fit.
        stored = (info.context or {}).get("stored", False)  # released before this rule existed
        if isinstance(value, str) and value and not stored and not _VERSION.fullmatch(value):
            raise ValueError(f"use letters, digits and . _ + - only, starting with a letter or a "
                             f"digit, got {value!r}")
        return value

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source_text.encode()).hexdigest()
