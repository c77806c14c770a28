"""A real Prometheus Alertmanager (Debian's /usr/bin/prometheus-alertmanager) on 127.0.0.1 for
the notification tests: a free port, a temporary --storage.path, a null receiver, clustering off,
killed by PID on the way out."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .needs import unavailable
from .prometheus_server import free_port
from .server_process import server_process

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
CONFIG = """route:
  receiver: "null"
  group_wait: 0s
receivers:
  - name: "null"
"""


@dataclass
class Alertmanager:
    url: str
    log: Path

    def alerts(self, **filters) -> list[dict]:
        """GET /api/v2/alerts (active alerts only: an alert whose endsAt has passed is not listed)."""
        resp = httpx.get(f"{self.url}/api/v2/alerts", params=filters, timeout=10)
        assert resp.status_code == 200, resp.text
        return resp.json()


@contextmanager
def running_alertmanager(workdir: Path):
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "alertmanager.yml"
    config.write_text(CONFIG)
    port, log = free_port(), workdir / "alertmanager.log"
    url = f"http://127.0.0.1:{port}"
    cmd = [
        ALERTMANAGER,
        f"--config.file={config}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with server_process("alertmanager", cmd, url, log):
        yield Alertmanager(url, log)


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    if not Path(ALERTMANAGER).exists():
        unavailable(f"{ALERTMANAGER} is missing: `apt-get install -y prometheus-alertmanager` (CI installs it)")
    with running_alertmanager(tmp_path_factory.mktemp("alertmanager")) as am:
        yield am
