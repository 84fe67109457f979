"""Fixtures for enforcement tests: a real daemon with a policy, a webhook receiver, and the proxy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "helpers"))

from daemon import DaemonThread, make_config  # noqa: E402
from webhook_receiver import WebhookReceiver  # noqa: E402

from toolwatch.collector.config import WebhookConfig  # noqa: E402

from enforce_support import HOOK_SECRET, POLICY, TOKEN  # noqa: E402


@pytest.fixture
def hooks():
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def daemon(tmp_path, hooks):
    cfg = make_config(tmp_path, otlp_processes=0, api_token=TOKEN, detectors={"policy": POLICY},
                      webhooks=[WebhookConfig(url=hooks.url, secret=HOOK_SECRET)])
    with DaemonThread(cfg) as d:
        yield d


@pytest.fixture
async def sink():
    from otlp_sink import OtlpSink

    s = await OtlpSink().start()
    yield s
    await s.stop()
