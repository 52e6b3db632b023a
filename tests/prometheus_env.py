"""A real Prometheus server for the gate tests: Debian's `prometheus`, on a loopback port,
scraping the given targets every second, its data in a temporary folder."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port, require

SCRAPE_S = 1


@contextmanager
def prometheus(folder: Path, targets: list[str]) -> Iterator[str]:
    """The server's URL while it runs, scraping `targets` (`host:port`, at `/metrics`)."""
    binary = require("prometheus")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "scrape_configs": [{"job_name": "app", "static_configs": [{"targets": targets}]}]}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (folder / "prometheus.log").open("wb") as log:
        server = subprocess.Popen([binary, f"--config.file={config}",
                                   f"--storage.tsdb.path={folder / 'data'}",
                                   f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:  # noqa: S310
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                said = (folder / "prometheus.log").read_text()[-2000:]
                raise RuntimeError(f"prometheus did not start: {said}")
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
