"""Thin Celery tasks: ids in, services called."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import shared_task
from celery.signals import worker_init, worker_process_init

from agents.kicks import kick_taken
from agents.providers import get_provider
from agents.runner import turn_run
from agents.schedules import schedules_fire
from agents.turns import rooms_sweep, turn_take_next

log = logging.getLogger(__name__)


@worker_init.connect  # threads and solo pools: turns run in the worker's own process
@worker_process_init.connect  # prefork: each pool process builds its own (HTTP pool per pid)
def _provider_warm(**_: Any) -> None:
    """Build the model provider when the worker starts, not in its first turn: importing the
    openai SDK takes about a second of CPU, which would stall every turn that starts with it."""
    try:
        get_provider()
    except Exception:  # a misconfigured provider fails its turns with the reason instead
        log.exception("could not build the model provider at worker start")


@shared_task(name="agents.tasks.kick_room", acks_late=True, ignore_result=True)
def kick_room(room_id: int) -> str:
    """Run the room's next queued turn if nobody holds its lease (safe to deliver twice)."""
    kick_taken(int(room_id))  # before looking at the queue: a later ring sends a new kick
    taken = turn_take_next(room_id=int(room_id), owner=f"{socket.gethostname()}:{os.getpid()}")
    if taken is None:
        return "idle"
    return turn_run(taken=taken)


@shared_task(name="agents.tasks.sweep_rooms", ignore_result=True)
def sweep_rooms() -> dict[str, int]:
    """Beat: recover expired leases and re-kick rooms whose kick was lost."""
    report = rooms_sweep()
    return {"recovered": report.recovered, "kicked": report.kicked}


@shared_task(name="agents.tasks.fire_schedules", ignore_result=True)
def fire_schedules() -> dict[str, int]:
    """Beat: post the due occurrences of schedules (each once, whoever else fires them)."""
    report = schedules_fire(owner=f"{socket.gethostname()}:{os.getpid()}")
    return vars(report)
