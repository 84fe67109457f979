"""toolwatch detectors."""
