"""Labelled synthetic agent traffic, for the evaluation harness, tests and the demo."""
