"""Lets the instrumentation tests import their shared sample data (``redaction_samples``) and
the test helpers under ``tests/helpers`` (OTLP sink, redactor double)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "helpers"))
