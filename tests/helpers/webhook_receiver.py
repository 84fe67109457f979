"""A real local HTTP server that receives webhooks and fails, hangs or recovers on cue."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class _State:
    mode: str = "ok"  # ok | fail | hang
    hang_s: float = 10.0
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class WebhookReceiver:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        state = self.state = _State()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with state.lock:
                    state.attempts += 1
                    mode = state.mode
                if mode == "hang":
                    time.sleep(state.hang_s)
                if mode in ("fail", "hang"):
                    self.send_response(503)
                    self.end_headers()
                    return
                with state.lock:
                    state.received.append(Received(self.path, dict(self.headers.items()), body, time.time()))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def set_mode(self, mode: str) -> None:
        with self.state.lock:
            self.state.mode = mode

    @property
    def received(self) -> list[Received]:
        with self.state.lock:
            return list(self.state.received)

    def wait_for(self, n: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = self.received
            if len(got) >= n:
                return got
            time.sleep(0.05)
        raise AssertionError(f"webhook receiver got {len(self.received)} deliveries, expected {n} within {timeout}s")

    def __enter__(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
