"""Start and stop real service processes (Prometheus, Alertmanager, toolwatch) for integration tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import requests


def free_port() -> int:
    """A loopback port that was free a moment ago (the caller binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a TCP socket listening on ``port`` (Linux ``/proc``): a service
    whose bind lost a race for its port fails, while a connection test finds whoever won it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{f[9]}]")
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in inodes:
                return True
        except OSError:
            continue
    return False


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


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux ``/proc``), over all its threads."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited: no such process, or a zombie no one reaps (it has exited too)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


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


BIN = Path(sys.executable).parent / "toolwatch"


class ToolwatchProcess:
    """``toolwatch run`` in a child process; ``kill()`` is SIGKILL, ``stop()`` is SIGTERM."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None,
                 cpus: set[int] | None = None) -> None:
        """``cpus``: the child's CPU affinity (as ``taskset`` sets it); None = this process's."""
        self.data_dir = data_dir
        self.cpus = cpus
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
        cpus = self.cpus
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
                                     preexec_fn=pin)
        wait_until(
            lambda: requests.get(self.api_url + "/readyz", timeout=0.5).status_code == 200,
            timeout,
            "toolwatch to be ready",
            self.proc,
            self.log_path,
        )
        return self

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
