"""The admin: every moderated field is read-only here and changes through rooms.moderation.

Its actions and forms call `moderation_apply` (one path, always audited, always emitting the
room's events); nothing that replay, sockets or the model read is edited or deleted directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from rooms.models import (
    ApiToken,
    Membership,
    Message,
    MessageReport,
    ModerationAction,
    Room,
    RoomEvent,
    StreamChunk,
)
from rooms.moderation import moderation_apply
from rooms.standing import ModerationRefused


class ReasonActionForm(ActionForm):
    """The action bar with a reason, recorded in the audit log with the action."""

    reason = forms.CharField(required=False, max_length=500, label="Reason")


def _apply_each(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    rows: QuerySet[Any],
    action: str,
    target: Callable[[Any], dict[str, Any]],
    **fixed: Any,
) -> None:
    """moderation_apply for each selected row (`target(row)` names what it acts on)."""
    done, refused = 0, []
    for row in rows:
        try:
            moderation_apply(actor=request.user, action=action, source="admin",
                             reason=request.POST.get("reason", ""), **target(row), **fixed)  # fmt: skip
            done += 1
        except ModerationRefused as exc:
            refused.append(f"{row}: {exc}")
    if done:
        modeladmin.message_user(request, f"{action}: {done} done.", messages.SUCCESS)
    for line in refused:
        modeladmin.message_user(request, line, messages.ERROR)


def _room(row: Room) -> dict[str, Any]:
    return {"room": row}


def _message(row: Message) -> dict[str, Any]:
    return {"message_id": row.pk}


def _reported(row: MessageReport) -> dict[str, Any]:
    return {"message_id": row.message_id}


def _member(row: Membership) -> dict[str, Any]:
    return {"room": row.room, "user_id": row.user_id}


class ReadOnlyAdmin(admin.ModelAdmin):
    """Browsable, never edited here."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    fields = ["user", "role", "muted_at", "banned_at", "joined_at"]
    readonly_fields = ["user", "role", "muted_at", "banned_at", "joined_at"]
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MembershipForm(forms.ModelForm):
    """Role and mute: saved by the moderation service, not by the form."""

    muted = forms.BooleanField(required=False, help_text="Can read the room, cannot post")
    reason = forms.CharField(required=False, max_length=500)

    class Meta:
        model = Membership
        fields = ["role"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["muted"].initial = self.instance.muted_at is not None


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    form = MembershipForm
    action_form = ReasonActionForm
    list_display = ["room", "user", "role", "muted_at", "banned_at", "joined_at"]
    list_filter = ["role"]
    search_fields = ["room__slug", "user__username", "user__first_name"]
    raw_id_fields = ["room", "user"]
    readonly_fields = ["room", "user", "banned_at", "muted_at", "kicked_at", "joined_at"]
    actions = [
        "ban",
        "unban",
        "mute",
        "unmute",
        "kick",
        "remove",
        "make_viewer",
        "make_member",
        "make_moderator",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # people join through the room (or a moderator's role change)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # "remove" closes their sockets and is audited

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        reason = form.cleaned_data.get("reason", "")
        current = Membership.objects.get(pk=obj.pk)
        common = {"actor": request.user, "source": "admin", "reason": reason, "room": obj.room,
                  "user_id": obj.user_id}  # fmt: skip
        try:
            if "role" in form.changed_data and obj.role != current.role:
                moderation_apply(action="role", role=obj.role, **common)
            if "muted" in form.changed_data:
                moderation_apply(action="mute" if form.cleaned_data["muted"] else "unmute", **common)
        except ModerationRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)

    def _act(self, request: HttpRequest, queryset: QuerySet[Membership], action: str, **extra: Any) -> None:
        _apply_each(self, request, queryset.select_related("room", "user"), action, _member, **extra)

    @admin.action(description="Ban from the room (closes their sockets)")
    def ban(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        self._act(request, queryset, "ban")

    @admin.action(description="Lift the ban")
    def unban(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        self._act(request, queryset, "unban")

    @admin.action(description="Mute (can read, cannot post)")
    def mute(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        self._act(request, queryset, "mute")

    @admin.action(description="Unmute")
    def unmute(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        self._act(request, queryset, "unmute")

    @admin.action(description="Kick (disconnect now; may come back)")
    def kick(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        self._act(request, queryset, "kick")

    @admin.action(description="Remove from the room (closes their sockets)")
    def remove(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        self._act(request, queryset, "remove")

    @admin.action(description="Role: read-only viewer")
    def make_viewer(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        self._act(request, queryset, "role", role=Membership.Role.VIEWER)

    @admin.action(description="Role: member")
    def make_member(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        self._act(request, queryset, "role", role=Membership.Role.MEMBER)

    @admin.action(description="Role: moderator")
    def make_moderator(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        self._act(request, queryset, "role", role=Membership.Role.MODERATOR)


class RoomForm(forms.ModelForm):
    """A room's settings; `locked` and `slow_mode_seconds` go through the moderation service."""

    locked = forms.BooleanField(
        required=False, help_text="Read-only: sends, retries and tool approvals are refused"
    )
    stop_turns = forms.BooleanField(required=False, label="Stop its turns when locking")
    reason = forms.CharField(required=False, max_length=500)

    class Meta:
        model = Room
        fields = ["title", "visibility", "ai_enabled", "ai_model", "system_prompt", "ai_trigger", "recovery",
                  "slow_mode_seconds"]  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["locked"].initial = self.instance.locked_at is not None


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    form = RoomForm
    action_form = ReasonActionForm
    list_display = [
        "slug",
        "title",
        "owner",
        "visibility",
        "locked_at",
        "slow_mode_seconds",
        "ai_enabled",
        "last_seq",
    ]
    list_filter = ["visibility", "ai_enabled"]
    search_fields = ["slug", "title"]
    readonly_fields = ["owner", "last_seq", "invite_token", "locked_at", "created_at"]
    inlines = [MembershipInline]
    actions = ["lock", "unlock", "stop", "clear_queue", "rotate_invite"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rooms are made by their owners on the site

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # its sockets would stay open on a room that is gone; lock it instead

    def save_model(self, request: HttpRequest, obj: Room, form: Any, change: bool) -> None:
        from rooms.services import room_update

        moderated = {"slow_mode_seconds", "locked", "stop_turns", "reason"}
        plain = {f: form.cleaned_data[f] for f in form.changed_data if f not in moderated}
        current = Room.objects.get(pk=obj.pk)
        if plain:
            room_update(room=current, **plain)
        common = {"actor": request.user, "source": "admin", "reason": form.cleaned_data.get("reason", ""),
                  "room": current}  # fmt: skip
        try:
            if "slow_mode_seconds" in form.changed_data:
                moderation_apply(action="slow_mode", seconds=form.cleaned_data["slow_mode_seconds"], **common)
            if "locked" in form.changed_data:
                locked = form.cleaned_data["locked"]
                moderation_apply(action="lock" if locked else "unlock",
                                 stop_turns=bool(form.cleaned_data.get("stop_turns")), **common)  # fmt: skip
        except ModerationRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)

    @admin.action(description="Lock (read-only) and stop its turns")
    def lock(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        _apply_each(self, request, queryset, "lock", _room, stop_turns=True)

    @admin.action(description="Unlock")
    def unlock(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        _apply_each(self, request, queryset, "unlock", _room)

    @admin.action(description="Stop the running turn")
    def stop(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        _apply_each(self, request, queryset, "stop", _room)

    @admin.action(description="Clear the queue")
    def clear_queue(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        _apply_each(self, request, queryset, "clear_queue", _room)

    @admin.action(description="Rotate the invite link (old links stop working)")
    def rotate_invite(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        _apply_each(self, request, queryset, "rotate_invite", _room)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    action_form = ReasonActionForm
    list_display = ["id", "room", "seq", "role", "author", "status", "created_at"]
    list_filter = ["role", "status"]
    search_fields = ["content"]
    fields = ["room", "seq", "role", "author", "status", "content", "client_id", "created_at", "updated_at"]
    readonly_fields = [
        "room",
        "seq",
        "role",
        "author",
        "status",
        "content",
        "client_id",
        "created_at",
        "updated_at",
    ]
    actions = ["hide", "unhide", "delete_content"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a row deleted here would leave its text in the event log: "delete" redacts

    @admin.action(description="Hide (everyone sees 'hidden by a moderator')")
    def hide(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        _apply_each(self, request, queryset, "hide", _message)

    @admin.action(description="Unhide")
    def unhide(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        _apply_each(self, request, queryset, "unhide", _message)

    @admin.action(description="Delete the content (message, chunks and stored events redacted)")
    def delete_content(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        _apply_each(self, request, queryset, "delete", _message)


@admin.register(MessageReport)
class MessageReportAdmin(ReadOnlyAdmin):
    action_form = ReasonActionForm
    list_display = ["created_at", "message", "reporter", "reason", "resolved_at", "resolution"]
    list_filter = [("resolved_at", admin.EmptyFieldListFilter), "resolution"]
    search_fields = ["reason", "message__room__slug"]
    actions = ["dismiss", "hide_message", "delete_message"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and bool(request.user.is_staff)  # the list and its actions, no edit form

    @admin.action(description="Dismiss")
    def dismiss(self, request: HttpRequest, queryset: QuerySet[MessageReport]) -> None:
        _apply_each(self, request, queryset, "resolve", lambda r: {"report_id": r.pk})

    @admin.action(description="Hide the reported message")
    def hide_message(self, request: HttpRequest, queryset: QuerySet[MessageReport]) -> None:
        _apply_each(self, request, queryset, "hide", _reported)

    @admin.action(description="Delete the reported message's content")
    def delete_message(self, request: HttpRequest, queryset: QuerySet[MessageReport]) -> None:
        _apply_each(self, request, queryset, "delete", _reported)


@admin.register(ModerationAction)
class ModerationActionAdmin(ReadOnlyAdmin):
    """The audit log: browsable and filterable, never edited."""

    list_display = ["created_at", "actor", "action", "target_type", "target_repr", "reason", "source", "room"]
    list_filter = ["action", "source", "target_type", "room"]
    search_fields = ["target_repr", "reason", "actor__username"]
    date_hierarchy = "created_at"

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_staff)


@admin.register(StreamChunk)
class StreamChunkAdmin(ReadOnlyAdmin):
    list_display = ["id", "message", "index"]


@admin.register(RoomEvent)
class RoomEventAdmin(ReadOnlyAdmin):
    list_display = ["room", "seq", "type", "created_at"]
    list_filter = ["type"]


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ["name", "user", "prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "key_hash"]
    actions = ["revoke"]
    action_form = ReasonActionForm

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and bool(request.user.is_staff)

    @admin.action(description="Revoke (closes the sockets it opened)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        _apply_each(self, request, queryset, "revoke_token", lambda t: {"token_id": t.pk})


User = get_user_model()
if admin.site.is_registered(User):
    admin.site.unregister(User)


@admin.register(User)
class ModeratedUserAdmin(UserAdmin):
    """Deactivation closes every socket of the person and is audited (rooms.moderation)."""

    action_form = ReasonActionForm
    actions = ["deactivate", "reactivate"]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change and "is_active" in form.changed_data:
            active = obj.is_active
            obj.is_active = not active  # the service makes the change (and closes the sockets)
            super().save_model(request, obj, form, change)
            try:
                moderation_apply(actor=request.user, action="reactivate" if active else "deactivate",
                                 source="admin", user_id=obj.pk)  # fmt: skip
            except ModerationRefused as exc:
                self.message_user(request, str(exc), messages.ERROR)
            obj.refresh_from_db()
            return
        super().save_model(request, obj, form, change)

    @admin.action(description="Deactivate (closes every socket of theirs)")
    def deactivate(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        _apply_each(self, request, queryset, "deactivate", lambda u: {"user_id": u.pk})

    @admin.action(description="Reactivate")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        _apply_each(self, request, queryset, "reactivate", lambda u: {"user_id": u.pk})


from rooms.webhooks import admin as webhooks_admin  # noqa: E402, F401  (webhooks in and out)
