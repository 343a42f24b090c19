"""The room's schedules page: list them with their runs, make one, pause or remove one."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from agents.models import Schedule
from agents.schedules import (
    ScheduleInvalid,
    schedule_create,
    schedule_delete,
    schedule_pause,
    schedules_of_room,
)
from rooms.models import Room
from rooms.views import room_or_refuse


class ScheduleForm(forms.Form):
    prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), max_length=4000,
                             help_text="Posted as you at each time; the assistant answers it.")  # fmt: skip
    kind = forms.ChoiceField(choices=Schedule.Kind.choices, initial=Schedule.Kind.CRON)
    cron = forms.CharField(required=False, max_length=120, help_text="Five fields, e.g. 0 9 * * 1-5")
    every_minutes = forms.FloatField(required=False, min_value=0.01)
    run_at = forms.DateTimeField(required=False, help_text="For once: YYYY-MM-DD HH:MM, in the time zone")
    timezone = forms.CharField(max_length=64, initial="UTC", help_text="IANA name, e.g. Europe/Lisbon")

    def schedule_fields(self) -> dict[str, Any]:
        data = self.cleaned_data
        fields: dict[str, Any] = {"kind": data["kind"], "prompt": data["prompt"], "tz": data["timezone"]}
        if data["kind"] == Schedule.Kind.CRON:
            fields["cron"] = data.get("cron") or ""
        elif data["kind"] == Schedule.Kind.INTERVAL:
            fields["interval_seconds"] = round((data.get("every_minutes") or 0) * 60)
        else:
            run_at: datetime | None = data.get("run_at")
            fields["run_at"] = run_at.replace(tzinfo=None) if run_at else None  # read in `timezone`
        return fields


def _member_room(request: HttpRequest, slug: str) -> Room | HttpResponse:
    """The room, as the room page allows it (a public room is joined by a POST, never a view)."""
    return room_or_refuse(request, slug, join=request.method == "POST")


@login_required
def room_schedules(request: HttpRequest, slug: str) -> HttpResponse:
    """The room's schedules and their latest runs (each with its turn), and a form for a new one."""
    room = _member_room(request, slug)
    if isinstance(room, HttpResponse):
        return room
    form = ScheduleForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            schedule_create(room=room, user=request.user, via=Schedule.Via.PAGE, **form.schedule_fields())
        except ScheduleInvalid as exc:
            form.add_error(None, exc.detail)
        else:
            messages.success(request, "Scheduled.")
            return redirect("room_schedules", slug=slug)
    status = 400 if form.errors else 200
    context = {"room": room, "form": form, "schedules": schedules_of_room(room=room)}
    return render(request, "schedules.html", context, status=status)


@login_required
@require_POST
def room_schedule_change(request: HttpRequest, slug: str, schedule_id: int) -> HttpResponse:
    """Pause, resume or remove a schedule (its creator or the room's owner)."""
    room = _member_room(request, slug)
    if isinstance(room, HttpResponse):
        return room
    schedule = get_object_or_404(Schedule, pk=schedule_id, room=room)
    if request.user.pk not in (schedule.created_by_id, room.owner_id):
        return render(request, "forbidden.html", {"room_title": room.title}, status=403)
    action = request.POST.get("action")
    if action == "delete":
        schedule_delete(schedule=schedule, user=request.user)
    elif action in ("pause", "resume"):
        schedule_pause(schedule=schedule, enabled=action == "resume")
    else:
        return HttpResponse("action must be pause, resume or delete", status=400)
    return redirect("room_schedules", slug=slug)
