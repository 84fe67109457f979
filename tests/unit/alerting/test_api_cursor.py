"""The page cursor parser: round-trips every sort key and never raises on arbitrary input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from toolwatch.collector.api import decode_cursor, encode_cursor


@given(st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=64))
def test_round_trip(created_at, alert_id):
    assert decode_cursor(encode_cursor(created_at, alert_id)) == (created_at, alert_id)


@given(st.text(max_size=200))
def test_arbitrary_text_is_rejected_or_decoded_never_raises(text):
    got = decode_cursor(text)
    assert got is None or (isinstance(got[0], float) and isinstance(got[1], str))


def test_wrong_shapes_are_rejected():
    import base64

    for raw in (b"[1]", b'["x", 1]', b"[true, \"a\"]", b'{"a": 1}', b"[1, 2, 3]", b"\xff\xfe"):
        assert decode_cursor(base64.urlsafe_b64encode(raw).decode()) is None, raw
