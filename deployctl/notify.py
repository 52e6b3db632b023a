"""Notifications: webhooks told of a release's start, each cohort step, a breach, a rollback and its end.

The body is Slack-compatible JSON: `{"text": "…"}` plus the event's fields (event, app,
version, release_id, …), with secrets masked. Delivery runs on a thread of its own, in order,
with retries and exponential backoff; a notification that cannot be delivered is logged and
never fails or holds up the release (at the end, delivery gets a bounded time to finish).
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from deployctl.log import log
from deployctl.playbook import Playbook, WebhookConfig
from deployctl.redact import redact

BACKOFF_S = 0.5      # first wait between attempts, doubled each time
FLUSH_S = 15.0       # how long the end of a release waits for pending notifications


class Notifier:
    """Sends a release's events to the playbook's webhooks."""

    def __init__(self, pb: Playbook, release_id: int) -> None:
        self.pb, self.release_id = pb, release_id
        self.hooks = list(pb.notify.webhooks)
        self.pending: queue.Queue[tuple[WebhookConfig, dict[str, Any]] | None] = queue.Queue()
        self.thread: threading.Thread | None = None
        if self.hooks:
            self.thread = threading.Thread(target=self._deliver, name="deployctl-notify", daemon=True)
            self.thread.start()

    def send(self, event: str, text: str, **fields: Any) -> None:
        body = redact({"text": f"deployctl: {self.pb.app} {self.pb.version} (release #{self.release_id}): "
                               f"{text}", "event": event, "app": self.pb.app, "version": self.pb.version,
                       "release_id": self.release_id, **fields})
        for hook in self.hooks:
            if event in hook.events:
                self.pending.put((hook, body))

    def close(self) -> None:
        """Let pending notifications go out (for a bounded time), then stop."""
        if self.thread is None:
            return
        self.pending.put(None)
        self.thread.join(timeout=FLUSH_S)
        if self.thread.is_alive():
            log.warning("notifications still pending at exit were dropped", release=self.release_id)

    def _deliver(self) -> None:
        while (item := self.pending.get()) is not None:
            hook, body = item
            try:
                _post(hook, body)
            except Exception as exc:  # noqa: BLE001 - one notification must not silence the rest
                log.warning("notification not delivered", notification=body.get("event"),
                            problem=type(exc).__name__)


def _post(hook: WebhookConfig, body: dict[str, Any]) -> bool:
    data = json.dumps(body, default=str).encode()
    # A webhook URL is a secret (its path is the token): only its host is ever printed.
    parts = urllib.parse.urlsplit(hook.url)
    where = f"{parts.scheme}://{parts.hostname}/…"
    for attempt in range(hook.retries + 1):
        request = urllib.request.Request(hook.url, data=data, method="POST",  # noqa: S310 (http(s) only)
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=hook.timeout) as resp:  # noqa: S310 (http(s) only)
                resp.read()
            return True
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
            if 400 <= exc.code < 500 and exc.code != 429:
                break  # the webhook refuses this body: sending it again changes nothing
        except (OSError, ValueError) as exc:
            problem = type(exc).__name__
        if attempt < hook.retries:
            time.sleep(BACKOFF_S * 2 ** attempt)
    log.warning("notification not delivered", webhook=where, notification=body.get("event"),
                problem=problem)
    return False
