"""Near-copy sketches: high similarity for a lightly edited copy, low for unrelated text."""

from __future__ import annotations

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
    # The sketch's numpy path for ASCII text must give exactly " ".join(text.split()).lower().
    assert _normal_ascii(text.encode("ascii")) == " ".join(text.split()).lower().encode("ascii")
