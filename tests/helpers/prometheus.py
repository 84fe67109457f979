"""A real Prometheus (the Debian ``prometheus`` binary) scraping given targets on a free loopback port."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import requests

from helpers.procs import free_port, wait_until


BINARY = shutil.which("prometheus")


class PrometheusServer:
    """``with PrometheusServer(tmp, ["127.0.0.1:9464"]) as prom: prom.query("up")``; stopped on exit."""

    def __init__(self, workdir: Path, targets: list[str], *, job: str = "toolwatch", scrape_interval: str = "1s") -> None:
        if BINARY is None:
            raise RuntimeError("prometheus binary not found: run `make services` (installs Debian's prometheus)")
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            "global:\n"
            f"  scrape_interval: {scrape_interval}\n"
            f"  evaluation_interval: {scrape_interval}\n"
            "scrape_configs:\n"
            f"  - job_name: {job}\n"
            "    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
        )
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "PrometheusServer":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                str(BINARY),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: requests.get(self.url + "/-/ready", timeout=0.5).status_code == 200,
                20,
                "prometheus to be ready",
                self.proc,
                self.log_path,
            )
        except AssertionError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def query(self, expr: str) -> dict[str, Any]:
        """The API's JSON answer for an instant query (``status`` is ``error`` for a bad expression)."""
        return requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=5).json()

    def label_values(self, label: str, match: str) -> list[str]:
        body = requests.get(self.url + f"/api/v1/label/{label}/values", params={"match[]": match}, timeout=5).json()
        return list(body.get("data", []))

    def scrapes_ok(self) -> int:
        """How many scrapes of the targets succeeded so far (counted from ``up`` samples)."""
        data = self.query("sum(count_over_time(up[1h]) and up == 1)").get("data", {}).get("result", [])
        return int(float(data[0]["value"][1])) if data else 0
