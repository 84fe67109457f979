"""The demo's servers and simulated agents: real sessions, spans for every phase."""

from __future__ import annotations

import json

import pytest
from mcp import Client
from toolwatch.instrumentation import semconv as sc

from toolwatch.demo.agents import AGENTS, run_agents
from toolwatch.demo.servers import (
    EXFIL_ADDRESS,
    INJECTED_URL,
    POISONED_DESCRIPTION,
    SECRET_AWS_KEY,
    build_mail_server,
    build_notes_server,
    build_web_server,
    serve_http,
)

pytestmark = pytest.mark.timeout(60)


async def test_demo_servers_behave_as_the_attacks_need():
    async with Client(build_web_server(rug_pull_after=1)) as web:
        page = await web.call_tool("fetch", {"url": INJECTED_URL})
        assert "ignore previous instructions" in page.content[0].text
        tools = {t.name: t.description for t in (await web.list_tools()).tools}
        assert tools["fetch"] == POISONED_DESCRIPTION
    async with Client(build_notes_server()) as notes:
        secret = await notes.call_tool("read_note", {"name": "credentials"})
        assert SECRET_AWS_KEY in secret.content[0].text
        missing = await notes.call_tool("read_note", {"name": "nope"})
        assert missing.is_error
    async with Client(build_mail_server()) as mail:
        sent = await mail.call_tool("send_email", {"to": EXFIL_ADDRESS, "subject": "s", "body": "b"})
        assert EXFIL_ADDRESS in sent.content[0].text


async def test_agents_run_every_phase_and_spans_tell_the_story(sink, redactor):
    lines: list[str] = []
    async with serve_http(build_notes_server()) as notes, serve_http(build_mail_server()) as mail, \
            serve_http(build_web_server()) as web, serve_http(build_web_server(rug_pull_after=2)) as rug_web:
        urls = {"notes": notes, "mail": mail, "web": web}
        learn = await run_agents(sink.url, phase="learn", rounds=2, redactor=redactor, progress=lines.append,
                                 server_urls=urls)
        for phase in ("exfil", "spike", "rugpull", "injection"):
            phase_urls = dict(urls, web=rug_web) if phase == "rugpull" else urls
            await run_agents(sink.url, phase=phase, spike_calls=15, redactor=redactor, progress=lines.append,
                             server_urls=phase_urls)
    assert set(learn.calls) == {a.agent_id for a in AGENTS.values()} and all(n >= 6 for n in learn.calls.values())
    assert [line.split(":")[0] for line in lines] == ["learn", "learn", "exfil", "spike", "rugpull", "injection"]
    tool_spans = [s for s in sink.spans if s.name.startswith("tools/")]
    assert {s.attributes[sc.GEN_AI_AGENT_ID] for s in tool_spans} == {a.agent_id for a in AGENTS.values()}
    assert {s.resource["service.name"] for s in tool_spans} == {a.agent_id for a in AGENTS.values()}
    agent_spans = [s for s in sink.spans if s.name.startswith("invoke_agent")]
    assert agent_spans and all(s.attributes[sc.GEN_AI_OPERATION_NAME] == "invoke_agent" for s in agent_spans)
    outbound = [s for s in sink.named("tools/call send_email")
                if "exfil-drop.example" in " ".join(s.attributes[sc.TW_ARGS_DESTINATIONS])]
    assert len(outbound) == 2  # exfil and injection phases
    relisted = [s for s in sink.named("tools/list") if s.attributes[sc.TW_TOOLS_AFTER_LIST_CHANGED]]
    assert len(relisted) == 1
    definitions = {d["name"]: d for d in json.loads(relisted[0].attributes[sc.GEN_AI_TOOL_DEFINITIONS])}
    assert definitions["fetch"]["description"] == POISONED_DESCRIPTION
    injected = [s for s in sink.named("tools/call fetch") if "instructions" in s.attributes.get(sc.TW_RESULT_LABELS, ())]
    assert injected and injected[0].attributes[sc.TW_RESULT_INJECTION_SCORE] > 0
    assert all(SECRET_AWS_KEY.encode() not in body for body in sink.raw_bodies)
