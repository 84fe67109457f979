"""Run a real Daemon on its own event loop in a background thread, on ephemeral loopback ports."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from toolwatch.collector.config import Config
from toolwatch.collector.daemon import Daemon


class DaemonThread:
    def __init__(self, cfg: Config, **daemon_kwargs: Any) -> None:
        self.cfg = cfg
        self.kwargs = daemon_kwargs
        self.loop = asyncio.new_event_loop()
        self.daemon: Daemon | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> "DaemonThread":
        self._thread.start()

        async def _start() -> Daemon:
            d = Daemon(self.cfg, **self.kwargs)
            await d.start()
            return d

        self.daemon = self.call(_start())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.daemon is not None:
            self.call(self.daemon.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def otlp_http_url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.receiver('otlp_http').bound_port}/v1/traces"

    @property
    def otlp_grpc_target(self) -> str:
        return f"127.0.0.1:{self.daemon.receiver('otlp_grpc').bound_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.api.bound_port}"

    def drain(self, timeout: float = 10.0) -> None:
        self.call(self.daemon.pipeline.drained(timeout))

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.daemon.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


def make_config(tmp_path: Any, **kw: Any) -> Config:
    """The daemon's defaults on ephemeral loopback ports, so ``otlp_processes`` is ``auto`` (a worker
    process per OTLP receiver on 2+ CPUs, 1-2 s to start). Tests about OTLP ingestion keep it; tests
    about something else pass ``otlp_processes=0`` (OTLP in the daemon's process) to stay quick."""
    cfg = Config(
        otlp_http="127.0.0.1:0",
        otlp_grpc="127.0.0.1:0",
        listen="127.0.0.1:0",
        data_dir=str(tmp_path / "data"),
        **kw,
    )
    cfg.pipeline.batch_max_delay_ms = 20
    cfg.validate()
    return cfg
