"""toolwatch collector."""
