"""Fault injection that proves the room actor's guarantees (../shared/ARCHITECTURE.md).

`python -m bench.chaos` starts a private stack (a fresh Postgres database, its own Redis, two
Daphne processes, two Celery workers, beat and a fake LLM), drives many rooms with many
reconnecting clients while it kills, pauses and restarts the pieces, lets everything settle,
then checks every client's frame record against the database. Exit code 0 iff no violation.

Modules: `stack` (processes and services), `driver` (clients), `faults` (the fault injector),
`checker` (the guarantees, stated as checks), `__main__` (the run and its report).
"""
