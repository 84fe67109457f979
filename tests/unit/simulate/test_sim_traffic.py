"""The labelled traffic generator: reproducible, labelled consistently, every attack as described."""

from __future__ import annotations

from collections import Counter

import pytest

from toolwatch.detectors.events import ToolCall, ToolListing
from toolwatch.simulate.traffic import ATTACK_KINDS, batches, generate, label_of


@pytest.fixture(scope="module")
def traffic():
    return generate(seed=5, agents_per_archetype=1, sessions_per_agent=60, attack_rate=0.3,
                    new_agents_per_archetype=1, new_agent_sessions=12)


def test_same_seed_same_traffic_other_seed_other_traffic(traffic):
    again = generate(seed=5, agents_per_archetype=1, sessions_per_agent=60, attack_rate=0.3,
                     new_agents_per_archetype=1, new_agent_sessions=12)
    assert again.events == traffic.events and again.labels == traffic.labels
    assert generate(seed=6, agents_per_archetype=1, sessions_per_agent=60).events != traffic.events


def test_events_are_time_ordered_with_unique_span_ids(traffic):
    times = [e.time_ns for e in traffic.events]
    assert times == sorted(times)
    ids = [e.span_id for e in traffic.events]
    assert len(ids) == len(set(ids))


def test_labels_agree_with_attacks(traffic):
    kinds = Counter(a.kind for a in traffic.attacks)
    assert set(kinds) == set(ATTACK_KINDS)
    from_attacks = {s: a.kind for a in traffic.attacks for s in a.span_ids}
    assert from_attacks == traffic.labels
    by_id = {e.span_id: e for e in traffic.events}
    for a in traffic.attacks:
        assert a.time_ns == min(by_id[s].time_ns for s in a.span_ids)
        assert all(by_id[s].agent_id == a.agent_id for s in a.span_ids)
    assert label_of(traffic, traffic.events[0]) in ("", *ATTACK_KINDS)


def test_attacks_look_like_their_kind(traffic):
    by_id = {e.span_id: e for e in traffic.events}
    calls_before: dict[str, list[ToolCall]] = {}
    for e in traffic.events:
        if isinstance(e, ToolCall):
            calls_before.setdefault(e.session_id, []).append(e)
    for a in traffic.attacks:
        ev = [by_id[s] for s in a.span_ids]
        if a.kind == "exfiltration":
            (c,) = ev
            earlier = {fp for x in calls_before[a.session_id] if x.time_ns < c.time_ns for fp in x.result_fingerprints}
            assert c.server == "web" and set(c.args_fingerprints) & earlier and c.destinations
        elif a.kind == "secret_in_args":
            assert "secret" in ev[0].args_labels
        elif a.kind == "sequence_hijack":
            first = min(ev, key=lambda x: x.time_ns)
            prior = [x for x in calls_before[a.session_id] if x.time_ns < first.time_ns]
            assert "instructions" in prior[-1].result_labels
        elif a.kind == "volume_spike":
            assert len(ev) >= 40 and (ev[-1].time_ns - ev[0].time_ns) / 1e9 < 0.25 * len(ev)
        elif a.kind == "rug_pull":
            (lst,) = ev
            assert isinstance(lst, ToolListing)
            usual = next(x for x in traffic.events if isinstance(x, ToolListing) and x.agent_id == lst.agent_id
                         and x.server == lst.server and x.span_id not in traffic.labels)
            changed = {t.name for t in lst.tools} & {t.name for t in usual.tools}
            assert changed and {t.sha256() for t in lst.tools} != {t.sha256() for t in usual.tools}
        elif a.kind == "tool_shadowing":
            lst, call = ev
            assert isinstance(lst, ToolListing) and lst.server.endswith("-tools")
            assert call.tool in {t.name for t in lst.tools} and call.server == lst.server


def test_new_agents_have_few_sessions(traffic):
    new = {c.session_id for c in traffic.calls if c.agent_id.endswith("-new0")}
    assert len(new) == 4 * 12


def test_batches_cover_every_event_once(traffic):
    out = list(batches(traffic.events, 100))
    assert sum(len(b) for b in out) == len(traffic.events)
    assert all(b.watermark_ns == max(e.time_ns for e in (*b.calls, *b.listings)) for b in out)
    with pytest.raises(ValueError, match="size"):
        list(batches(traffic.events, 0))


@pytest.mark.parametrize("kw,name", [({"kinds": ["nope"]}, "kinds"), ({"archetypes": ["x"]}, "archetypes"),
                                     ({"attack_rate": 2.0}, "attack_rate")])
def test_bad_arguments_name_themselves(kw, name):
    with pytest.raises(ValueError, match=name):
        generate(**kw)
