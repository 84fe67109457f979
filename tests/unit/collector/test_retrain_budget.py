"""The retrainer keeps refits to ``max_share`` of wall time, however often detectors ask."""

from __future__ import annotations

import pytest

from toolwatch.collector.config import Config, ConfigError
from toolwatch.collector.retrain import Retrainer
from toolwatch.detectors.events import Batch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Greedy:
    """Always wants a refit; each refit takes ``cost`` seconds on the clock."""

    name = "greedy"

    def __init__(self, clock: Clock, cost: float) -> None:
        self.clock, self.cost, self.runs = clock, cost, 0

    def needs_retrain(self) -> list[str]:
        return ["a"]

    def retrain(self, keys: object = None) -> list[str]:
        self.runs += 1
        self.clock.now += self.cost
        return ["a"]


async def _drive(share: float, seconds: float, step: float = 0.1) -> tuple[int, float]:
    clock = Clock()
    det = Greedy(clock, cost=0.5)
    rt = Retrainer([det], max_share=share, clock=clock)
    start = clock.now
    while clock.now - start < seconds:
        rt(Batch(), [])
        if rt._task is not None:
            await rt._task
        clock.now += step  # a batch's worth of time passes
    return det.runs, (clock.now - start)


async def test_refits_take_at_most_their_share_of_wall_time() -> None:
    runs, elapsed = await _drive(0.25, 60.0)
    assert runs * 0.5 / elapsed <= 0.25 + 0.01
    assert runs >= 20  # still refits regularly: about one every 2 s here


async def test_a_full_share_refits_back_to_back() -> None:
    runs, elapsed = await _drive(1.0, 10.0)
    assert runs * 0.5 / elapsed > 0.8


def test_share_outside_zero_one_is_a_named_config_error() -> None:
    cfg = Config()
    cfg.pipeline.retrain_max_share = 0.0
    with pytest.raises(ConfigError, match="pipeline.retrain_max_share"):
        cfg.validate()


def test_the_daemon_default_is_bounded() -> None:
    assert 0 < Config().pipeline.retrain_max_share < 1
