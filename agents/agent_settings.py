"""Agents as the calling room sees them: a room set up as an agent (agents.models.Agent), the
agents a room's owner lets its assistant call (RoomAgent), and each one as the tool the model is
offered (`ask_<name>`, one argument: the task). The runs themselves: agents/subagents.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction

from agents.models import Agent, RoomAgent
from rooms.models import Membership, Room
from rooms.turns import AgentChoice, AgentSetup, TurnRefused

AGENT_TOOL_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "task": {
            "type": "string",
            "minLength": 1,
            "maxLength": 4000,
            "description": "What the agent should do, with everything it needs to know.",
        }
    },
    "required": ["task"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class AgentTool:
    """An agent as the calling model is offered it."""

    agent_id: int
    room_id: int
    name: str
    title: str
    description: str

    def spec(self) -> dict[str, Any]:
        """The OpenAI `tools` entry."""
        description = f"Ask the agent {self.title!r}: {self.description}"[:1000]
        return {
            "type": "function",
            "function": {"name": self.name, "description": description, "parameters": AGENT_TOOL_PARAMETERS},
        }


def agent_usable_by(*, agent_room: Room, user_id: int) -> bool:
    """Whether a room's owner may have its assistant call this agent: they may read its room
    (its answers would otherwise leak that room's transcript)."""
    membership = Membership.objects.filter(room=agent_room, user_id=user_id).values_list(
        "banned_at", flat=True
    )
    found = list(membership)
    if found:
        return found[0] is None
    return agent_room.visibility == Room.Visibility.PUBLIC


def room_agent_tools(*, room: Room) -> dict[str, AgentTool]:
    """The agents the room's owner chose, that are on and that the owner may still use."""
    tools: dict[str, AgentTool] = {}
    links = RoomAgent.objects.filter(room=room, agent__enabled=True).select_related("agent__room")
    for link in links:
        agent = link.agent
        if agent.room_id == room.pk or not agent.room.ai_enabled:
            continue
        if not agent_usable_by(agent_room=agent.room, user_id=room.owner_id):
            continue
        tools[agent.tool_name] = AgentTool(
            agent.pk, agent.room_id, agent.tool_name, agent.room.title, agent.description
        )
    return tools


def agent_settings(*, room: Room) -> tuple[AgentSetup | None, list[AgentChoice]]:
    """The room as an agent, and the agents its owner may let its assistant call."""
    own = Agent.objects.filter(room=room).first()
    setup = None if own is None else AgentSetup(own.enabled, own.name, own.description)
    chosen = set(RoomAgent.objects.filter(room=room).values_list("agent_id", flat=True))
    choices = []
    for agent in (
        Agent.objects.filter(enabled=True).exclude(room=room).select_related("room").order_by("name")[:200]
    ):
        if agent.pk in chosen or agent_usable_by(agent_room=agent.room, user_id=room.owner_id):
            choices.append(AgentChoice(agent.pk, agent.tool_name, agent.room.title, agent.description,
                                       agent.pk in chosen))  # fmt: skip
    return setup, choices


def agent_settings_save(*, room: Room, setup: AgentSetup | None, chosen: list[int]) -> None:
    """Set the room up as an agent (or switch it off), and save the agents it may call."""
    with transaction.atomic():
        own = Agent.objects.select_for_update().filter(room=room).first()
        if setup is not None and setup.enabled:
            if Agent.objects.filter(name=setup.name).exclude(room=room).exists():
                raise TurnRefused("conflict", f"another agent is called {setup.name!r}")
            Agent.objects.update_or_create(
                room=room, defaults={"name": setup.name, "description": setup.description, "enabled": True}
            )
        elif own is not None:
            own.enabled = False
            own.save(update_fields=["enabled"])
        _, choices = agent_settings(room=room)
        allowed = {c.id for c in choices} & set(chosen)
        RoomAgent.objects.filter(room=room).exclude(agent_id__in=allowed).delete()
        RoomAgent.objects.bulk_create(
            [RoomAgent(room=room, agent_id=a) for a in sorted(allowed)], ignore_conflicts=True
        )
