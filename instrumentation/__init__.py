"""toolwatch instrumentation."""
