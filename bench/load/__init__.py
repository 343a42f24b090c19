"""Load benchmark of one Daphne process: many idle sockets, then streamed answers under load.

``python -m bench.load [--sockets 1000] [--active 100] [--duration 60]`` (or ``make load``)
starts its own stack (embedded Postgres/Redis unless DATABASE_URL/REDIS_URL are set, a fresh
database ``load_<pid>``, one Daphne, one Celery worker, beat, the fake LLM), measures, prints one
table and writes ``bench/results/load-<timestamp>.json``. See ``bench/load/run.py``.
"""
