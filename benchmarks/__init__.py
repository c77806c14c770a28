"""Benchmarks of stackone_pipeline against in-repo simulators and receivers.

`python -m benchmarks` (from the repo root) runs them all and writes BENCHMARKS.md; each script
(`python benchmarks/ingest_bench.py`, ...) also runs on its own and prints its figures.
"""
