"""Models that show `python -m conformance from-model` on real architectures (built offline, random weights)."""
