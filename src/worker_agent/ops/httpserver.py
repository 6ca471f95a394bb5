"""The worker's HTTP endpoint: /metrics (Prometheus), /healthz (process alive), /readyz (able to take jobs)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

# Problems that keep the worker from taking jobs; empty when it is ready.
Readiness = Callable[[], list[str]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/readyz":
            problems = self.server.readiness()
            if problems:
                self._json(503, {"status": "unready", "reason": "; ".join(problems), "problems": problems})
            else:
                self._json(200, {"status": "ready"})
        else:
            self._json(404, {"error": "not found", "paths": ["/metrics", "/healthz", "/readyz"]})

    def do_HEAD(self) -> None:
        self.do_GET()

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, json.dumps(body).encode() + b"\n", "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scraped every few seconds: not worth a log line each time


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], readiness: Readiness) -> None:
        self.readiness = readiness
        super().__init__(address, _Handler)


def serve(port: int, readiness: Readiness, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Listen now (an OSError if the port is taken) and answer on a daemon thread; stop with .shutdown()."""
    server = _Server((host, port), readiness)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
