"""Run the receiver on uvicorn: `serve` (blocking, for the CLI) and `start_receiver` (a thread,
for tests and anything embedding it)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import uvicorn

from .app import DEFAULT_TOLERANCE_S, WEBHOOK_PATH, create_app, require_secrets
from .signing import SIGNATURE_HEADER

log = logging.getLogger("stackone_pipeline.webhooks")


def _config(app, log_level: str, access_log: bool, **kw) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=5,
        log_config=None,
        **kw,
    )


def serve(
    host: str,
    port: int,
    data_dir: Path | str,
    secrets: str | Iterable[str],
    *,
    path: str = WEBHOOK_PATH,
    signature_header: str = SIGNATURE_HEADER,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    log_level: str = "info",
    access_log: bool = False,
    state_url: str | None = None,
) -> None:
    """Serve the webhook receiver until Ctrl-C / SIGTERM. `secrets`: the signing secret, or
    several (while rotating: the old and the new; a delivery signed with any of them is
    accepted). Raises `WebhookConfigError` (clear message, before binding anything) when there
    is none. `state_url` (None: STACKONE_STATE_URL): stage in that PostgreSQL database instead
    of the data directory (`ConnectionError` if it cannot be reached)."""
    secrets = require_secrets(secrets)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("stackone_pipeline.webhooks").setLevel(log_level.upper())
    app = create_app(
        data_dir, secrets, path=path, signature_header=signature_header, tolerance_s=tolerance_s, state_url=state_url
    )
    log.info(
        "StackOne webhook receiver on http://%s:%d%s (signature header %s, %d secret(s), tolerance %.0f s)",
        host,
        port,
        path,
        signature_header,
        len(secrets),
        tolerance_s,
    )
    try:
        uvicorn.Server(_config(app, log_level, access_log, host=host, port=port)).run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass


class RunningReceiver:
    """A receiver serving in a background thread; `stop()` or use as a context manager."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int, path: str):
        self._server, self._thread = server, thread
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}"
        self.endpoint = self.url + path

    @property
    def receiver(self):
        return self._server.config.app.state.receiver

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> RunningReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_receiver(
    data_dir: Path | str,
    secrets: str | Iterable[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    path: str = WEBHOOK_PATH,
    log_level: str = "warning",
    **kw,
) -> RunningReceiver:
    """Serve a receiver on `host:port` (0 = any free port) in a daemon thread; returns once it
    accepts connections."""
    app = create_app(data_dir, secrets, path=path, **kw)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(_config(app, log_level, False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="webhook-receiver", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the webhook receiver did not start")
        time.sleep(0.01)
    return RunningReceiver(server, thread, host, sock.getsockname()[1], path)
