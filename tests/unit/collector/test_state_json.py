"""Stored detector state: ``json.loads`` reads from ``dumps_state`` what it read from the
``json.dumps`` text written before; ``json`` itself writes what msgspec cannot write the same."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolwatch.collector import state_json
from toolwatch.collector.state_json import dumps_state, dumps_state_bytes
from toolwatch.collector.store import Store
from toolwatch.detectors.array_codec import decode_matrix, encode_matrix


def old(state) -> str:
    """How ``Store.save_state`` wrote state before ``dumps_state``."""
    return json.dumps(state, separators=(",", ":"))


def same_data(text: str | bytes, state) -> bool:
    """``text`` reads back as ``old(state)`` does (NaN compared by how ``json`` writes it)."""
    return json.dumps(json.loads(text)) == json.dumps(json.loads(old(state)))


def iforest_like(rng: np.random.Generator) -> dict:
    """The shape of IsolationForestDetector.snapshot(): windows, pending rows and model samples."""
    agents = {
        f"agent-{i}": {"ctx": {"n": i, "names": ["a", "b"]}, "markov": {"counts": {"x": 1.5}},
                       "rows": encode_matrix(rng.normal(size=(2048, 15))), "since_fit": i, "frozen": False,
                       "pending": {"s1": encode_matrix(rng.normal(size=(12, 15))),
                                   "s2": encode_matrix(rng.normal(size=(0, 15)))},
                       "narrow": encode_matrix(rng.integers(0, 3, size=(300, 15)).astype(float), narrow=True),
                       "tainted": ["s1"], "none": None}
        for i in range(4)
    }
    models = {a: {"sample": encode_matrix(rng.normal(size=(256, 15))), "params": {"n_estimators": 100}}
              for a in agents}
    return {"agents": agents, "models": models, "groups": {"g": ["agent-1"]}, "group_since": 7}


def test_iforest_state_is_spliced_and_reads_back_as_before():
    state = iforest_like(np.random.default_rng(1))
    strings: list[bytes] = []
    skeleton = state_json._swap(state, "M", strings, state_json.BIG, 8, [10**9])
    assert len(strings) == 16  # four each: windows, model samples, pending sessions of 12 rows, u1 parts of narrow matrices
    assert skeleton["agents"]["agent-0"]["rows"]["f8"] == "M" and state["agents"]["agent-0"]["rows"]["f8"] != "M"
    assert json.loads(dumps_state(state)) == json.loads(old(state))
    assert dumps_state_bytes(state) == dumps_state(state).encode()


def test_big_strings_that_need_escapes_are_left_to_the_encoder():
    base = "A" * 40_000
    for odd in ['"', "\\", "\n", "\x00", "\x1f", "\x7f", "é", "\u2028", "😀"]:
        state = {"m": {"f8": base + odd + base, "shape": [1, 1]}, "plain": {"f8": base}}
        assert same_data(dumps_state(state), state), repr(odd)


def test_state_holding_the_marker_itself_is_not_spliced(monkeypatch):
    monkeypatch.setattr(state_json.secrets, "token_hex", lambda n: "feedface")
    for state in ({"k": "feedface", "m": "B" * 40_000}, {"feedface": 1, "m": "B" * 40_000},
                  {"m": "B" * 40_000, "l": ["feedface"]}):
        assert same_data(dumps_state(state), state)


def test_what_msgspec_cannot_write_the_same_is_written_by_json():
    # non-finite floats (msgspec: null), a lone surrogate and a bool key (msgspec refuses): json's text exactly
    for state in ({"nan": math.nan, "n": None}, {"l": [1.0, -math.inf], "n": None}, {"x": math.inf, "n": None},
                  {"s": "\ud83d"}, {True: 1, "m": "C" * 40_000}, {"deep": {"a": [{"b": math.nan}], "n": None}}):
        assert dumps_state(state) == old(state), state


def test_non_finite_floats_are_found_whatever_their_sign_and_payload():
    for bits in (0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001, 0x7FF0000000000000,
                 0xFFF0000000000000, 0x7FFFFFFFFFFFFFFF):
        x = float(np.array([bits], dtype=np.uint64).view(np.float64)[0])
        assert not math.isfinite(x)
        assert state_json._encode({"v": [x, None]}) is None
    assert state_json._encode({"v": [1.0, 1.7976931348623157e308, None]}) is not None


def test_what_json_writes_specially_reads_back_the_same():
    state = {1: "int key", "f": 1.5, "nan": math.nan, "inf": -math.inf, "t": (1, 2), "n": None, "b": True,
             "big": "C" * 40_000, "nested": {"e": {}}, "l": [{"y": "E" * 40_000}], "u": "é\u2028😀",
             "tiny": 5e-324, "huge": 1e300, "exp": 1e16, "small": 1e-5, "int": 2**70, "neg": -0.0}
    assert same_data(dumps_state(state), state)
    assert dumps_state({}) == "{}" and dumps_state([]) == "[]" and same_data(dumps_state("F" * 40_000), "F" * 40_000)


json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_value = st.recursive(
    json_leaf,
    lambda inner: (st.lists(inner, max_size=4) | st.lists(inner, max_size=3).map(tuple)
                   | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=5)),
    max_leaves=30,
)


@given(json_value)
def test_any_json_state_reads_back_as_json_wrote_it(state):
    # big=1: every plain string found through dicts is spliced in, so the splice is what is tested
    assert same_data(dumps_state(state, big=1), state)
    assert same_data(dumps_state(state), state)


def test_store_saves_text_and_loads_it_back(tmp_path):
    state = iforest_like(np.random.default_rng(2))
    store = Store(tmp_path / "s.db")
    store.save_state("iforest", state)
    row = store.state_db.execute("SELECT typeof(state) AS t, state FROM detector_state WHERE name='iforest'").fetchone()
    assert row["t"] == "text" and isinstance(row["state"], str) and same_data(row["state"], state)
    loaded = store.load_state("iforest")
    assert loaded == json.loads(old(state))
    a = decode_matrix(loaded["agents"]["agent-3"]["rows"], "test")
    assert np.array_equal(a, decode_matrix(state["agents"]["agent-3"]["rows"], "test"))


def test_store_reads_text_written_by_json_before(tmp_path):
    state = iforest_like(np.random.default_rng(3))
    store = Store(tmp_path / "s.db")
    store.state_db.execute("INSERT INTO detector_state(name, state, updated_at) VALUES (?,?,?)", ("iforest", old(state), 0.0))
    assert store.load_state("iforest") == json.loads(old(state))


def test_a_state_without_big_strings_early_is_encoded_whole():
    many = {f"key{i}": {"calls": i, "spans": ["a"]} for i in range(state_json._SEARCH + 1)}
    state = {"keys": many, "late": {"f8": "G" * 40_000}}
    with pytest.raises(state_json._NoneBig):
        state_json._swap(state, "M", [], state_json.BIG, 8, [state_json._SEARCH])
    assert same_data(dumps_state(state), state)
    found: list[bytes] = []
    state_json._swap({"early": {"f8": "G" * 40_000}, "keys": many}, "M", found, state_json.BIG, 8, [state_json._SEARCH])
    assert len(found) == 1  # once one is found, the rest is searched whatever its size
