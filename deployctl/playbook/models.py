"""The playbook's sections, as typed models: each setting with its type, default, bounds and a
description (its docstring), from which `deployctl schema` and docs/playbook.md are made."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from deployctl.playbook.values import (
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
    dsn: str = Field(min_length=1)
    state_dsn: str | None = None
    rollback: Literal["keep", "downgrade", "restore"] = "restore"
    lock_timeout: Duration = 5.0
    statement_timeout: Duration = 300.0
    lock_retries: int = Field(default=5, ge=0, le=100)

    @field_validator("dsn", "state_dsn")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected a URL starting with postgresql://")
        return value


class MigrationsConfig(Model):
    alembic_ini: Path
    target: str = "head"
    url_env: str = Field(default="DATABASE_URL", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    _ini = field_validator("alembic_ini", mode="before")(existing_file)


class SnapshotConfig(Model):
    jobs: int = Field(default=2, ge=1, le=64)


class CaptureConfig(Model):
    mode: Literal["auto", "logical", "trigger"] = "auto"
    schemas: list[str] = Field(default_factory=lambda: ["public"], min_length=1)
    interval: Duration = 1.0
    # lazy: the slot only holds WAL until the delta is needed (a rollback, `deployctl delta`)
    # or holds more than max_retained_wal; continuous: decoded into the journal as it happens.
    drain: Literal["lazy", "continuous"] = "lazy"
    max_retained_wal: Size = 1 << 30


class ColumnMap(Model):
    """Where a column of the old schema takes its value from, in the new version's row."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    from_: str | None = Field(default=None, alias="from", min_length=1)
    expr: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> ColumnMap:
        if (self.from_ is None) == (self.expr is None):
            raise ValueError("give exactly one of `from` (a column of the new version) or `expr` "
                             "(SQL over the new version's row as jsonb `new`)")
        return self


class TableMapConfig(Model):
    to: str | None = Field(default=None, min_length=1)
    columns: dict[str, ColumnMap] = Field(default_factory=dict)


class ReplayConfig(Model):
    on_conflict: Literal["fail", "skip", "overwrite"] = "skip"
    side_effects: list[str] = Field(default_factory=list)
    tables: dict[str, TableMapConfig] = Field(default_factory=dict)


class HealthConfig(Model):
    url: str = Field(pattern=r"^https?://")
    timeout: Duration = 30.0
    interval: Duration = 0.25


class EndpointConfig(Model):
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)

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
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    address: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    user: str | None = None                      # default: the user running deployctl
    key: Path | None = None                      # default: the ssh-agent's keys
    passphrase_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, value: str, info: ValidationInfo) -> Path:
        return existing_file(os.path.expanduser(path_text(value)), info)


class SshConfig(Model):
    """The `ssh` transport: the hosts, and how to reach them safely."""

    known_hosts: Path                            # host keys are checked against it, never added
    hosts: list[SshHostConfig] = Field(min_length=1)
    root: str = Field(pattern=r"^/")             # releases/<version>/ and the `current` link live here
    artifact: Path | None = None                 # a file or folder uploaded to releases/<version>/
    keep_releases: int = Field(default=5, ge=2, le=100)  # blue's release must stay to roll back to
    parallel: int = Field(default=4, ge=1, le=256)
    batch: int | str | None = None               # hosts at a time: 2, or "25%"
    connect_attempts: int = Field(default=5, ge=1, le=50)
    connect_timeout: Duration = 10.0

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
    ssh: SshConfig | None = None
    command: list[str] = Field(min_length=1)
    cwd: Path | None = None
    env: dict[str, str] = Field(default_factory=dict)
    health: HealthConfig
    stop_timeout: Duration = 10.0
    endpoints: list[EndpointConfig] = Field(default_factory=list)  # where the router sends users

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
    url: str = Field(pattern=r"^https?://")
    method: Literal["GET", "HEAD", "POST"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    status: int = Field(default=200, ge=100, lt=600)
    body_contains: str | None = None
    max_latency: Duration | None = None
    timeout: Duration = 10.0


class SqlCheck(Model):
    query: str = Field(min_length=1)


class SmokeCheck(Model):
    name: str = Field(min_length=1)
    http: HttpCheck | None = None
    sql: SqlCheck | None = None
    retries: int = Field(default=0, ge=0, le=100)
    interval: Duration = 1.0

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
    cookie: str | None = Field(default=None, pattern=r"^\w+$")  # nginx names it $cookie_<name>

    @model_validator(mode="after")
    def _one_place(self) -> UserIdConfig:
        if self.cookie is not None:
            return self.model_copy(update={"header": None})
        if self.header is None:
            raise ValueError("give a `header` or a `cookie` that carries the user's id")
        return self


class HaproxyConfig(Model):
    socket: Path
    maps: Path                                   # the folder of deployctl's map files
    blue_backend: str = "blue"
    green_backend: str = "green"

    _paths = field_validator("socket", "maps", mode="before")(folder)


class NginxConfig(Model):
    config: Path                                 # nginx's main configuration file
    include: Path                                # the file deployctl writes and nginx includes
    access_log: Path | None = None               # in deployctl's log format, for the gates
    binary: str = "nginx"

    _paths = field_validator("config", "include", "access_log", mode="before")(folder)


class CommandRouterConfig(Model):
    argv: list[str] = Field(min_length=1)
    timeout: Duration = 60.0

    _split = field_validator("argv", mode="before")(split_command)


class RouterConfig(Model):
    type: Literal["haproxy", "nginx", "command"]
    haproxy: HaproxyConfig | None = None
    nginx: NginxConfig | None = None
    command: CommandRouterConfig | None = None
    user_id: UserIdConfig = UserIdConfig()
    retry_after: Duration = 5.0                  # what a 503 in maintenance mode asks clients to wait

    @model_validator(mode="after")
    def _settings_for_type(self) -> RouterConfig:
        if getattr(self, self.type) is None:
            raise ValueError(f"router type {self.type} needs its settings under `{self.type}:`")
        return self


class CohortStep(Model):
    """One stage of moving users to green; each keeps the users of the stages before it."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    allow: list[str] = Field(default_factory=list)
    percent: int = Field(default=0, ge=0, le=100)
    hold: Duration = 60.0

    @field_validator("allow")
    @classmethod
    def _user_ids(cls, value: list[str]) -> list[str]:
        from deployctl.fleet.routers.files import USER_ID

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
    max: float | None = Field(default=None, ge=0)
    max_vs_blue: float | None = Field(default=None, gt=0)   # green's value at most this × blue's


class SqlGate(Model):
    """A business metric: `query` now against `baseline` (from before the release)."""

    name: str = Field(min_length=1)
    query: str = Field(min_length=1)
    baseline: str = Field(min_length=1)
    min_ratio: float = Field(default=0.5, gt=0)


class HttpGate(Model):
    name: str = Field(min_length=1)
    http: HttpCheck


class GatesConfig(Model):
    interval: Duration = 5.0
    failures: int = Field(default=2, ge=1, le=100)     # failing readings in a row that roll back
    min_requests: int = Field(default=20, ge=1)         # fewer in a window: inconclusive
    error_rate: RateGate = RateGate(max=0.02, max_vs_blue=2.0)
    latency_ms: RateGate = RateGate()
    sql: list[SqlGate] = Field(default_factory=list)
    http: list[HttpGate] = Field(default_factory=list)
    on_inconclusive: Literal["pause", "rollback", "continue"] = "pause"
    max_pause: Duration = 3600.0                        # a pause nobody answers then rolls back


Event = Literal["start", "cohort", "breach", "rollback", "end"]


class WebhookConfig(Model):
    """A Slack-compatible incoming webhook: JSON {"text": …} plus the event's fields."""

    url: str = Field(pattern=r"^https?://")
    events: list[Event] = Field(default_factory=lambda: list(get_args(Event)))
    timeout: Duration = 5.0
    retries: int = Field(default=3, ge=0, le=20)


class NotifyConfig(Model):
    webhooks: list[WebhookConfig] = Field(default_factory=list)


class Playbook(Model):
    app: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    version: str = Field(min_length=1, max_length=100)
    workdir: Path = Path(".deployctl")
    database: DatabaseConfig
    migrations: MigrationsConfig
    snapshot: SnapshotConfig = SnapshotConfig()
    capture: CaptureConfig = CaptureConfig()
    deploy: DeployConfig
    smoke: list[SmokeCheck] = Field(default_factory=list)
    # Where users reach the app (https://…): preflight reads the certificate each one serves.
    public_urls: list[HttpsUrl] = Field(default_factory=list)
    router: RouterConfig | None = None
    cohorts: list[CohortStep] = Field(default_factory=list)
    gates: GatesConfig = GatesConfig()
    notify: NotifyConfig = NotifyConfig()
    replay: ReplayConfig = ReplayConfig()
    personal: list[str] = Field(default_factory=list)

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
    source_path: Path = Field(default=Path("."), exclude=True)
    source_text: str = Field(default="", exclude=True)

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
