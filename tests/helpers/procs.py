"""Run the real ``toolwatch`` command as a subprocess, on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

BIN = Path(sys.executable).parent / "toolwatch"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ToolwatchProcess:
    """``toolwatch run`` in a child process; ``kill()`` is SIGKILL, ``stop()`` is SIGTERM."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.http_port, self.grpc_port, self.api_port = free_port(), free_port(), free_port()
        self.args = [
            str(BIN),
            "run",
            "--data-dir",
            str(data_dir),
            "--otlp-http",
            f"127.0.0.1:{self.http_port}",
            "--otlp-grpc",
            f"127.0.0.1:{self.grpc_port}",
            "--listen",
            f"127.0.0.1:{self.api_port}",
            *extra,
        ]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"toolwatch-{self.api_port}.log"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def otlp_http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    def start(self, timeout: float = 20.0) -> "ToolwatchProcess":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"toolwatch exited with {self.proc.returncode}: {self.output()[-2000:]}")
            try:
                if requests.get(self.api_url + "/readyz", timeout=0.5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"toolwatch not ready within {timeout}s: {self.output()[-2000:]}")

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def __enter__(self) -> "ToolwatchProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if getattr(self, "log", None):
            self.log.close()


def run_cli(*args: str, timeout: float = 30.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
