from __future__ import annotations

from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector


def calls(agent, tokens, t0=0):
    return [ToolCall(time_ns=t0 + i, agent_id=agent, server=s, tool=t, span_id=f"{i:x}") for i, (s, t) in enumerate(tokens)]


def test_learning_then_new_tool_fires_once():
    det = NewToolDetector(NewToolConfig(min_calls=3))
    assert det.observe(Batch(calls=calls("a", [("f", "read")] * 2 + [("m", "send")]))) == []  # still learning
    assert det.agent_state("a") == "active"
    found = det.observe(Batch(calls=calls("a", [("f", "read"), ("w", "fetch"), ("w", "fetch")])))
    assert [(f.tool, f.agent_id) for f in found] == [("fetch", "a")]
    assert "first time" in found[0].reason


def test_agents_are_independent_and_snapshot_restores():
    det = NewToolDetector(NewToolConfig(min_calls=1))
    det.observe(Batch(calls=calls("a", [("f", "read")]) + calls("b", [("f", "write")])))
    snap = det.snapshot()
    clone = NewToolDetector(NewToolConfig(min_calls=1))
    clone.restore(snap)
    probe = Batch(calls=calls("a", [("f", "write")]) + calls("b", [("f", "write")]))
    assert [f.to_dict() for f in det.observe(probe)] == [f.to_dict() for f in clone.observe(probe)]
    assert clone.snapshot_agent("a") == det.snapshot_agent("a")


def test_memory_bound():
    det = NewToolDetector(NewToolConfig(min_calls=0, max_tools=10))
    det.observe(Batch(calls=calls("a", [("s", f"t{i}") for i in range(100)])))
    assert len(det.snapshot_agent("a")["tools"]) == 10


def test_destination_key_is_the_host():
    from toolwatch.detectors.events import destination_key, destination_keys

    assert destination_key("https://user:pw@Docs.Python.org:443/3/library?q=1#x") == "docs.python.org"
    assert destination_key("bob@Exfil-Drop.example") == "exfil-drop.example"
    assert destination_key("evil.example") == "evil.example"
    assert destination_keys(["https://a.example/x", "a.example", "https://a.example/y", ""]) == ("a.example",)
