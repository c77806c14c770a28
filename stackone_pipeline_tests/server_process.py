"""Start a real server binary (Prometheus, Alertmanager) for a test; always kill it by PID."""

from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx


@contextmanager
def server_process(name: str, cmd: list[str], url: str, log: Path, ready_path: str = "/-/ready", timeout_s: float = 30):
    """Run `cmd` (output to `log`) until `url + ready_path` answers 200; yield; kill it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + ready_path, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
