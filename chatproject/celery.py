"""The Celery app: settings come from Django's, under the CELERY_ prefix."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

app = Celery("chatproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.autodiscover_tasks(["rooms.webhooks"])  # rooms.webhooks.tasks


_CONTROL_TASKS = ("agents.tasks.sweep_rooms", "agents.tasks.fire_schedules")


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
    """The queue of a task: the sweeper's, the webhooks', or the default (the turns')."""
    if name in _CONTROL_TASKS:
        return {"queue": f"{app.conf.task_default_queue}.control"}
    if name.startswith("rooms.webhooks."):
        return {"queue": f"{app.conf.task_default_queue}.webhooks"}
    return None
