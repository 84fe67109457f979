"""Near-copy sketches: high similarity for a lightly edited copy, low for unrelated text."""

from __future__ import annotations

import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from toolwatch.instrumentation.redact import Redactor
from toolwatch.instrumentation.sketch import SKETCH_SLOTS, Sketcher, _normal_ascii, sketch_similarity

WORDS = (
    "account balance invoice customer shipment order delivery region revenue quarter growth "
    "contract renewal support ticket priority escalation engineer release version feature"
).split()


OTHER_WORDS = (
    "photosynthesis chlorophyll mitochondria enzyme membrane protein molecule nucleus osmosis "
    "glucose respiration organism species habitat ecosystem predator"
).split()


def _document(seed: int, words: int = 600, vocabulary: list[str] = WORDS) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(vocabulary) + str(rng.randrange(100)) for _ in range(words))


def _edit(text: str, fraction: float, seed: int) -> str:
    rng = random.Random(seed)
    words = text.split()
    for i in rng.sample(range(len(words)), int(len(words) * fraction)):
        words[i] = "edited"
    return " ".join(words)


def test_lightly_edited_copy_is_similar() -> None:
    sketch = Sketcher(b"k")
    original = _document(1)
    for seed in range(5):
        assert sketch_similarity(sketch(original), sketch(_edit(original, 0.03, seed))) >= 0.6


def test_reformatted_copy_is_near_identical() -> None:
    sketch = Sketcher(b"k")
    original = _document(2)
    reformatted = "\n\n  ".join(original.upper().split(" "))
    assert sketch_similarity(sketch(original), sketch(reformatted)) == 1.0


def test_unrelated_texts_are_not_similar() -> None:
    sketch = Sketcher(b"k")
    for seed in range(5):
        other = _document(100 + seed, vocabulary=OTHER_WORDS)
        assert sketch_similarity(sketch(_document(10 + seed)), sketch(other)) <= 0.1


def test_different_documents_on_one_topic_stay_well_below_a_copy() -> None:
    # Same 22-word vocabulary: the shingle sets overlap a little, an edited copy overlaps a lot.
    sketch = Sketcher(b"k")
    for seed in range(5):
        original = sketch(_document(10 + seed))
        assert sketch_similarity(original, sketch(_document(100 + seed))) <= 0.3
        assert sketch_similarity(original, sketch(_edit(_document(10 + seed), 0.03, seed))) >= 0.6


def test_similarity_degrades_with_more_editing() -> None:
    sketch = Sketcher(b"k")
    original = _document(3)
    light = sketch_similarity(sketch(original), sketch(_edit(original, 0.02, 0)))
    heavy = sketch_similarity(sketch(original), sketch(_edit(original, 0.4, 0)))
    assert light > heavy


def test_sketch_format_and_comparison_rules() -> None:
    s = Sketcher(b"k")("some text " * 50)
    assert len(s) == SKETCH_SLOTS and all(isinstance(v, int) and 0 <= v < 2**32 for v in s)
    assert sketch_similarity(s, s) == 1.0
    assert sketch_similarity((), ()) == 0.0
    assert sketch_similarity(s, s[:10]) == 0.0  # different lengths are not comparable
    assert sketch_similarity(list(s), s) == 1.0


def test_copy_of_a_result_sent_as_arguments_is_found() -> None:
    r = Redactor(b"deployment", sketch_min_chars=500)
    original = _document(4)
    result = r.scan_result([{"type": "text", "text": original}])
    args = r.redact({"body": "FYI:\n" + _edit(original, 0.02, 1)})
    assert len(result.sketch) == SKETCH_SLOTS
    assert sketch_similarity(result.sketch, args.sketch) >= 0.6


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from([*"aZ1 ~.", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x00", "\x7f"]), max_size=200))
def test_ascii_fast_path_normalises_like_str_split(text: str) -> None:
    # The sketch's bytes.translate path for ASCII text must give exactly " ".join(text.split()).lower().
    assert _normal_ascii(text.encode("ascii")) == " ".join(text.split()).lower().encode("ascii")


def _reference_sketch(key: bytes, text: str, max_bytes: int = 64 * 1024) -> tuple[int, ...]:
    """The sketch as documented, in plain Python: what deployed agents' sketches are compared to."""
    seed = int.from_bytes(hashlib.shake_256(b"toolwatch-sketch" + key).digest(8), "little")
    data = " ".join(text[:max_bytes].split()).lower().encode("utf-8", "surrogatepass")[:max_bytes]
    data = data.ljust(8, b"\0")
    mask = (1 << 64) - 1
    mins = [0xFFFFFFFF] * SKETCH_SLOTS
    for i in range(len(data) - 7):
        z = (int.from_bytes(data[i : i + 8], "little") ^ seed) + 0x9E3779B97F4A7C15 & mask
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & mask
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & mask
        z ^= z >> 31
        slot = z >> 58
        mins[slot] = min(mins[slot], z & 0xFFFFFFFF)
    return tuple(mins)


@settings(max_examples=60, deadline=None)
@given(
    st.text(st.sampled_from([*"aZ1 ~.é", "\t", "\n", "\x1c", "\x00"]), max_size=3000),
    st.sampled_from([1, 3, 50]),
)
def test_sketch_values_equal_the_plain_definition(text: str, repeat: int) -> None:
    # Values must never change (agents compare them across versions), whatever shortcut computes
    # them: short texts, texts of few distinct shingles (some slot may stay empty) and long ones.
    key = b"deployment-key"
    assert Sketcher(key)(text * repeat) == _reference_sketch(key, text * repeat)


def test_sketch_values_equal_the_plain_definition_on_documents() -> None:
    key = b"k"
    for text in (_document(1), _document(2, words=3000), "ab" * 5000, "x", ""):
        assert Sketcher(key)(text) == _reference_sketch(key, text)
