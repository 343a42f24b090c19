"""The owner sets a room up as an agent and lets another room's assistant call it, on the room
settings page; only agents whose room the owner may read are offered, and a taken name is a
form error that changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from agents.models import Agent, RoomAgent
from agents.toolbox import Toolbox
from rooms.models import Room
from rooms.services import room_create
from tests.conftest import make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def settings_post(client: Client, room: Room, **fields: Any) -> Any:
    data = {"title": room.title, "visibility": room.visibility, "ai_model": "", "system_prompt": "x",
            "ai_trigger": "every", "recovery": "continue", "ai_enabled": "on", **fields}  # fmt: skip
    return client.post(f"/r/{room.slug}/settings/", data)


def test_an_owner_sets_up_an_agent_and_another_room_may_call_it(alice: tuple[Any, str], room: Room) -> None:
    client = Client()
    client.force_login(alice[0])
    researcher = room_create(owner=alice[0], title="Researcher")
    reply = settings_post(client, researcher, is_agent="on", agent_name="researcher",
                          agent_description="Finds things out.")  # fmt: skip
    assert reply.status_code == 302, reply.content.decode()[:2000]
    agent = Agent.objects.get(room=researcher)
    assert (agent.name, agent.enabled, agent.tool_name) == ("researcher", True, "ask_researcher")
    page = client.get(f"/r/{room.slug}/settings/").content.decode()
    assert "ask_researcher" in page
    assert settings_post(client, room, agents_on=str(agent.pk)).status_code == 302
    assert list(RoomAgent.objects.filter(room=room).values_list("agent_id", flat=True)) == [agent.pk]
    toolbox = Toolbox.for_turn(room=room, client_tools=[])
    assert "ask_researcher" in toolbox.agents
    assert any(s["function"]["name"] == "ask_researcher" for s in toolbox.specs())
    # switched off: no longer offered, and its link is dropped at the next save
    settings_post(client, researcher, agent_name="researcher", agent_description="Finds things out.")
    assert not Agent.objects.get(room=researcher).enabled
    assert "ask_researcher" not in Toolbox.for_turn(room=room, client_tools=[]).agents


def test_a_private_agent_room_the_owner_cannot_read_is_not_offered_and_a_taken_name_is_refused(
    alice: tuple[Any, str], room: Room
) -> None:
    bob, _ = make_user("Bob")
    secret = room_create(owner=bob, title="Secret", visibility=Room.Visibility.PRIVATE)
    hidden = Agent.objects.create(room=secret, name="secret", description="Bob's.")
    client = Client()
    client.force_login(alice[0])
    assert "ask_secret" not in client.get(f"/r/{room.slug}/settings/").content.decode()
    settings_post(client, room, agents_on=str(hidden.pk))  # a forged choice
    assert not RoomAgent.objects.filter(room=room).exists()
    RoomAgent.objects.create(room=room, agent=hidden)  # even if linked some other way
    assert "ask_secret" not in Toolbox.for_turn(room=room, client_tools=[]).agents
    mine = room_create(owner=alice[0], title="Mine")
    reply = settings_post(client, mine, is_agent="on", agent_name="secret", agent_description="Mine.")
    assert reply.status_code == 200 and "another agent is called" in reply.content.decode()
    assert not Agent.objects.filter(room=mine).exists()
