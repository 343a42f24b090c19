"""Turns: the per-room FIFO queue. A room's lease is its one running turn."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from rooms.models import Message, Room


class Turn(models.Model):
    """One AI turn of a room, queued in the order of its triggering message."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        CANCELLED = "cancelled"
        FAILED = "failed"
        INTERRUPTED = "interrupted"
        PARKED = "parked"  # waiting on a person (an approval, a client tool): no lease, no worker

    TERMINAL = (Status.DONE, Status.CANCELLED, Status.FAILED, Status.INTERRUPTED)

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="turns")
    # FIFO position: the seq of the triggering message (unique per room).
    queue_seq = models.BigIntegerField()
    trigger_message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="+")
    assistant_message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempt = models.IntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    # Set before a tool with side effects runs: such a turn is never re-run or continued.
    side_effects_started = models.BooleanField(default=False)
    # The lease: who runs the turn, until when, and a fencing token every write checks.
    lease_owner = models.CharField(max_length=120, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    lease_generation = models.BigIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    # The client tools offered with the triggering message ([{name, description, parameters}]),
    # kept with the turn so a restart or a parked wait does not lose them.
    client_tools = models.JSONField(default=list, blank=True)
    # A sub-agent's turn: the parent's `agent` call it answers (its run id: one child per call,
    # so a dispatch after a crash or a retry attaches to it), and how deep in a chain it is.
    parent_call = models.OneToOneField(
        "agents.ToolCall", null=True, blank=True, on_delete=models.SET_NULL, related_name="child_turn"
    )
    depth = models.IntegerField(default=0, db_default=0)  # raw inserts (a post's) leave it out
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["queue_seq"]
        constraints = [
            models.UniqueConstraint(fields=["room", "queue_seq"], name="turn_room_queue_unique"),
            models.UniqueConstraint(
                fields=["room"], condition=Q(status="running"), name="turn_one_running_per_room"
            ),
        ]
        indexes = [
            models.Index(fields=["room", "status", "queue_seq"], name="turn_room_status_idx"),
            models.Index(
                fields=["lease_until"], condition=Q(status="running"), name="turn_running_lease_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"turn {self.pk} of room {self.room_id}: {self.status}"


class ToolCall(models.Model):
    """One tool call of a turn's step. Every state change is a compare-and-set (first writer
    wins) and a room event (`tool_call` when created, `tool_update` after)."""

    class Kind(models.TextChoices):
        SERVER = "server"
        CLIENT = "client"
        MCP = "mcp"
        AGENT = "agent"

    class State(models.TextChoices):
        AWAITING_APPROVAL = "awaiting_approval"
        WAITING_CLIENT = "waiting_client"
        RUNNING = "running"  # approved or needing none; `started_at` set once it really runs
        DONE = "done"
        ERROR = "error"
        DENIED = "denied"
        INTERRUPTED = "interrupted"  # a side effect may or may not have happened

    SETTLED = (State.DONE, State.ERROR, State.DENIED, State.INTERRUPTED)
    WAITING = (State.AWAITING_APPROVAL, State.WAITING_CLIENT)  # on a person: the turn parks

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="tool_calls")
    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="tool_calls")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="tool_calls")
    step = models.IntegerField()
    index = models.IntegerField()  # order within the step
    provider_call_id = models.CharField(max_length=100)  # the model's id for it
    name = models.CharField(max_length=64)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    input = models.JSONField(null=True, blank=True)
    arguments = models.TextField(blank=True, default="")  # the input as the model wrote it
    state = models.CharField(max_length=24, choices=State.choices)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    # Copied from the tool when the call is made: recovery must not depend on today's registry.
    side_effects = models.BooleanField(default=False)
    idempotent = models.BooleanField(default=True)
    requires_approval = models.BooleanField(default=False)
    # the person whose message started the turn: only they answer a client tool; they (and the
    # room's owner and moderators) decide an approval
    initiator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.CharField(max_length=500, blank=True, default="")
    # The length of the message's text when the step ended: the text of step n is
    # content[previous step's offset:this offset] (the model's context is rebuilt from it).
    text_offset = models.IntegerField(default=0)
    # An `agent` call's child run as its card shows it (agents.subagents.ChildProgress).
    progress = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)  # committed before the tool runs
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["turn_id", "step", "index"]
        constraints = [
            models.UniqueConstraint(fields=["turn", "step", "index"], name="toolcall_turn_step_index_unique"),
        ]
        indexes = [
            models.Index(fields=["state", "created_at"], name="toolcall_state_idx"),
            models.Index(fields=["message"], name="toolcall_message_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"


class Agent(models.Model):
    """A room set up as an agent: other rooms' assistants may call it as a tool (its turn runs
    in this room, with the room's system prompt, model and tools)."""

    room = models.OneToOneField(Room, on_delete=models.CASCADE, related_name="agent")
    # the tool's name as the calling model sees it (`ask_<name>`)
    name = models.SlugField(max_length=40, unique=True)
    description = models.CharField(max_length=500)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"agent {self.name} (room {self.room_id})"

    @property
    def tool_name(self) -> str:
        return f"ask_{self.name.replace('-', '_')}"


class RoomAgent(models.Model):
    """An agent a room's assistant may call, chosen by the room's owner."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="agent_links")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="caller_links")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["room", "agent"], name="roomagent_unique")]
