"""The HTTP enforcement glue: SSE events relayed whole under any chunking, listings filtered,
notifications only between events, queued when no GET stream is open, and POST screening."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from toolwatch.instrumentation.proxy.decisions import EnforceStats, Verdict
from toolwatch.instrumentation.proxy.enforce import ERROR_CODES, LIST_CHANGED, Enforcer
from toolwatch.instrumentation.proxy.enforce_http import EventRelay, SessionStreams, needs_screening, screen, sse_event


class Written:
    """Where the relay writes: the client's response."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.writes.append(data)


class Seen:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def submit(self, tracker, direction, raw, t_ns) -> None:
        self.messages.append(raw)


class FakeClient:
    """Decisions without a daemon: a fixed verdict per tool and a fixed set of quarantined tools."""

    def __init__(self, verdicts: dict[str, Verdict] | None = None, hidden: dict[str, str] | None = None) -> None:
        self.verdicts = verdicts or {}
        self.hidden = hidden or {}
        self.stats = EnforceStats()
        self.options = SimpleNamespace(poll_s=3600.0)

    async def decide(self, facts):
        return self.verdicts.get(facts["tool"], Verdict("allow", "ok"))

    async def quarantined(self, server, tools):
        return dict(self.hidden)


class Identity:
    def redact(self, value):
        return SimpleNamespace(value=value, bytes=len(json.dumps(value)))


def make_enforcer(client: FakeClient, recorder: Seen | None = None) -> Enforcer:
    tracker = SimpleNamespace(info=SimpleNamespace(agent_id="a", server_name="srv"))
    return Enforcer(client, tracker, recorder or Seen(), Identity(), now_ns=lambda: 0)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    chunks, i, k = [], 0, 0
    while i < len(data):
        step = cuts[k % len(cuts)]
        chunks.append(data[i:i + step])
        i, k = i + step, k + 1
    return chunks


MESSAGES = st.lists(st.dictionaries(st.sampled_from(["id", "x", "method"]), st.integers() | st.text(max_size=8),
                                    max_size=3), max_size=6)


@settings(max_examples=80, deadline=None)
@given(MESSAGES, st.lists(st.integers(min_value=1, max_value=25), min_size=1, max_size=8), st.booleans())
def test_any_chunking_relays_the_same_whole_events(messages, cuts, crlf):
    nl = b"\r\n" if crlf else b"\n"
    events = [b"event: message" + nl + b"id: " + str(i).encode() + nl + b"data: " + json.dumps(m).encode() + nl + nl
              for i, m in enumerate(messages)]

    async def run() -> tuple[Written, Seen]:
        out, seen = Written(), Seen()
        relay = EventRelay(out, None, SimpleNamespace(), seen, 1 << 20, lambda: 0)
        for chunk in chunked(b"".join(events), cuts):
            await relay.feed(chunk)
        await relay.finish()
        return out, seen

    out, seen = asyncio.run(run())
    assert out.writes == [e.replace(b"\r\n", b"\n") for e in events]  # one write per whole event
    assert seen.messages == [json.dumps(m).encode() for m in messages]


async def test_listing_loses_quarantined_tools_and_keeps_the_event_id():
    client = FakeClient(hidden={"fetch": "changed definition awaits approval"})
    enforcer = make_enforcer(client)
    screening = await screen(enforcer, b'{"jsonrpc":"2.0","id":3,"method":"tools/list"}')
    assert screening.forwarded and not screening.answers
    listing = {"jsonrpc": "2.0", "id": 3, "result": {"tools": [{"name": "fetch"}, {"name": "search"}]}}
    out = Written()
    relay = EventRelay(out, enforcer, enforcer.tracker, Seen(), 1 << 20, lambda: 0)
    await relay.feed(b"event: message\nid: 9\ndata: " + json.dumps(listing).encode() + b"\n\n")
    (event,) = out.writes
    assert event.startswith(b"event: message\nid: 9\ndata: ")
    data = json.loads(event.split(b"data: ", 1)[1])
    assert [t["name"] for t in data["result"]["tools"]] == ["search"]
    assert enforcer.hidden == {"fetch": "changed definition awaits approval"}
    await enforcer.stop()


async def test_injection_waits_for_an_oversized_event_to_end():
    out = Written()
    relay = EventRelay(out, None, SimpleNamespace(), Seen(), 64, lambda: 0)
    await relay.feed(b"data: " + b"x" * 100)  # longer than max_bytes, not finished: streams through
    await relay.inject(LIST_CHANGED)
    assert all(LIST_CHANGED not in w for w in out.writes)
    await relay.feed(b"yy\n\ndata: {}\n\n")
    joined = b"".join(out.writes)
    assert joined == b"data: " + b"x" * 100 + b"yy\n\n" + sse_event(LIST_CHANGED) + b"data: {}\n\n"


async def test_notifications_wait_for_a_get_stream_and_are_not_repeated():
    streams = SessionStreams()
    await streams.notify("s1", LIST_CHANGED)
    await streams.notify("s1", LIST_CHANGED)
    out = Written()
    relay = EventRelay(out, None, SimpleNamespace(), Seen(), 1 << 20, lambda: 0)
    assert streams.attach("s1", relay) == [LIST_CHANGED]
    await streams.notify("s1", LIST_CHANGED)
    assert out.writes == [sse_event(LIST_CHANGED)]
    streams.detach("s1", relay)
    await streams.notify("s1", b"{}")
    assert out.writes == [sse_event(LIST_CHANGED)] and streams.attach("s1", relay) == [b"{}"]


async def test_screening_forwards_allowed_and_answers_denied_and_batched_calls():
    client = FakeClient({"rm": Verdict("deny", "not for you", "subjects[0].deny_tools")})
    enforcer = make_enforcer(client)
    allowed = await screen(enforcer, b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ls"}}')
    denied = await screen(enforcer, b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"rm"}}')
    batch = await screen(enforcer, json.dumps([
        {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "ls"}},
        {"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "ls"}}]).encode())
    assert allowed.forwarded and not allowed.held and not allowed.answers
    assert not denied.forwarded and json.loads(denied.answer_body())["error"]["code"] == ERROR_CODES["denied"]
    assert [a["id"] for a in json.loads(batch.answer_body())] == [5, 6] and not batch.forwarded


async def test_held_call_is_decided_later():
    client = FakeClient({"rm": Verdict("hold", "destructive", "destructive")})
    gate = asyncio.Event()

    async def hold(facts, verdict):
        await gate.wait()
        return Verdict("allow", "approved", "hold.approved", "hold")

    client.hold = hold
    enforcer = make_enforcer(client)
    held = await screen(enforcer, b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rm"}}')
    assert held.held and not held.forwarded
    gate.set()
    await asyncio.wait_for(held.decided, 5)
    assert held.forwarded and not held.answers


def test_only_calls_and_listings_are_screened():
    assert needs_screening({"method": "tools/call"}) and needs_screening([{"method": "tools/list"}, 1])
    assert not needs_screening({"method": "initialize"}) and not needs_screening(None)
    assert not needs_screening([{"method": "ping"}])


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"")))
def test_an_injected_event_carries_the_message_back_intact(message):
    async def run() -> list[bytes]:
        seen = Seen()
        relay = EventRelay(Written(), None, SimpleNamespace(), seen, 1 << 20, lambda: 0)
        await relay.feed(sse_event(message))
        return seen.messages

    # SSE joins data lines with "\n": the message comes back (a final newline is not kept)
    assert asyncio.run(run()) == [b"\n".join(message.splitlines())]
