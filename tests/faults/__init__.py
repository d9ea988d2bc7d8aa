"""The fault-injection suite: `python -m pytest tests/faults` (see docs/RELIABILITY.md)."""
