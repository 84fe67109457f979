"""Redactor behaviour: the walk, sizes, budgets, odd input, keys, determinism, span attributes."""

from __future__ import annotations

import json
import warnings

import pytest

from toolwatch.instrumentation import semconv
from toolwatch.instrumentation.fingerprint import FINGERPRINT_KEY_ENV
from toolwatch.instrumentation.redact import Redactor

KEY = bytes(range(32))


def test_walks_nested_values_and_keeps_structure() -> None:
    value = {"to": ["a@example.com", {"cc": "b@example.org"}], "n": 3, "ok": True, "x": None, "f": 1.5}
    result = Redactor(KEY).redact(value)
    assert result.value == {"to": ["<email>", {"cc": "<email>"}], "n": 3, "ok": True, "x": None, "f": 1.5}
    assert result.labels == ("email",)
    assert result.counts == {"email": 2}
    assert len(result.fingerprints) == 2
    assert result.destinations == ("example.com", "example.org")
    assert value["to"][0] == "a@example.com"  # the input is not modified


def test_bytes_is_the_compact_json_size_before_redaction() -> None:
    value = {"q": "hello wörld", "to": "a@example.com", "n": [1, 2.5, True, False, None], "e": {}, "l": []}
    expected = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    assert Redactor(KEY).redact(value).bytes == expected


def test_secret_named_keys_hide_any_value() -> None:
    result = Redactor(KEY).redact(
        {"password": "hunter2", "db_password": "x", "Authorization": "Bearer abcdef0123456789"}
    )
    assert result.value == {
        "password": "<secret:keyword>",
        "db_password": "<secret:keyword>",
        "Authorization": "Bearer <secret:bearer>",
    }
    assert result.counts == {"secret": 3}


def test_ordinary_keys_do_not_hide_values() -> None:
    value = {"max_tokens": "100", "token_count": "5", "passage": "some words"}
    assert Redactor(KEY).redact(value).value == value


def test_secrets_in_keys_are_redacted_and_keys_stay_distinct() -> None:
    result = Redactor(KEY).redact({"a@example.com": 1, "b@example.com": 2})
    assert sorted(result.value) == ["<email>", "<email>'"]
    assert "example.com" in result.destinations


def test_integers_that_are_cards_or_phones_are_redacted() -> None:
    result = Redactor(KEY).redact({"card": 4539148803436467, "qty": 12, "id": 1234567})
    assert result.value == {"card": "<card>", "qty": 12, "id": 1234567}


def test_redact_json_text_parses_or_treats_as_one_string() -> None:
    r = Redactor(KEY)
    assert r.redact_json_text('{"to": "a@example.com"}').value == {"to": "<email>"}
    assert r.redact_json_text("not json a@example.com").value == "not json <email>"
    assert r.redact_json_text("[" * 100_000).value == "[" * 100_000  # too deep to parse: one string
    text = '{ "to" : "a@example.com",  "n": 1 }'
    assert r.redact_json_text(text).bytes == len(text)


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\xfe raw bytes a@example.com",
        "lone surrogate \ud800 a@example.com",
        float("nan"),
        float("inf"),
        10**100,
        {1: "int key", (1, 2): "tuple key"},
        {"s": {3, 1, 2}},
        object(),
        bytearray(b"abc"),
    ],
)
def test_odd_input_never_raises(value: object) -> None:
    result = Redactor(KEY).redact(value)
    json.dumps(result.value)  # and the result is always JSON-encodable


def test_object_whose_str_raises_is_replaced() -> None:
    class Evil:
        def __str__(self) -> str:
            raise RuntimeError("boom")

    assert Redactor(KEY).redact(Evil()).value == "<unsupported:Evil>"


def test_very_deep_lists_are_cut_at_max_depth() -> None:
    deep: list = []
    node = deep
    for _ in range(100_000):
        child: list = []
        node.append(child)
        node = child
    result = Redactor(KEY, max_depth=16).redact(deep)
    assert result.truncated
    text = json.dumps(result.value)
    assert text.count("[") == 16 and "<truncated>" in text


def test_size_budget_bounds_scanning_and_hides_the_rest() -> None:
    big = ("x" * 1000 + " a@example.com ") * 1000
    result = Redactor(KEY, max_bytes=10_000).redact({"a": big, "b": "b@example.com"})
    assert result.truncated
    assert result.value["b"] == "<truncated>"  # nothing unscanned is ever passed on
    assert result.value["a"].endswith("<truncated>")
    assert len(result.value["a"]) <= 10_000 + len("<truncated>")
    assert "@example.com" not in json.dumps(result.value)
    assert result.bytes > 1_000_000  # the size is still the full size


def test_deterministic_for_one_key_and_keyed() -> None:
    value = {"m": "a@example.com", "k": "AKIAIOSFODNN7EXAMPLE", "t": "lorem ipsum " * 400}
    a, b = Redactor(KEY).redact(value), Redactor(KEY).redact(value)
    assert a == b
    c = Redactor(b"another key").redact(value)
    assert c.value == a.value
    assert set(c.fingerprints).isdisjoint(a.fingerprints)
    assert c.sketch != a.sketch


def test_sketch_only_for_large_text() -> None:
    r = Redactor(KEY, sketch_min_chars=500)
    assert r.redact({"q": "short"}).sketch == ()
    sketch = r.redact({"q": "word " * 200}).sketch
    assert len(sketch) == 64 and all(isinstance(v, int) and 0 <= v < 2**32 for v in sketch)


def test_span_attributes_use_the_schema_keys() -> None:
    result = Redactor(KEY).redact({"to": "a@example.com"})
    attrs = result.span_attributes()
    assert json.loads(attrs[semconv.GEN_AI_TOOL_CALL_ARGUMENTS]) == {"to": "<email>"}
    assert attrs[semconv.TW_ARGS_LABELS] == ["email"]
    assert attrs[semconv.TW_ARGS_FINGERPRINTS] == list(result.fingerprints)
    assert attrs[semconv.TW_ARGS_DESTINATIONS] == ["example.com"]
    assert attrs[semconv.TW_ARGS_BYTES] == result.bytes
    assert "a@example.com" not in json.dumps(attrs)


def test_from_env_reads_hex_or_text_keys() -> None:
    hex_key = "00" * 16 + "ff" * 16
    r1 = Redactor.from_env({FINGERPRINT_KEY_ENV: hex_key})
    r2 = Redactor(bytes.fromhex(hex_key))
    assert r1.fingerprint("v") == r2.fingerprint("v")
    r3 = Redactor.from_env({FINGERPRINT_KEY_ENV: "a passphrase"})
    assert r3.fingerprint("v") == Redactor(b"a passphrase").fingerprint("v")


def test_from_env_without_key_warns_and_uses_a_random_key() -> None:
    with pytest.warns(RuntimeWarning, match=FINGERPRINT_KEY_ENV):
        r1 = Redactor.from_env({})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r2 = Redactor.from_env({})
    assert r1.fingerprint("v") != r2.fingerprint("v")


def test_repr_hides_the_key() -> None:
    assert KEY.hex() not in repr(Redactor(KEY))


def test_bad_configuration_names_the_setting() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        Redactor(KEY, max_bytes=0)
    with pytest.raises(ValueError, match="TOOLWATCH_FINGERPRINT_KEY"):
        Redactor(b"")


def test_budget_cut_through_a_secret_drops_the_partial_token() -> None:
    text = "word " * 10 + "AKIAIOSFODNN7EXAMPLE trailing"
    cut_inside_key = text.index("AKIA") + 8
    result = Redactor(KEY, max_bytes=cut_inside_key).redact(text)
    assert result.truncated
    assert "AKIA" not in result.value and "IOSF" not in result.value
    assert result.value == "word " * 10 + "<truncated>"


def test_numbers_under_secret_keys_are_secrets() -> None:
    result = Redactor(KEY).redact({"password": 12345678, "api_key": 4.5, "token": True, "credentials": {"pwd": "x1"}})
    assert result.value == {
        "password": "<secret:keyword>",
        "api_key": "<secret:keyword>",
        "token": True,
        "credentials": {"pwd": "<secret:keyword>"},
    }


def test_secret_values_do_not_reach_the_sketch() -> None:
    r = Redactor(KEY, sketch_min_chars=100)
    note = "the quarterly numbers look fine " * 20
    a = r.redact({"password": "first-secret-value", "note": note})
    b = r.redact({"password": "another-one-entirely", "note": note})
    assert a.sketch and a.sketch == b.sketch
    assert a.fingerprints != b.fingerprints


def test_key_names_remembered_across_calls_give_the_same_result() -> None:
    # The redactor remembers which keys are named like secrets; a reused redactor must not drift.
    redactor = Redactor(KEY)
    values = [{"password": "hunter2", "query": "x"}, {"query": "hunter2", "password": 1234}, {"password": {"a": "b"}}]
    first = [redactor.redact(v) for v in values]
    again = [redactor.redact(v) for v in values]
    fresh = [Redactor(KEY).redact(v) for v in values]
    assert first == again == fresh
    assert first[0].value == {"password": "<secret:keyword>", "query": "x"}
    assert first[1].value == {"query": "hunter2", "password": "<secret:keyword>"}
    assert first[2].value == {"password": {"a": "b"}}
