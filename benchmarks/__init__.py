"""Benchmarks of tfode against its peers; run them with ``python -m benchmarks.run`` (see run.py)."""
