"""``ToolCall.token`` is set once, when a call is built, and is what the old property computed."""

from __future__ import annotations

import copy
import dataclasses

from toolwatch.collector.receivers.worker_frames import calls_to_columns, columns_to_calls
from toolwatch.detectors.events import ToolCall


def _old_token(call: ToolCall) -> str:
    """The property ``token`` was before it was kept: an f-string per read."""
    return f"{call.server}/{call.tool}" if call.server else call.tool


def test_token_is_server_slash_tool_or_the_bare_tool() -> None:
    for server, tool in (("github", "search"), ("", "bare"), ("a/b", "c/d"), ("s", "")):
        call = ToolCall(time_ns=1, agent_id="a", tool=tool, server=server)
        assert call.token == _old_token(call)
    assert ToolCall(1, "a", "t", "s").token == "s/t"  # positional, as normalise and worker frames build calls


def test_token_is_not_a_field_so_equality_repr_and_frames_are_unchanged() -> None:
    names = [f.name for f in dataclasses.fields(ToolCall)]
    assert "token" not in names and names[:4] == ["time_ns", "agent_id", "tool", "server"] and len(names) == 25
    call = ToolCall(time_ns=5, agent_id="a", tool="t", server="s", destinations=("x.com",))
    assert "token" not in repr(call)
    assert "token" not in dataclasses.asdict(call) and len(dataclasses.astuple(call)) == 25
    (back,) = columns_to_calls(calls_to_columns([call]))
    assert back == call and back.token == "s/t"


def test_copies_and_replacements_carry_the_right_token() -> None:
    call = ToolCall(time_ns=5, agent_id="a", tool="t", server="s")
    assert copy.copy(call).token == copy.deepcopy(call).token == "s/t"
    changed = dataclasses.replace(call, tool="u")
    assert changed.token == "s/u" and call.token == "s/t"
    assert dataclasses.replace(call, server="").token == "t"
