"""Stored detector state: ``dumps_state`` writes exactly the text ``json.dumps`` wrote before it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolwatch.collector import state_json
from toolwatch.collector.state_json import dumps_state
from toolwatch.collector.store import Store
from toolwatch.detectors.array_codec import decode_matrix, encode_matrix


def old(state) -> str:
    """How ``Store.save_state`` wrote state before ``dumps_state``."""
    return json.dumps(state, separators=(",", ":"))


def iforest_like(rng: np.random.Generator) -> dict:
    """The shape of IsolationForestDetector.snapshot(): windows, pending rows and model samples."""
    agents = {
        f"agent-{i}": {"ctx": {"n": i, "names": ["a", "b"]}, "markov": {"counts": {"x": 1.5}},
                       "rows": encode_matrix(rng.normal(size=(2048, 15))), "since_fit": i, "frozen": False,
                       "pending": {"s1": encode_matrix(rng.normal(size=(12, 15))),
                                   "s2": encode_matrix(rng.normal(size=(0, 15)))},
                       "tainted": ["s1"]}
        for i in range(4)
    }
    models = {a: {"sample": encode_matrix(rng.normal(size=(256, 15))), "params": {"n_estimators": 100}}
              for a in agents}
    return {"agents": agents, "models": models, "groups": {"g": ["agent-1"]}, "group_since": 7}


def test_iforest_state_is_spliced_and_written_as_before():
    state = iforest_like(np.random.default_rng(1))
    strings: list[str] = []
    skeleton = state_json._swap(state, "M", strings, state_json.BIG, 8, [10**9])
    assert len(strings) == 12  # four windows, four model samples, four pending sessions of 12 rows: the fast path is tested
    assert skeleton["agents"]["agent-0"]["rows"]["f8"] == "M" and state["agents"]["agent-0"]["rows"]["f8"] != "M"
    assert dumps_state(state) == old(state)


def test_big_strings_that_need_escapes_are_left_to_json():
    base = "A" * 40_000
    for odd in ['"', "\\", "\n", "\x00", "\x1f", "\x7f", "é", "\u2028", "\ud83d", "😀"]:
        state = {"m": {"f8": base + odd + base, "shape": [1, 1]}, "plain": {"f8": base}}
        assert dumps_state(state) == old(state), repr(odd)


def test_state_holding_the_marker_itself_falls_back_to_json(monkeypatch):
    monkeypatch.setattr(state_json.secrets, "token_hex", lambda n: "feedface")
    for state in ({"k": "feedface", "m": "B" * 40_000}, {"feedface": 1, "m": "B" * 40_000},
                  {"m": "B" * 40_000, "l": ["feedface"]}):
        assert dumps_state(state) == old(state)


def test_what_json_writes_specially_is_written_the_same():
    state = {1: "int key", "f": 1.5, "nan": math.nan, "inf": -math.inf, "t": (1, 2), "n": None, "b": True,
             "big": "C" * 40_000, "nested": {2.5: {"x": "D" * 40_000}, "e": {}}, "l": [{"y": "E" * 40_000}]}
    assert dumps_state(state) == old(state)
    assert dumps_state({}) == "{}" and dumps_state([]) == "[]" and dumps_state("F" * 40_000) == old("F" * 40_000)


json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=30,
)


@given(json_value)
def test_any_json_state_is_written_as_json_writes_it(state):
    # big=1: every plain string found through dicts is spliced in, so the splice is what is tested
    assert dumps_state(state, big=1) == old(state)
    assert dumps_state(state) == old(state)


def test_store_saves_the_same_text_and_loads_it_back(tmp_path):
    state = iforest_like(np.random.default_rng(2))
    store = Store(tmp_path / "s.db")
    store.save_state("iforest", state)
    text = store.db.execute("SELECT state FROM detector_state WHERE name='iforest'").fetchone()["state"]
    assert text == old(state)
    loaded = store.load_state("iforest")
    assert loaded == state
    a = decode_matrix(loaded["agents"]["agent-3"]["rows"], "test")
    assert np.array_equal(a, decode_matrix(state["agents"]["agent-3"]["rows"], "test"))


def test_a_state_without_big_strings_early_is_left_to_json_whole():
    many = {f"key{i}": {"calls": i, "spans": ["a"]} for i in range(state_json._SEARCH + 1)}
    state = {"keys": many, "late": {"f8": "G" * 40_000}}
    with pytest.raises(state_json._NoneBig):
        state_json._swap(state, "M", [], state_json.BIG, 8, [state_json._SEARCH])
    assert dumps_state(state) == old(state)
    found: list[str] = []
    state_json._swap({"early": {"f8": "G" * 40_000}, "keys": many}, "M", found, state_json.BIG, 8, [state_json._SEARCH])
    assert len(found) == 1  # once one is found, the rest is searched whatever its size
