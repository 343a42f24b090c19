"""Rooms, their members, messages, stream chunks and the room event log. No I/O here."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector
from django.db import models
from django.db.models import Q

# The text search configuration of the transcript's full-text index and of every query using
# it (rooms.selectors.messages_search): English stemming ("flights" finds "flight"); words of
# other languages are still matched as they are written.
SEARCH_CONFIG = "english"


def _invite_token() -> str:
    return secrets.token_urlsafe(16)


class Room(models.Model):
    """A chat room: a durable actor whose memory is these rows."""

    class Visibility(models.TextChoices):
        PUBLIC = "public", "Public: any signed-in user may join"
        PRIVATE = "private", "Private: members only, by invite link"

    class AiTrigger(models.TextChoices):
        EVERY = "every", "Every message"
        MENTION = "mention", "Only when @ai is mentioned"

    slug = models.SlugField(max_length=64, unique=True)
    title = models.CharField(max_length=120)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_rooms")
    visibility = models.CharField(max_length=16, choices=Visibility.choices, default=Visibility.PUBLIC)
    invite_token = models.CharField(max_length=64, default=_invite_token, unique=True)
    ai_enabled = models.BooleanField(default=True)
    ai_model = models.CharField(max_length=120, blank=True, help_text="Empty: LLM_MODEL")
    system_prompt = models.TextField(blank=True, default="You are a helpful assistant in a group chat.")
    ai_trigger = models.CharField(max_length=16, choices=AiTrigger.choices, default=AiTrigger.EVERY)

    class Recovery(models.TextChoices):
        CONTINUE = "continue", "Continue the answer where it stopped"
        INTERRUPT = "interrupt", "Mark it interrupted (members can retry)"

    # What to do with an answer whose worker died mid-stream.
    recovery = models.CharField(max_length=16, choices=Recovery.choices, default=Recovery.CONTINUE)
    # The assistant's server tools in this room: names switched on, and names that ask a person
    # first. None: the site's defaults (settings.AGENT_TOOLS_ON, each tool's own `ask_first`).
    tools_on = models.JSONField(null=True, blank=True, default=None)
    tools_ask_first = models.JSONField(null=True, blank=True, default=None)
    # Moderation (rooms.moderation only): a locked room is read-only; slow mode lets each
    # member post once per `slow_mode_seconds` (owners and moderators are exempt).
    locked_at = models.DateTimeField(null=True, blank=True)
    slow_mode_seconds = models.PositiveIntegerField(default=0, db_default=0)
    # The newest room event's seq; incremented under the row lock by services.
    last_seq = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(last_seq__gte=0), name="room_seq_nonneg")]

    def __str__(self) -> str:
        return f"{self.title} ({self.slug})"


class Membership(models.Model):
    """A user's place in a room."""

    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        MODERATOR = "moderator", "Moderator"
        MEMBER = "member", "Member"
        VIEWER = "viewer", "Read-only viewer"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    # A banned member keeps the row (so a public room can't be re-joined) and loses all access.
    banned_at = models.DateTimeField(null=True, blank=True)
    # Muted: reads, cannot post. Kicked: sockets opened before this moment are closed (the
    # check holds even if the kick's broadcast is lost); a new connect is welcome.
    muted_at = models.DateTimeField(null=True, blank=True)
    kicked_at = models.DateTimeField(null=True, blank=True)
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["room", "user"], name="membership_unique")]


class Message(models.Model):
    """One message of a room's transcript; `seq` is the seq of the event that created it."""

    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"
        SYSTEM = "system"
        TOOL = "tool"

    class Status(models.TextChoices):
        COMPLETE = "complete"
        STREAMING = "streaming"
        CANCELLED = "cancelled"
        FAILED = "failed"
        INTERRUPTED = "interrupted"
        HIDDEN = "hidden"
        DELETED = "deleted"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    seq = models.BigIntegerField()
    role = models.CharField(max_length=16, choices=Role.choices)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    content = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    client_id = models.UUIDField(null=True, blank=True)
    # the status a hidden message had, restored when it is unhidden (rooms.moderation)
    status_before_hidden = models.CharField(max_length=16, blank=True, default="", db_default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["seq"]
        constraints = [
            models.UniqueConstraint(fields=["room", "seq"], name="message_room_seq_unique"),
            models.UniqueConstraint(
                fields=["room", "author", "client_id"],
                condition=Q(client_id__isnull=False),
                name="message_client_id_unique",
            ),
        ]
        indexes = [
            models.Index(fields=["room"], condition=Q(status="streaming"), name="message_streaming_idx"),
            # the transcript's full-text search: selectors.messages_search builds the same
            # expression (config included), else Postgres could not use the index
            GinIndex(SearchVector("content", config=SEARCH_CONFIG), name="message_content_search_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.role}: {self.content[:40]}"


class StreamChunk(models.Model):
    """A flushed batch of streamed text of one message; `index` counts from 0, no gaps."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="chunks")
    index = models.IntegerField()
    text = models.TextField()

    class Meta:
        ordering = ["index"]
        constraints = [
            models.UniqueConstraint(fields=["message", "index"], name="chunk_message_index_unique"),
            models.CheckConstraint(condition=Q(index__gte=0), name="chunk_index_nonneg"),
        ]


class RoomEvent(models.Model):
    """The room's event log that replay reads: `frame` is the exact JSON text clients get."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="events")
    seq = models.BigIntegerField()
    type = models.CharField(max_length=32)
    frame = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["seq"]
        constraints = [
            models.UniqueConstraint(fields=["room", "seq"], name="event_room_seq_unique"),
        ]


class RoomNote(models.Model):
    """A note in the room's notes panel, written by the assistant's `note` tool (or a person)."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="notes")
    text = models.TextField()
    # the tool call that wrote it (agents.ToolCall's id), so every execution is counted
    call_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.text[:60]


class ApiToken(models.Model):
    """A bearer token for scripts and bots; only its SHA-256 is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=80)
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class MessageReport(models.Model):
    """A member's flag on a message, queued for the moderators (the admin's reports)."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reports")
    reporter = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolution = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["created_at"], condition=Q(resolved_at__isnull=True), name="report_open_idx")
        ]

    def __str__(self) -> str:
        return f"report on message {self.message_id}: {self.reason[:40]}"


class ModerationAction(models.Model):
    """The audit log: one row per moderation action, written by rooms.moderation only."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=32)
    room = models.ForeignKey(Room, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    target_type = models.CharField(max_length=16)  # message, room, member, user, token, report
    target_id = models.BigIntegerField()
    target_repr = models.CharField(max_length=200)
    before = models.JSONField(default=dict)
    after = models.JSONField(default=dict)
    reason = models.CharField(max_length=500, blank=True)
    source = models.CharField(max_length=16)  # admin, room, socket, command
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["room", "-created_at"], name="moderation_room_idx")]

    def __str__(self) -> str:
        return f"{self.action} {self.target_repr}"


class ApiIdempotencyKey(models.Model):
    """An `Idempotency-Key` an API client sent: the request it named and the answer it got.

    The same key again with the same request gets the stored answer; with another request it
    is refused (409). Keys are per user and live `API_IDEMPOTENCY_TTL` seconds.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    # what the request was: its route (method and path) and a hash of its validated body
    endpoint = models.CharField(max_length=300)
    fingerprint = models.CharField(max_length=64)
    # the answer, once there is one (a request that failed stored none: it may be sent again)
    status_code = models.IntegerField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="api_idempotency_user_key_unique")
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.endpoint})"


# Webhook models live in a module of their own; imported here so Django registers them.
from rooms.webhooks.models import InboundHook, WebhookDelivery, WebhookEndpoint  # noqa: E402, F401
