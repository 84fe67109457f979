"""The tests' Kafka broker (helpers/kafka_broker.py) is the process its tests signal.

A test of a hung broker SIGSTOPs it. Were its port taken between ``free_port`` and tansu's bind,
tansu would exit while a connection test found whoever won the port: the test would then stop a
dead process and talk to another server (one CI run failed so: "DID NOT RAISE KafkaTimeoutError")."""

from __future__ import annotations

import socket

import pytest

import helpers.kafka_broker as kb
from helpers.procs import listens_on


@pytest.mark.parametrize("listening", [True, False], ids=["by-a-listener", "by-a-bound-socket"])
def test_a_broker_whose_port_was_taken_starts_on_another_and_listens_itself(tmp_path, monkeypatch, listening):
    """Taken by a listener, a connection test finds it; by a socket that only binds, nothing answers
    and tansu exits (status 0, "AddrInUse" in its log). Either way it starts again elsewhere."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        if listening:
            other.listen()
        taken = other.getsockname()[1]
        ports = iter([taken])
        real = kb.free_port
        monkeypatch.setattr(kb, "free_port", lambda: next(ports, None) or real())
        broker = kb.KafkaBroker(tmp_path / "tansu.log")
        assert broker.port == taken
        try:
            broker.start()
            assert broker.port != taken and broker.bootstrap == f"127.0.0.1:{broker.port}"
            assert listens_on(broker._proc.pid, broker.port)
            assert not listens_on(broker._proc.pid, taken)
            broker.create_topic("answers")  # a Kafka broker answers there
        finally:
            broker.stop()
