"""Shared fixtures. Test doubles that are real servers live in tests/helpers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
