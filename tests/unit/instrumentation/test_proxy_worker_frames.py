"""The span worker's hand-over must lose nothing: frames survive any pipe chunking, and replaying
them in the worker gives the spans and counters the in-process ``Recorder`` path gives."""

from __future__ import annotations

import asyncio
import json
import random
import struct
import sys

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redactor_double import RedactorDouble
from toolwatch.instrumentation.proxy.framing import Oversized
from toolwatch.instrumentation.proxy.http import unanswered
from toolwatch.instrumentation.proxy.tracker import CallTracker, ProxyStats, SessionTrackers, id_key
from toolwatch.instrumentation.proxy.worker import (
    KIND_DELETE, KIND_FAIL, SessionRef, SpanWorker, WorkerConfig, decode, frame_head, observe,
)
from toolwatch.instrumentation.spans import SessionInfo

def encode(kind: int, session_id: str, t_ns: int, payload: bytes, size: int = -1) -> bytes:
    """One whole frame, as ``SpanWorker`` writes it."""
    return frame_head(kind, session_id, t_ns, len(payload), size) + payload


frames = st.lists(st.tuples(
    st.integers(1, 4), st.text(max_size=20), st.integers(0, 2**63 - 1), st.integers(-1, 2**40),
    st.binary(max_size=300)), max_size=20)


@given(frames, st.lists(st.integers(1, 400), max_size=30))
def test_frames_survive_any_chunking(items, cuts):
    stream = b"".join(encode(kind, sid, t, payload, size) for kind, sid, t, size, payload in items)
    got, buf, pos = [], bytearray(), 0
    for cut in [*cuts, len(stream)]:
        buf += stream[pos:pos + cut]
        pos += cut
        decoded, used = decode(buf)
        del buf[:used]
        got += decoded
    buf += stream[pos:]
    decoded, used = decode(buf)
    got += decoded
    assert got == [(kind, sid, t, size, payload) for kind, sid, t, size, payload in items]
    assert used == len(buf)


ids = st.one_of(st.integers(-3, 6), st.sampled_from(["1", "a", 'q"x']))
tools = st.sampled_from(["read_note", "list_notes", "search"])


@st.composite
def observations(draw):
    """(session, direction, message or Oversized) — requests, answers, errors, notifications, junk."""
    session = draw(st.sampled_from(["s1", "s2", ""]))
    choice = draw(st.integers(0, 7))
    i = draw(ids)
    if choice == 0:
        body = {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                "params": {"name": draw(tools), "arguments": {"q": draw(st.text(max_size=12))}}}
        return session, "c2s", json.dumps(body).encode()
    if choice == 1:
        return session, "c2s", json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/list"}).encode()
    if choice == 2:
        result = {"content": [{"type": "text", "text": draw(st.text(max_size=30))}],
                  "isError": draw(st.booleans())}
        return session, "s2c", json.dumps({"jsonrpc": "2.0", "id": i, "result": result}).encode()
    if choice == 3:
        return session, "s2c", json.dumps({"jsonrpc": "2.0", "id": i, "error": {"code": -1, "message": "x"}}).encode()
    if choice == 4:
        return session, "s2c", Oversized(json.dumps({"jsonrpc": "2.0", "id": i}).encode()[:-1], 10**7)
    if choice == 5:
        return session, "c2s", json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                           "params": {"requestId": i}}).encode()
    if choice == 6:
        return session, "delete", b""
    return session, draw(st.sampled_from(["c2s", "s2c"])), draw(st.binary(max_size=20))


def spans_of(run) -> tuple[list, ProxyStats]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stats = ProxyStats()
    sessions = SessionTrackers(provider.get_tracer("t"), RedactorDouble(), stats, agent_id="a",
                               server_address="127.0.0.1", server_port=80)
    run(sessions)
    ended = [(s.name, s.start_time, s.end_time, s.status.status_code,
              {k: v for k, v in s.attributes.items() if k != "mcp.session.id"}) for s in exporter.get_finished_spans()]
    return ended, stats


@settings(max_examples=150, deadline=None)
@given(st.lists(observations(), max_size=30), st.lists(ids, max_size=4))
def test_replayed_frames_give_the_in_process_spans(items, failing):
    """In-process (``Recorder`` -> ``CallTracker.observe``) vs. frames -> ``decode`` -> ``observe``."""
    def inline(sessions: SessionTrackers) -> None:
        for t, (sid, direction, raw) in enumerate(items):
            if direction == "delete":
                sessions.forget(sid)
            else:
                sessions.get(sid).observe(direction, raw, t)
        sessions.get("s1").fail_requests(failing, "server_exited", now_ns=999)

    def framed(sessions: SessionTrackers) -> None:
        stream = bytearray()
        for t, (sid, direction, raw) in enumerate(items):
            if direction == "delete":
                stream += encode(KIND_DELETE, sid, 0, b"")
            elif isinstance(raw, Oversized):
                stream += encode(1 if direction == "c2s" else 2, sid, t, raw.head, raw.size)
            else:
                stream += encode(1 if direction == "c2s" else 2, sid, t, raw)
        stream += encode(KIND_FAIL, "s1", 999, json.dumps({"ids": failing, "error_type": "server_exited"}).encode())
        decoded, used = decode(stream)
        assert used == len(stream)
        for frame in decoded:
            observe(sessions, *frame)

    (a, stats_a), (b, stats_b) = spans_of(inline), spans_of(framed)
    assert a == b
    assert stats_a == stats_b


@settings(max_examples=200, deadline=None)
@given(st.lists(ids, max_size=6), st.lists(st.tuples(ids, st.integers(0, 2)), max_size=6))
def test_unanswered_is_what_the_tracker_fails(requested, answers):
    """A broken stream in worker mode: the proxy's own reckoning of open ids matches the tracker's."""
    body = json.dumps([{"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "t"}}
                       for i in requested]).encode()
    relayed: list[bytes | Oversized] = []
    for i, form in answers:
        message = {"jsonrpc": "2.0", "id": i, "result": {}}
        if form == 0:
            relayed.append(json.dumps(message).encode())
        elif form == 1:
            relayed.append(json.dumps([message, {"jsonrpc": "2.0", "method": "notifications/progress"}]).encode())
        else:
            relayed.append(Oversized(json.dumps(message).encode()[:-2], 10**8))
    tracker = CallTracker(SessionInfo(agent_id="a", emitter="proxy"), TracerProvider().get_tracer("t"),
                          RedactorDouble(), ProxyStats())
    tracker.observe("c2s", body, 1)
    for event in relayed:
        tracker.observe("s2c", event, 2)
    from toolwatch.instrumentation.proxy.tracker import request_ids

    expected = tracker.fail_requests(request_ids(body), "server_exited")
    assert [id_key(i) for i in unanswered(request_ids(body), relayed)] == [id_key(i) for i in expected]


def unanswered_before(ids: list, relayed: list) -> list:
    """``http.unanswered`` as it was before it shared ``tracker.response_ids`` (3026c2a), for comparison."""
    import re

    id_in_head = re.compile(rb'"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")')
    answered: set[str] = set()
    for event in relayed:
        if isinstance(event, Oversized):
            match = id_in_head.search(event.head)
            if match is not None:
                try:
                    answered.add(id_key(json.loads(match.group(1))))
                except ValueError:
                    pass
            continue
        try:
            value = json.loads(event)
        except (ValueError, UnicodeDecodeError):
            continue
        for message in value if isinstance(value, list) else [value]:
            if isinstance(message, dict) and not isinstance(message.get("method"), str) \
                    and message.get("id") is not None:
                answered.add(id_key(message["id"]))
    out = []
    for request_id in ids:
        key = id_key(request_id)
        if key not in answered:
            answered.add(key)
            out.append(request_id)
    return out


relayed_events = st.one_of(
    st.builds(lambda i, m: json.dumps({"jsonrpc": "2.0", "id": i, **m}).encode(), ids | st.none(),
              st.sampled_from([{"result": {}}, {"error": {}}, {"method": "x"}, {"method": 3}, {}])),
    st.builds(lambda i, j: json.dumps([{"id": i, "result": {}}, 7, {"id": j, "method": "m"}]).encode(), ids, ids),
    st.builds(lambda i, cut: Oversized(json.dumps({"jsonrpc": "2.0", "id": i}).encode()[:cut], 10**8), ids,
              st.integers(0, 40)),
    st.builds(lambda head: Oversized(head, 10**8), st.sampled_from([b'"id": "\\x"', b'"id": 01', b'"id":"a\\"b"'])),
    st.binary(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ids, max_size=6), st.lists(relayed_events, max_size=8))
def test_unanswered_is_what_it_was(requested, relayed):
    """Sharing the tracker's reply matching changed nothing: junk, batches, methods and cut heads included."""
    assert unanswered(requested, relayed) == unanswered_before(requested, relayed)


async def test_frames_beyond_the_bound_are_dropped_and_counted():
    """Like ``Recorder``'s queue: at most ``max_queue`` unacknowledged observations, the rest counted."""
    stats = ProxyStats()
    worker = SpanWorker(WorkerConfig(agent_id="a"), stats, max_queue=3)
    worker._proc = object()  # type: ignore[assignment]  # admitted as if a worker ran; nothing is written
    for t in range(5):
        worker.submit(SessionRef("s"), "c2s", b"{}", t)
    assert stats.dropped_observations == 2
    worker._account({"done": 3, "messages": {"c2s": 3, "s2c": 0}, "spans": 0})
    worker.submit(SessionRef("s"), "c2s", b"{}", 9)
    assert stats.dropped_observations == 2 and stats.messages["c2s"] == 3
    worker._out.clear()
    worker._proc = None
    worker.submit(SessionRef("s"), "c2s", b"{}", 10)  # no worker (restarting): dropped and counted
    assert stats.dropped_observations == 3


def test_a_session_id_that_is_not_utf8_survives_the_frame():
    """The listener decodes header bytes with surrogateescape: an Mcp-Session-Id that is not UTF-8
    reaches the worker byte for byte instead of failing the exchange."""
    frame = encode(1, b"a\xffb".decode("utf-8", "surrogateescape"), 5, b"{}")
    frames, used = decode(frame)
    assert used == len(frame)
    assert frames[0][1].encode("utf-8", "surrogateescape") == b"a\xffb"


def encode_before(kind: int, session_id: str, t_ns: int, payload: bytes, size: int = -1) -> bytes:
    """``worker.encode`` as of 3026c2a, what ``SpanWorker`` wrote to the pipe (with two more copies): the reference."""
    header = struct.Struct("<IBqqH")
    sid = session_id.encode("utf-8", "surrogateescape")
    return header.pack(header.size - 4 + len(sid) + len(payload), kind, t_ns, size, len(sid)) + sid + payload


async def written_to_a_real_pipe(seed: int) -> tuple[bytes, bytes]:
    """Drive a ``SpanWorker`` whose worker is ``cat`` (a real pipe, read back); return (written, expected)."""
    rng = random.Random(seed)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import shutil, sys; shutil.copyfileobj(sys.stdin.buffer, sys.stdout.buffer)",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    read_back = asyncio.create_task(proc.stdout.read())
    worker = SpanWorker(WorkerConfig(agent_id="a"), ProxyStats(), max_queue=1 << 30)
    worker._proc = proc  # type: ignore[assignment]  # frames go to cat instead of the span worker
    expected = bytearray()
    for t in range(400):
        sid = rng.choice(["", "s1", "sess-\u00e9", b"a\xffb".decode("utf-8", "surrogateescape")])
        big = rng.random() < 0.05  # larger than a pipe's buffer: the transport keeps the rest for later
        payload = rng.randbytes(rng.randint(200_000, 1_500_000) if big else rng.randint(0, 3000))
        step = rng.randint(0, 6)
        if step == 0:
            worker.delete(sid)
            expected += encode_before(KIND_DELETE, sid, 0, b"")
        elif step == 1:
            worker.fail(sid, [t, str(t)], "server_exited", t)
            expected += encode_before(KIND_FAIL, sid, t, json.dumps({"ids": [t, str(t)],
                                                                    "error_type": "server_exited"}).encode())
        elif step == 2:
            worker.submit(SessionRef(sid), "s2c", Oversized(payload[:4096], len(payload) + 10**7), t)
            expected += encode_before(2, sid, t, payload[:4096], len(payload) + 10**7)
        else:
            direction = rng.choice(["c2s", "s2c"])
            raw = bytearray(payload) if step == 3 else payload
            worker.submit(SessionRef(sid), direction, raw, t)
            if step == 3:
                raw[:1] = b"!"  # the caller's buffer changes after the submit: the frame must not
            expected += encode_before(1 if direction == "c2s" else 2, sid, t, payload)
        move = rng.randint(0, 4)
        if move == 0:
            worker.hold()
        elif move == 1:
            worker.release()
        elif move == 2:
            await asyncio.sleep(0)  # a scheduled flush runs
        elif move == 3:
            await asyncio.sleep(0.025 if t % 50 == 0 else 0.001)  # FLUSH_DELAY may pass while held
    worker._hot = 0
    worker.release()
    worker._flush()
    proc.stdin.close()
    written = await asyncio.wait_for(read_back, 60)
    await proc.wait()
    return written, bytes(expected)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_bytes_written_to_the_worker_are_the_frames_as_before(loop, seed):
    """``SpanWorker`` copies a payload once (joining the batch) instead of three times: the bytes the worker
    reads are unchanged, also when the caller reuses its buffer or the pipe is full and the transport keeps
    part of a batch for later."""
    run = asyncio.run if loop == "asyncio" else pytest.importorskip("uvloop").run
    written, expected = run(written_to_a_real_pipe(seed))
    assert len(written) == len(expected) and written == expected
