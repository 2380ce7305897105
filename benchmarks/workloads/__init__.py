"""Benchmark workloads: one module each, registered in ``benchmarks/run.py``."""
