"""Shared fixtures. Test doubles that are real servers live in tests/helpers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from hypothesis import settings  # noqa: E402

# Property tests check behaviour, not speed: a per-example deadline only turns a busy CI machine into
# failures (a volume property test once exceeded hypothesis's 200 ms default under load 14).
settings.register_profile("toolwatch", deadline=None)
settings.load_profile("toolwatch")
