"""Run ``toolwatch proxy`` (real CLI code path) with the test redactor double.

Usage: python proxy_with_double.py <proxy args...>; used by tests while the real redactor may be
absent, so proxy behaviour is tested independently of redaction quality.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from redactor_double import RedactorDouble  # noqa: E402
from toolwatch.instrumentation.proxy.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:], redactor=RedactorDouble(os.environ.get("TOOLWATCH_FINGERPRINT_KEY", "test-key").encode())))
