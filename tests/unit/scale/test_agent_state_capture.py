"""What the scale-out changelog is fed: touched agents' state, captured at each pipeline snapshot."""

from __future__ import annotations

from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.pipeline import Pipeline
from toolwatch.collector.receivers.agent_state_capture import AgentStateCapture
from toolwatch.collector.store import Store
from toolwatch.detectors.events import ToolCall
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector


def make(tmp_path):
    store = Store(tmp_path / "t.db")
    metrics = Metrics()
    det = NewToolDetector(NewToolConfig(min_calls=1000))
    pipe = Pipeline([det], AlertRouter(store, metrics, [], group_window_ns=0), store, metrics,
                    batch_max_delay_s=0.001, snapshot_interval_s=3600)
    cap = AgentStateCapture(pipe.detectors)
    pipe.batch_listeners.append(cap.on_batch)
    pipe.state_listeners.append(cap.on_saved)
    return pipe, cap


def calls(agent, n, start=0):
    return [ToolCall(time_ns=start + i, agent_id=agent, tool="read") for i in range(n)]


async def test_only_agents_touched_since_the_last_snapshot_are_captured_as_of_the_saved_ticket(tmp_path):
    pipe, cap = make(tmp_path)
    await pipe.start()
    pipe.submit(calls("a", 3) + calls("b", 2, 10), [])
    await pipe.drained()
    assert cap.take() == (0, {})  # processed, not snapshotted: nothing to write, nothing to commit
    pipe.save_state()
    seq, states = cap.take()
    assert seq == pipe.saved_seq == pipe.last_ticket
    assert {a: s["new_tool"]["calls"] for a, s in states.items()} == {"a": 3, "b": 2}
    pipe.submit(calls("a", 4, 20), [])
    await pipe.drained()
    pipe.save_state()
    seq2, states2 = cap.take()
    assert seq2 == pipe.last_ticket > seq
    assert list(states2) == ["a"] and states2["a"]["new_tool"]["calls"] == 7  # b untouched: not rewritten
    await pipe.shutdown()


async def test_unwritten_captures_merge_per_agent_and_a_failed_write_never_overrides_a_newer_one(tmp_path):
    pipe, cap = make(tmp_path)
    await pipe.start()
    pipe.submit(calls("a", 1), [])
    await pipe.drained()
    pipe.save_state()
    pipe.submit(calls("a", 1, 5), [])
    await pipe.drained()
    pipe.save_state()
    assert cap.pending_agents() == 1  # two snapshots, one pending state per agent (bounded by agents owned)
    _, states = cap.take()
    assert states["a"]["new_tool"]["calls"] == 2
    pipe.submit(calls("a", 1, 9) + calls("b", 1, 9), [])
    await pipe.drained()
    pipe.save_state()  # a newer capture arrives while the old write fails
    cap.put_back(states)
    _, again = cap.take()
    assert again["a"]["new_tool"]["calls"] == 3 and again["b"]["new_tool"]["calls"] == 1
    cap.put_back(again)
    cap.forget(["a"])  # a moved to another member
    assert list(cap.take()[1]) == ["b"]
    await pipe.shutdown()
