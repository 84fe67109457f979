"""Start and stop real service processes (Prometheus, Alertmanager, toolwatch) for integration tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import requests


def free_port() -> int:
    """A loopback port that was free a moment ago (the caller binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise AssertionError(f"{binary} not found: run 'make services' (installs it from Debian's packages)")
    return path


def wait_until(pred: Callable[[], object], timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise AssertionError(f"{what}: process exited with {proc.returncode}\n{tail}")
        try:
            got = pred()
        except (requests.RequestException, ValueError, KeyError):
            got = None
        if got:
            return got
        time.sleep(0.1)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")


class Proc:
    """A subprocess with its output in a log file; stopped (terminate, then kill) on exit."""

    def __init__(self, args: list[str], log: Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.args, self.log, self.cwd, self.env = args, log, cwd, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Proc":
        fh = open(self.log, "ab")
        self.proc = subprocess.Popen(self.args, stdout=fh, stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env)
        fh.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> "Proc":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
