"""Tools as the pages and the Python client see them, on the real stack: the client's RoomState
keeps calls and notes equal to the database; the room page renders each call's card (escaped)
and the notes; the settings page saves the tool table against the catalog."""

from __future__ import annotations

import json
import re
import uuid
from html import unescape

import pytest
from django.test import Client

from agents.calls import call_wire
from agents.models import ToolCall
from rooms.client import RoomClient
from rooms.models import Room, RoomNote
from rooms.services import membership_join, message_post, note_add
from tests.conftest import run_async

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LOCAL_TIME = {"name": "local_time", "description": "The user's local time.",
              "parameters": {"type": "object", "properties": {}}}  # fmt: skip


def done(c: RoomClient) -> bool:
    return any(t["status"] == "done" for t in c.state.turns.values())


def test_the_python_client_keeps_calls_and_notes_as_the_database_has_them(stack, fake, room, alice, bob):
    membership_join(room=room, user=bob[0])

    async def scenario() -> tuple[RoomClient, RoomClient]:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        b = RoomClient(stack.base_url, room.slug, token=bob[1])
        await a.connect()
        await b.connect()
        await a.send('note it !tool=note:{"text": "Porto in May"} !say=Noted.')
        await b.wait_for(lambda c: any(x["state"] == "awaiting_approval" for x in c.state.calls.values()))
        (pending,) = b.state.calls.values()
        await b.approve(pending["id"])  # a bystander: refused
        await b.wait_for(lambda c: any(e.get("ref") == pending["id"] for e in c.errors))
        await a.approve(pending["id"], approved=True)
        await a.wait_for(done, timeout=30)
        # a client tool, offered with the send and answered by the asker
        await a.send("what time is it? !tool=local_time:{} !say=Late.", tools=[LOCAL_TIME])
        await a.wait_for(lambda c: any(x["state"] == "waiting_client" for x in c.state.calls.values()))
        waiting = next(x for x in a.state.calls.values() if x["state"] == "waiting_client")
        await a.tool_result(waiting["id"], output={"local": "2026-12-03T22:00:00+01:00"})
        await a.wait_for(
            lambda c: sum(t["status"] == "done" for t in c.state.turns.values()) == 2, timeout=30
        )
        await b.wait_for(lambda c: len(c.state.turns) == 2 and all(
            t["status"] == "done" for t in c.state.turns.values()), timeout=30)  # fmt: skip
        for c in (a, b):
            await c.close()
        return a, b

    a, b = run_async(scenario())
    assert b.errors[0]["code"] == "forbidden"
    stored = {str(c.pk): call_wire(c).model_dump() for c in ToolCall.objects.select_related("decided_by")}
    notes = {n.pk: n.text for n in RoomNote.objects.filter(room=room)}
    for c in (a, b):
        assert c.state.calls == stored
        assert (
            {i: n["text"] for i, n in c.state.notes.items()} == notes == {next(iter(notes)): "Porto in May"}
        )
        assert c.malformed == []

    # a fresh client replaying the whole room gets the same
    async def replay() -> RoomClient:
        c = RoomClient(stack.base_url, room.slug, token=bob[1])
        await c.connect()
        await c.close()
        return c

    fresh = run_async(replay())
    assert fresh.state.calls == stored and fresh.state.notes.keys() == notes.keys()


def test_the_room_page_renders_cards_escaped_and_the_notes(stack, fake, room, alice, bob):
    membership_join(room=room, user=bob[0])

    async def scenario() -> None:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await a.send('!tool=calculator:{"expression": "<b>1</b>+1"} !say=Hm.')
        await a.wait_for(done, timeout=30)
        await a.send('!tool=note:{"text": "<i>later</i>"} !say=Ask.')
        await a.wait_for(lambda c: any(x["state"] == "awaiting_approval" for x in c.state.calls.values()))
        await a.close()

    run_async(scenario())
    note_add(room_id=room.pk, text="<script>alert(1)</script> first note")
    web = Client()
    web.force_login(bob[0])
    html = web.get(f"/r/{room.slug}/").content.decode()
    assert "<b>1</b>" not in html and "&lt;b&gt;1&lt;/b&gt;+1" in html
    assert (
        "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; first note" in html
    )
    calc, note = ToolCall.objects.order_by("id")
    assert re.search(rf'id="call-{calc.pk}" data-call-id="{calc.pk}" data-state="error"', html)
    assert f'id="call-{note.pk}" data-call-id="{note.pk}" data-state="awaiting_approval"' in html
    assert "Waiting for approval by Alice or a moderator" in html  # bob is not a moderator
    assert "data-can-moderate" not in html
    # the call's data for the page, as JSON that cannot close its script element
    scripts = re.findall(r'<script type="application/json">(.*?)</script>', html, re.S)
    data = [json.loads(s) for s in scripts]
    assert [d["id"] for d in data] == [str(calc.pk), str(note.pk)]
    assert data[1]["initiator_name"] == "Alice" and data[1]["input"] == {"text": "<i>later</i>"}
    owner = Client()
    owner.force_login(alice[0])
    html = owner.get(f"/r/{room.slug}/").content.decode()
    assert 'data-can-moderate="1"' in html and "Waiting for your approval" in html
    assert unescape(html).count("first note") == 1


def test_the_settings_page_saves_the_tool_table_and_refuses_unknown_names(stack, room, alice):
    web = Client()
    web.force_login(alice[0])
    page = web.get(f"/r/{room.slug}/settings/").content.decode()
    assert 'name="tools_on" value="calculator"' in page
    assert re.search(r'value="note" id="tool-note-ask" aria-label="note asks first" checked', page)
    form = {"title": room.title, "visibility": room.visibility, "ai_enabled": "on", "ai_model": "",
            "system_prompt": "", "ai_trigger": room.ai_trigger, "recovery": room.recovery}  # fmt: skip
    # unchanged tools: the room keeps following the site's defaults
    assert web.post(f"/r/{room.slug}/settings/", {**form, "tools_on": ["calculator", "current_time",
        "search_room", "note", "schedule"], "tools_ask_first": ["note", "schedule"]}).status_code == 302  # fmt: skip
    room.refresh_from_db()
    assert (room.tools_on, room.tools_ask_first) == (None, None)
    response = web.post(f"/r/{room.slug}/settings/", {**form, "tools_on": ["calculator", "rm_rf"]})
    assert (
        response.status_code == 200
        and "rm_rf is not one of the available choices" in response.content.decode()
    )
    room.refresh_from_db()
    assert room.tools_on is None
    web.post(f"/r/{room.slug}/settings/", {**form, "tools_on": ["note", "calculator"]})
    room.refresh_from_db()
    assert room.tools_on == ["calculator", "note"] and room.tools_ask_first == []
    assert Room.objects.get(pk=room.pk).title == room.title


def test_earlier_rows_carry_their_cards(stack, fake, room, alice):
    async def scenario() -> None:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await a.send('!tool=calculator:{"expression": "2*21"} !say=42.')
        await a.wait_for(done, timeout=30)
        await a.close()

    run_async(scenario())
    last = room.messages.order_by("-seq").first()
    for _ in range(3):
        message_post(room=room, author=alice[0], client_id=uuid.uuid4(), content="later")
    web = Client()
    web.force_login(alice[0])
    rows = web.get(f"/r/{room.slug}/earlier/?before={last.seq + 1}").content.decode()
    call = ToolCall.objects.get(room=room)
    assert f'data-call-id="{call.pk}" data-state="done"' in rows and '"result": 42' in rows
