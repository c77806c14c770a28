"""A tiny JSON webhook receiver for notification tests (a generic webhook or Slack)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson


class Inbox:
    """Records JSON POSTs; answers `status` (settable: 503 = down, 400 = refuses)."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.attempts = 0
        self.status = 200
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                inbox.attempts += 1
                if inbox.status == 200:
                    inbox.bodies.append(orjson.loads(body))
                self.send_response(inbox.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
