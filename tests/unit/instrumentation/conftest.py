"""Lets the instrumentation tests import their shared sample data (``redaction_samples``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
