"""The room page's moderation: owners and moderators act, any member reports.

Plain forms (they work without JavaScript) that call the same service as the admin and the
socket's `moderate` frame (rooms.moderation); the page then shows the change, and every other
member sees it live from the room's events.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from rooms import moderation, selectors
from rooms.standing import ModerationRefused, membership_active

_ROOM_PAGE_ACTIONS = [
    (name, name) for name in moderation.MESSAGE_ACTIONS + moderation.ROOM_ACTIONS + moderation.MEMBER_ACTIONS
]


class ModerateForm(forms.Form):
    action = forms.ChoiceField(choices=_ROOM_PAGE_ACTIONS)
    message_id = forms.IntegerField(required=False, min_value=1)
    user_id = forms.IntegerField(required=False, min_value=1)
    seconds = forms.IntegerField(required=False, min_value=0, max_value=86400)
    role = forms.ChoiceField(
        required=False, choices=[("", "")] + [(r, r) for r in ("moderator", "member", "viewer")]
    )
    reason = forms.CharField(required=False, max_length=500)


class ReportForm(forms.Form):
    message_id = forms.IntegerField(min_value=1)
    reason = forms.CharField(max_length=moderation.REPORT_REASON_MAX)


def _back(slug: str, message_id: int | None = None) -> HttpResponse:
    response = redirect("room", slug=slug)
    if message_id:
        response["Location"] += f"#m-{message_id}"
    return response


@login_required
@require_POST
def room_moderate(request: HttpRequest, slug: str) -> HttpResponse:
    """An owner's or moderator's action from the room page."""
    room = selectors.room_by_slug(slug=slug)
    if room is None or membership_active(room_id=room.pk, user_id=int(request.user.pk or 0)) is None:
        raise Http404("No such room")  # not a 403: it would confirm the room exists
    form = ModerateForm(request.POST)
    if not form.is_valid():
        messages.error(request, "That moderation request is not valid.")
        return _back(slug)
    data = form.cleaned_data
    try:
        moderation.moderation_apply(
            actor=request.user, action=data["action"], source="room", reason=data["reason"], room=room,
            message_id=data["message_id"], user_id=data["user_id"], seconds=data["seconds"],
            role=data["role"] or None, stop_turns=data["action"] == "lock",
        )  # fmt: skip
    except ModerationRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Done: {data['action'].replace('_', ' ')}.")
    return _back(slug, data["message_id"])


@login_required
@require_POST
def room_report(request: HttpRequest, slug: str) -> HttpResponse:
    """Any member flags a message for the moderators."""
    room = selectors.room_by_slug(slug=slug)
    if room is None or membership_active(room_id=room.pk, user_id=int(request.user.pk or 0)) is None:
        raise Http404("No such room")
    form = ReportForm(request.POST)
    if not form.is_valid():
        messages.error(request, "A report needs a reason.")
        return _back(slug)
    try:
        moderation.report_create(
            room=room, user=request.user, message_id=form.cleaned_data["message_id"],
            reason=form.cleaned_data["reason"],
        )  # fmt: skip
    except ModerationRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Thank you: the moderators will look at it.")
    return _back(slug, form.cleaned_data["message_id"])
