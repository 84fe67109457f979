"""Line framing of the enforcing pumps: any chunking yields the same whole lines; big ones are refused."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from toolwatch.instrumentation.proxy.decisions import Verdict
from toolwatch.instrumentation.proxy.enforce import ERROR_CODES, refusal
from toolwatch.instrumentation.proxy.enforce_stdio import pump_client


class Collect:
    """Stands in for the Enforcer: records the lines the pump hands it."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    async def from_client(self, line: bytes, to_server, to_client) -> None:
        self.lines.append(line)


class Sink:
    def __init__(self) -> None:
        self.lines: list[bytes] = []

    async def line(self, data: bytes) -> None:
        self.lines.append(data)


async def run_pump(chunks: list[bytes], max_bytes: int) -> tuple[list[bytes], list[bytes]]:
    reader = asyncio.StreamReader()
    for c in chunks:
        reader.feed_data(c)
    reader.feed_eof()
    enforcer, client = Collect(), Sink()
    assert await pump_client(reader, Sink(), client, enforcer, max_bytes) == "eof"
    return enforcer.lines, client.lines


LINES = st.lists(st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\n", b"x")), max_size=8)


@settings(max_examples=60, deadline=None)
@given(LINES, st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=10))
def test_any_chunking_delivers_the_same_lines(lines, cuts):
    data = b"".join(line + b"\n" for line in lines)
    chunks, i, k = [], 0, 0
    while i < len(data):
        step = cuts[k % len(cuts)]
        chunks.append(data[i:i + step])
        i, k = i + step, k + 1
    got, refused = asyncio.run(run_pump(chunks, max_bytes=1000))
    assert got == [line.rstrip(b"\r") for line in lines if line.rstrip(b"\r").strip()]
    assert refused == []


def test_oversized_call_is_refused_never_forwarded():
    big = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                      "params": {"name": "w", "arguments": {"t": "x" * 500}}}).encode()
    got, refused = asyncio.run(run_pump([big[:100], big[100:] + b"\n", b'{"id":1}\n'], max_bytes=200))
    assert got == [b'{"id":1}']
    (answer,) = refused
    error = json.loads(answer)["error"]
    assert json.loads(answer)["id"] == 9 and error["data"]["rule"] == "max_message_bytes"


def test_refusal_says_why_and_what_to_do_without_arguments():
    body = json.loads(refusal("r1", "rm", Verdict("deny", "tool 'fs/rm' is denied", "subjects[0].deny_tools")))
    assert body["id"] == "r1" and body["error"]["code"] == ERROR_CODES["denied"]
    assert body["error"]["message"] == "toolwatch blocked tools/call 'rm': tool 'fs/rm' is denied"
    assert body["error"]["data"]["rule"] == "subjects[0].deny_tools" and "do not retry" in body["error"]["data"]["advice"]
    quarantined = json.loads(refusal(1, "f", Verdict("deny", "q", "quarantine", "proxy", True)))
    assert quarantined["error"]["code"] == ERROR_CODES["quarantined"]
