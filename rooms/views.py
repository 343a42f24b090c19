"""Server-rendered pages; they read through selectors and write through services."""

from __future__ import annotations

import hmac
import uuid
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST
from django_ratelimit.core import is_ratelimited

from rooms import ratelimit, selectors, services
from rooms.forms import (
    GuestForm,
    MessageForm,
    ProfileForm,
    RoomAgentsForm,
    RoomCreateForm,
    RoomSettingsForm,
    RoomToolsForm,
    SignupForm,
    TokenForm,
)
from rooms.models import ApiToken, Room
from rooms.standing import ModerationRefused
from rooms.turns import TurnRefused


def _address_over(request: HttpRequest, limit: str) -> bool:
    """Count one creation against the client address's `limit` (a RATE_* setting, read per
    request); True when it is spent."""
    rate = getattr(settings, limit)
    return bool(rate) and is_ratelimited(request, group=limit, key="ip", rate=rate, increment=True)


def _too_many(request: HttpRequest, template: str, context: dict[str, Any], what: str) -> HttpResponse:
    messages.error(request, f"Too many {what} from your address; try again later.")
    return render(request, template, context, status=429)


def home(request: HttpRequest) -> HttpResponse:
    """Your rooms, public rooms, and a form to create one."""
    if not request.user.is_authenticated:
        return render(request, "home.html", {})
    may_create = selectors.user_may_create(user=request.user, what="rooms")
    form = RoomCreateForm(request.POST or None)
    context = {
        "form": form if may_create else None,
        "my_rooms": selectors.rooms_for_user(user=request.user),
        "public_rooms": selectors.rooms_public(exclude_user=request.user),
    }
    if request.method == "POST":
        if not may_create:
            messages.error(request, "Guests may not create rooms here; sign up first.")
            return render(request, "home.html", context, status=403)
        if form.is_valid():
            if _address_over(request, "RATE_ROOMS"):
                return _too_many(request, "home.html", context, "new rooms")
            room = services.room_create(owner=request.user, **form.cleaned_data)
            return redirect("room", slug=room.slug)
    return render(request, "home.html", context)


def room_or_refuse(request: HttpRequest, slug: str, *, join: bool = False) -> Room | HttpResponse:
    """The room if the user may see it. A public room is joined only by an explicit action
    (`join`: a POST, or the page's socket connecting), never by a page view: a cross-site link
    or image must not make its visitor a member."""
    room = selectors.room_by_slug(slug=slug)
    if room is None:
        raise Http404("No such room")
    access = selectors.room_access(room=room, user=request.user)
    if access == "can_join" and join:
        services.membership_join(room=room, user=request.user)
    elif access == "denied":
        return render(request, "forbidden.html", {"room_title": ""}, status=403)
    return room


@login_required
def room(request: HttpRequest, slug: str) -> HttpResponse:
    """The room: its transcript rendered at a seq, then live over the WebSocket."""
    found = room_or_refuse(request, slug)
    if isinstance(found, HttpResponse):
        return found
    transcript = selectors.transcript(room=found)
    selectors.calls_named(messages=transcript.messages)
    can_moderate = selectors.user_can_moderate(room=found, user=request.user)
    invite_url = None
    if found.visibility == Room.Visibility.PRIVATE and can_moderate:  # owners and moderators only
        invite_url = request.build_absolute_uri(reverse("room_invite", args=[found.slug, found.invite_token]))
    return render(
        request,
        "room.html",
        {
            "room": found,
            "transcript": transcript,
            "members": selectors.members_of(room=found),
            "invite_url": invite_url,
            "ws_path": f"/ws/rooms/{found.slug}/",
            "post_url": reverse("room_post", args=[found.slug]),
            "client_id": uuid.uuid4(),
            "me": selectors.user_data(request.user),
            # who sees Approve / Deny on every card (a call's asker sees them on their own)
            "can_moderate": can_moderate,
            "notes": selectors.room_notes(room=found),
            "my_membership": selectors.membership_of(room=found, user=request.user),
        },
    )


@login_required
def room_settings(request: HttpRequest, slug: str) -> HttpResponse:
    """The owner's page for a room's settings, AI included."""
    found = get_object_or_404(Room, slug=slug)
    if (
        found.visibility == Room.Visibility.PRIVATE
        and selectors.membership_of(room=found, user=request.user) is None
    ):
        raise Http404("No such room")  # a 403 would confirm that the private room exists
    if found.owner_id != request.user.pk:
        return render(request, "forbidden.html", {"room_title": found.title}, status=403)
    form = RoomSettingsForm(request.POST or None, instance=found)
    tools = RoomToolsForm(request.POST or None, room=found)
    agents = RoomAgentsForm(request.POST or None, room=found)
    if request.method == "POST" and form.is_valid() and tools.is_valid() and agents.is_valid():
        try:
            agents.save()
        except TurnRefused as refused:
            agents.add_error("agent_name", str(refused))
        else:
            changes = {f: form.cleaned_data[f] for f in form.changed_data} | tools.changes()
            if changes:
                services.room_update(room=found, **changes)
            messages.success(request, "Room settings saved.")
            return redirect("room", slug=slug)
    context = {"room": found, "form": form, "tools": tools, "agents": agents}
    return render(request, "room_settings.html", context)


@login_required
def room_earlier(request: HttpRequest, slug: str) -> HttpResponse:
    """Older messages of a room as HTML rows, for "load earlier" (before=<seq>)."""
    found = room_or_refuse(request, slug)
    if isinstance(found, HttpResponse):
        return found
    before = request.GET.get("before", "")
    if not before.isdigit() or len(before) > 18:
        return HttpResponse("before must be a seq", status=400)
    page = selectors.transcript_before(room=found, before=int(before))
    return render(
        request,
        "includes/messages.html",
        {
            "room": found,
            "messages": selectors.calls_named(messages=page.messages),
            "has_earlier": page.has_earlier,
            "me": selectors.user_data(request.user),
            "can_moderate": selectors.user_can_moderate(room=found, user=request.user),
        },
    )


@login_required
@require_POST
def room_post(request: HttpRequest, slug: str) -> HttpResponse:
    """The composer without JavaScript: the same service as the socket's `send`."""
    found = room_or_refuse(request, slug, join=True)
    if isinstance(found, HttpResponse):
        return found
    form = MessageForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            messages.error(request, " ".join(str(e) for e in errors))
        return redirect("room", slug=slug)
    try:
        services.message_post(
            room=found,
            author=request.user,
            client_id=form.cleaned_data["client_id"],
            content=form.cleaned_data["content"],
        )
    except services.ClientIdConflict:
        messages.error(request, "That message was already sent with different text.")
    except ratelimit.RateLimited as exc:
        messages.error(request, f"Not sent: {exc} (try again in {exc.retry_after:.0f} s).")
    except (ModerationRefused, services.RoomBusy) as exc:  # locked, muted, slow mode, read-only
        messages.error(request, f"Not sent: {exc}.")
    return redirect("room", slug=slug)


@login_required
def room_invite(request: HttpRequest, slug: str, token: str) -> HttpResponse:
    """Join a room through its invite link."""
    found = get_object_or_404(Room, slug=slug)
    if not hmac.compare_digest(token.encode(), found.invite_token.encode()):  # constant time
        return render(request, "forbidden.html", {"room_title": ""}, status=403)
    services.membership_join(room=found, user=request.user)
    return redirect("room", slug=slug)


def signup(request: HttpRequest) -> HttpResponse:
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if _address_over(request, "RATE_SIGNUPS"):
            return _too_many(request, "signup.html", {"form": form}, "sign-ups")
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "signup.html", {"form": form})


def guest(request: HttpRequest) -> HttpResponse:
    """Join as a guest with just a display name."""
    form = GuestForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if _address_over(request, "RATE_GUESTS"):
            return _too_many(request, "guest.html", {"form": form}, "guest accounts")
        user = services.guest_create(display_name=form.cleaned_data["display_name"])
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        target = request.GET.get("next", "")
        safe = url_has_allowed_host_and_scheme(
            target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        )
        return redirect(target if safe and target.startswith("/") else "home")
    return render(request, "guest.html", {"form": form})


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    """Your display name (and a link to your API tokens)."""
    user: Any = request.user  # a User: the view is login_required
    form = ProfileForm(request.POST or None, initial={"display_name": user.first_name})
    if request.method == "POST" and form.is_valid():
        services.profile_update(user=request.user, display_name=form.cleaned_data["display_name"])
        messages.success(request, "Profile saved.")
        return redirect("profile")
    return render(request, "profile.html", {"form": form})


@login_required
def tokens(request: HttpRequest) -> HttpResponse:
    """List, create and revoke API tokens."""
    may_create = selectors.user_may_create(user=request.user, what="tokens")
    form = TokenForm(request.POST or None)
    context: dict[str, Any] = {
        "form": form if may_create else None,
        "new_token": None,
        "tokens": ApiToken.objects.filter(user=request.user.pk).order_by("-created_at"),
    }
    if request.method == "POST":
        if not may_create:
            messages.error(request, "Guests may not create API tokens here; sign up first.")
            return render(request, "tokens.html", context, status=403)
        if form.is_valid():
            if _address_over(request, "RATE_TOKENS"):
                return _too_many(request, "tokens.html", context, "new tokens")
            _, context["new_token"] = services.token_create(user=request.user, name=form.cleaned_data["name"])
            context["form"] = TokenForm()
    return render(request, "tokens.html", context)


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    if services.token_revoke(user=request.user, token_id=token_id):
        messages.success(request, "Token revoked.")
    return redirect("tokens")
