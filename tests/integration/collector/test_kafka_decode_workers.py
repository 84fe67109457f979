"""Kafka decode workers (``kafka.decode_processes``): real spawned processes decode and normalise record
values exactly as the consumer thread does, keep the order, dead-letter what does not decode, and
hand back (never lose) the records of a worker that died, hung or broke."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.otlp_build import add_span, request as build_request
from helpers.otlp_calls import Call, request, to_otlp_json
from toolwatch.collector import otlp
from toolwatch.collector.normalize import Normalized, Normalizer
from toolwatch.collector.receivers.decode_workers import DeadValue, DecodeWorkers
from toolwatch.collector.receivers.kafka_records import decode_record
from toolwatch.instrumentation.fingerprint import key_from_text
from toolwatch.instrumentation.redact import Redactor

KEY = "test-fingerprint-key-0123456789abcdef"
SECRET = "sk-live-abcdef0123456789"
MAX_BYTES = 1 << 20


def _values(n_records: int = 6, per_record: int = 5) -> list[bytes]:
    """Protobuf records of toolwatch-schema calls, one OpenLLMetry record with raw arguments among them."""
    values = []
    for r in range(n_records):
        calls = [Call(agent=f"agent-{r % 3}", server="files", tool=f"tool_{i % 4}", n=r * 100 + i, session=f"s{r}")
                 for i in range(per_record)]
        values.append(request(calls).SerializeToString())
    raw = build_request("agent-svc")
    add_span(raw, {
        "traceloop.span.kind": "tool", "traceloop.entity.name": "read_file", "traceloop.workflow.name": "files",
        "traceloop.entity.input": json.dumps({"tool_name": "read_file", "arguments": {"token": SECRET}}),
    }, name="read_file.tool")
    values.insert(2, raw.SerializeToString())
    return values


def _here(value: bytes | None, encoding: str = "otlp_proto") -> Normalized | DeadValue:
    """What the consumer thread makes of a value (the receiver's own path)."""
    try:
        req = decode_record(value, encoding, MAX_BYTES, attr_map=True)
    except otlp.DecodeError as exc:
        return DeadValue(exc.reason, str(exc))
    return Normalizer(Redactor(key_from_text(KEY)).redact_json_text).normalize(req)


def _same(got, want) -> None:
    assert type(got) is type(want)
    if isinstance(want, DeadValue):
        assert got == want
        return
    assert (got.spans, got.rejected, got.errors) == (want.spans, want.rejected, want.errors)
    assert got.calls == want.calls and got.listings == want.listings


@pytest.fixture
def workers():
    made: list[DecodeWorkers] = []

    def make(processes: int = 1, **kw) -> DecodeWorkers:
        w = DecodeWorkers(processes, fingerprint_key=KEY, encoding=kw.pop("encoding", "otlp_proto"),
                          max_record_bytes=MAX_BYTES, **kw)
        made.append(w)
        w.start()
        return w

    yield make
    for w in made:
        w.close()


@pytest.mark.parametrize("processes", [1, 3])
def test_workers_give_what_the_consumer_thread_gives_in_order(workers, processes):
    values = _values()
    values[4:4] = [b"", b"\x0a\xff\xff garbage", b"x" * (MAX_BYTES + 1), None]
    w = workers(processes)
    assert all(pid is not None for pid in w.pids) and os.getpid() not in w.pids
    for _round in range(2):  # the second round's values come as value-table slots
        got = w.decode(values)
        assert len(got) == len(values)
        for g, v in zip(got, values):
            _same(g, _here(v))
    assert w.fallbacks == 0
    reasons = [g.reason for g in got if isinstance(g, DeadValue)]
    assert reasons == ["empty", "bad_protobuf", "too_large", "empty"]
    redacted = [c for g in got if isinstance(g, Normalized) for c in g.calls if c.source == "openllmetry"]
    assert redacted and SECRET not in repr(redacted) and redacted[0].args_fingerprints  # redacted in the worker


def test_json_records(workers):
    values = [to_otlp_json(request([Call("a", "files", "read", n)])) for n in range(3)]
    w = workers(1, encoding="auto")
    for g, v in zip(w.decode(values), values):
        _same(g, _here(v, "auto"))


def test_a_killed_worker_hands_its_records_back_and_is_started_again(workers):
    values = _values()
    w = workers(1, restart_delay_s=0.0)
    first = w.pids[0]
    os.kill(first, signal.SIGKILL)
    time.sleep(0.2)
    got = w.decode(values)
    assert got == [None] * len(values) and w.fallbacks == len(values)  # nothing lost: decoded by the caller
    again = w.decode(values)  # a new worker, with a new value table
    assert w.restarts == 1 and w.pids[0] not in (None, first)
    for g, v in zip(again, values):
        _same(g, _here(v))


def test_a_hung_worker_is_replaced_after_the_reply_timeout(workers):
    values = _values()
    w = workers(2, reply_timeout_s=1.0, restart_delay_s=0.0)
    hung = w.pids[0]
    os.kill(hung, signal.SIGSTOP)
    try:
        t = time.monotonic()
        got = w.decode(values)
        assert time.monotonic() - t < 5
        n_first = got.index(next(g for g in got if g is not None))
        assert n_first > 0 and all(g is None for g in got[:n_first])  # the hung worker's run: handed back
        for g, v in zip(got[n_first:], values[n_first:]):
            _same(g, _here(v))
        assert w.pids[0] is None or w.pids[0] != hung
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed as hung: the expected case
            os.kill(hung, signal.SIGCONT)


def test_close_stops_the_workers(workers):
    w = workers(2)
    procs = [x.proc for x in w._workers if x is not None]
    w.close()
    assert all(not p.is_alive() for p in procs) and [p.exitcode for p in procs] == [0, 0]
    assert w.decode(_values()) == [None] * len(_values())  # closed: the caller decodes


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.one_of(st.none(), st.integers(0, 5000)), max_size=40), n=st.integers(1, 6))
def test_runs_are_contiguous_cover_every_value_and_one_per_worker(sizes, n):
    w = DecodeWorkers(n, fingerprint_key=KEY, encoding="otlp_proto", max_record_bytes=MAX_BYTES)
    values = [None if s is None else b"x" * s for s in sizes]
    runs = w._runs(values)
    assert len(runs) == n
    assert runs[0][0] == 0 and runs[-1][1] == len(values)
    assert all(a[1] == b[0] for a, b in zip(runs, runs[1:])) and all(s <= e for s, e in runs)
