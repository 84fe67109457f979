"""Framing of the proxied byte streams: any chunking gives the same messages; memory is bounded."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from toolwatch.instrumentation.proxy.framing import LineSplitter, Oversized, SseSplitter

line_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(line_bytes, max_size=8), cuts=st.lists(st.integers(0, 10_000), max_size=10),
       limit=st.integers(1, 50))
def test_line_splitter_is_chunking_independent_and_bounded(lines, cuts, limit):
    data = b"".join(line + b"\n" for line in lines)
    splitter = LineSplitter(limit)
    got = [m for chunk in chunked(data, cuts) for m in splitter.feed(chunk)]
    expected = []
    for line in lines:
        if len(line) > limit:  # over the limit before its end is seen, blank or not
            expected.append(Oversized(line[:4096], len(line)))
        elif line.strip():
            expected.append(line)
    assert got == expected
    assert len(splitter._buf) <= limit


def test_line_splitter_partial_and_crlf():
    s = LineSplitter(100)
    assert list(s.feed(b'{"a":1}\r\n{"b"')) == [b'{"a":1}']
    assert s.partial
    assert list(s.feed(b":2}\n")) == [b'{"b":2}'] and not s.partial


@settings(max_examples=100, deadline=None)
@given(events=st.lists(st.lists(line_bytes.filter(bool), min_size=1, max_size=3), max_size=5),
       cuts=st.lists(st.integers(0, 10_000), max_size=10), crlf=st.booleans())
def test_sse_splitter_yields_each_event_data(events, cuts, crlf):
    nl = b"\r\n" if crlf else b"\n"
    data = b"".join(b"event: message" + nl + b"".join(b"data: " + d + nl for d in ev) + b"id: 1" + nl + nl
                    for ev in events)
    splitter = SseSplitter(10_000)
    got = [m for chunk in chunked(data, cuts) for m in splitter.feed(chunk)]
    assert got == [b"\n".join(ev) for ev in events]


def test_sse_oversized_event_is_reported_not_buffered():
    s = SseSplitter(64)
    big = b"data: " + b'{"jsonrpc":"2.0","id":5,"result":"' + b"x" * 500 + b'"}\n\n'
    (event,) = list(s.feed(big))
    assert isinstance(event, Oversized) and event.size > 64 and b'"id":5' in event.head
    assert list(s.feed(b"data: ok\n\n")) == [b"ok"]
