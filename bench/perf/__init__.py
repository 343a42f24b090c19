"""`python -m bench.perf`: floors and project figures in one run (docs/performance.md)."""
