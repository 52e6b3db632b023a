"""Playbooks: YAML files validated into typed models.

`load()` reads one (`source`: the file as untrusted input; `validate`: `${VAR}` values, the
models, every problem at once with its line and column); `models` holds the sections and their
settings, `values` the kinds of values they take (durations, sizes, paths); `reference` makes
the JSON Schema (`deployctl schema`) and docs/playbook.md from the models. Relative paths are
relative to the playbook's folder.
"""

from deployctl.playbook.models import (
    CaptureConfig,
    CohortStep,
    CommandRouterConfig,
    DatabaseConfig,
    DeployConfig,
    Event,
    GatesConfig,
    HaproxyConfig,
    HealthConfig,
    HttpCheck,
    HttpGate,
    NginxConfig,
    Playbook,
    PrometheusGate,
    RateGate,
    RouterConfig,
    SmokeCheck,
    SqlCheck,
    SqlGate,
    SshConfig,
    SshHostConfig,
    WebhookConfig,
)
from deployctl.playbook.validate import PATTERNS, load, parse
from deployctl.playbook.values import MAX_DURATION_S, parse_duration, parse_size

__all__ = [
    "MAX_DURATION_S", "PATTERNS", "CaptureConfig", "CohortStep", "CommandRouterConfig",
    "DatabaseConfig", "DeployConfig", "Event", "GatesConfig", "HaproxyConfig", "HealthConfig",
    "HttpCheck", "HttpGate", "NginxConfig", "Playbook", "PrometheusGate", "RateGate",
    "RouterConfig", "SmokeCheck", "SqlCheck", "SqlGate", "SshConfig", "SshHostConfig",
    "WebhookConfig", "load", "parse", "parse_duration", "parse_size",
]
