"""``python -m toolwatch.instrumentation.proxy ARGS`` = ``toolwatch proxy ARGS``."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
