"""Benchmarks: scripts run as ``python bench/<name>.py`` (a report each, not a test). A package so that
tests and the other scripts can import them as ``bench.<name>``."""
