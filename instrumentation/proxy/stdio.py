"""The stdio proxy: spawn the MCP server, pump bytes both ways unchanged, record on the side.

Each chunk read is written to the other side before anything else happens; only then is it
framed into lines for the tracker. When the server dies, in-flight client requests are answered
with a JSON-RPC error so the client never waits forever, and the reason goes to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .framing import LineSplitter
from .tracker import CallTracker, Direction, Recorder

CHUNK = 64 * 1024
SERVER_EXITED = -32000
"""JSON-RPC code (implementation-defined server error range) sent for requests the server never answered."""


@dataclass(slots=True)
class StdioOutcome:
    exit_code: int
    message: str


def error_response(request_id: Any, message: str, data: dict[str, Any]) -> bytes:
    payload = {"jsonrpc": "2.0", "id": request_id, "error": {"code": SERVER_EXITED, "message": message, "data": data}}
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


async def _stdio_streams() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The proxy's own stdin/stdout as asyncio streams (pipes, sockets or ttys)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(0), "rb", 0))
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(os.dup(1), "wb", 0)
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return reader, writer


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    direction: Direction,
    tracker: CallTracker,
    recorder: Recorder,
    splitter: LineSplitter,
) -> str:
    """Copy ``reader`` to ``writer`` until EOF; return why it stopped."""
    while True:
        chunk = await reader.read(CHUNK)
        if not chunk:
            return "eof"
        t_ns = time.time_ns()
        try:
            writer.write(chunk)
            if writer.transport.get_write_buffer_size() > 4 * CHUNK:
                await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            return "peer_closed"
        for message in splitter.feed(chunk):
            recorder.submit(tracker, direction, message, t_ns)


async def run_stdio_proxy(
    command: list[str],
    tracker: CallTracker | Callable[[], CallTracker],
    *,
    max_message_bytes: int,
    exit_grace: float = 5.0,
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None,
    enforcer_factory: Callable[[CallTracker, Recorder], Any] | None = None,
) -> StdioOutcome:
    """Run ``command`` behind the proxy until the client or the server goes away.

    ``tracker`` may be a factory: it is then called once the server is spawning, so the proxy's
    own start-up (exporter, redactor) overlaps the server's instead of adding to it.
    """
    display = shlex.join(command)
    try:
        child = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=CHUNK
        )
    except OSError as exc:
        return StdioOutcome(127, f"toolwatch proxy: cannot start the MCP server `{display}`: {exc}")
    assert child.stdin is not None and child.stdout is not None
    if not isinstance(tracker, CallTracker):
        tracker = tracker()
    client_in, client_out = streams if streams is not None else await _stdio_streams()
    recorder = Recorder()
    c2s_split, s2c_split = LineSplitter(max_message_bytes), LineSplitter(max_message_bytes)
    enforcer = enforcer_factory(tracker, recorder) if enforcer_factory is not None else None
    if enforcer is not None:  # enforcement reads whole lines before forwarding (enforce_stdio.py)
        from .enforce_stdio import LineWriter, pump_client, pump_server

        to_client = LineWriter(client_out)
        enforcer.start(to_client.line)
        c2s = asyncio.create_task(pump_client(client_in, LineWriter(child.stdin), to_client, enforcer,
                                              max_message_bytes))
        s2c = asyncio.create_task(pump_server(child.stdout, to_client, enforcer, max_message_bytes))
    else:
        c2s = asyncio.create_task(_pump(client_in, child.stdin, "c2s", tracker, recorder, c2s_split))
        s2c = asyncio.create_task(_pump(child.stdout, client_out, "s2c", tracker, recorder, s2c_split))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({c2s, s2c, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            await _stop_child(child, exit_grace=0.5)
            recorder.flush()
            return StdioOutcome(0, "")
        if c2s in done and s2c not in done:
            # The client closed its side: let the server finish and exit, as a direct client would.
            try:
                child.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                await asyncio.wait_for(asyncio.shield(s2c), exit_grace)
            except asyncio.TimeoutError:
                pass
            code = await _stop_child(child, exit_grace=exit_grace)
            recorder.flush()
            tracker.fail_inflight("client_closed")
            return StdioOutcome(0 if code in (0, -signal.SIGTERM) else code, "")
        # The server closed its stdout (it exited or crashed).
        code = await _stop_child(child, exit_grace=exit_grace)
        recorder.flush()
        ids = tracker.fail_inflight("server_exited")
        reason = f"the MCP server `{display}` exited with code {code}"
        if ids:
            payload = b"\n" if s2c_split.partial else b""
            for request_id in ids:
                payload += error_response(
                    request_id,
                    f"toolwatch proxy: {reason} before answering this request",
                    {"toolwatch": "server_exited", "exitCode": code},
                )
            try:
                client_out.write(payload)
                await client_out.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
        message = f"toolwatch proxy: {reason}"
        if ids:
            message += f"; answered {len(ids)} in-flight request(s) with a JSON-RPC error"
        return StdioOutcome(code if code != 0 else 0, message if code != 0 or ids else "")
    finally:
        for task in (c2s, s2c, stopper):
            task.cancel()
        await asyncio.gather(c2s, s2c, stopper, return_exceptions=True)
        if enforcer is not None:
            await enforcer.close()
        if child.returncode is None:
            await _stop_child(child, exit_grace=0.5)
        try:
            client_out.close()
        except Exception:
            pass


async def _stop_child(child: asyncio.subprocess.Process, *, exit_grace: float) -> int:
    """Wait for the server to exit; terminate, then kill, if it will not."""
    for action in (None, child.terminate, child.kill):
        if child.returncode is not None:
            break
        if action is not None:
            try:
                action()
            except ProcessLookupError:
                break
        try:
            await asyncio.wait_for(child.wait(), exit_grace)
        except asyncio.TimeoutError:
            continue
    if child.returncode is None:
        await child.wait()
    return child.returncode if child.returncode is not None else 1


def report(outcome: StdioOutcome, stats_summary: str) -> None:
    if outcome.message:
        print(outcome.message, file=sys.stderr)
    if os.environ.get("TOOLWATCH_PROXY_STATS"):
        print(f"toolwatch proxy: {stats_summary}", file=sys.stderr)
