"""Benchmarks (not tests): run them as modules, e.g. `python -m benchmarks.core_bench`."""
