"""A detector that holds the first batch until released, so the pipeline queue fills up behind it."""

from __future__ import annotations

import threading

from toolwatch.detectors.base import Detector


class Gate(Detector):
    """Holds the first batch until released, so the pipeline queue fills up behind it."""

    name = "gate"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def observe(self, batch: object) -> list:
        self.entered.set()
        self.release.wait(20)
        return []

    def snapshot(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass
