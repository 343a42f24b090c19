"""Every frame the server sends is one of the typed server frames (rooms/protocol.py), exactly:
the models forbid extra fields, so a frame built anywhere else with another shape fails here."""

from __future__ import annotations

import asyncio
import json
import typing

import pytest

from rooms.client import RoomClient
from rooms.protocol import ServerFrame
from tests.conftest import run_async

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _server_types() -> set[str]:
    union = typing.get_args(ServerFrame)[0]
    return {model.model_fields["type"].default for model in typing.get_args(union)}


def test_every_server_frame_kind_arrives_and_matches_its_model(stack, fake, room, alice, bob):
    async def scenario() -> list[RoomClient]:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        b = RoomClient(stack.base_url, room.slug, token=bob[1])
        await a.connect()
        await b.connect()  # presence
        await b.send_raw(json.dumps({"type": "typing"}))  # typing, to a
        await a.send_raw(json.dumps({"type": "cancel", "turn_id": 999_999}))  # error
        await a.ping()  # pong
        await a.send("a long one !tokens=200 !delay=20")  # ack, message, turn, delta
        await a.wait_for(lambda c: any(f["type"] == "delta" for f in c.frames), timeout=20)
        late = RoomClient(stack.base_url, room.slug, token=bob[1])
        await late.connect()  # joins mid-answer: snapshot, then ready
        turn_id = max(a.state.turns)
        await a.cancel(turn_id)  # message_update with the partial answer
        for c in (a, late):
            await c.wait_for(lambda c: c.state.turns[turn_id]["status"] == "cancelled", timeout=20)
        await a.send('note it !tool=note:{"text": "seen"} !say=Noted.')  # tool_call, tool_update, note
        await a.wait_for(lambda c: any(f["type"] == "tool_call" for f in c.frames), timeout=20)
        call = next(f["call"] for f in a.frames if f["type"] == "tool_call")
        await a.send_raw(json.dumps({"type": "tool_approval", "call_id": call["id"], "approved": True}))
        await a.wait_for(lambda c: any(f["type"] == "note" for f in c.frames), timeout=20)
        # moderation from the room: room_update (slow mode), member_update (a mute)
        await a.send_raw(json.dumps({"type": "moderate", "action": "slow_mode", "seconds": 5}))
        await a.send_raw(json.dumps({"type": "moderate", "action": "mute", "user_id": bob[0].pk}))
        await a.wait_for(lambda c: any(f["type"] == "member_update" for f in c.frames), timeout=20)
        await asyncio.sleep(0.2)
        for c in (a, b, late):
            await c.close()
        return [a, b, late]

    clients = run_async(scenario())
    seen = {f["type"] for c in clients for f in c.frames}
    assert seen == _server_types(), f"kinds never sent: {_server_types() - seen}"
    for c in clients:
        assert c.malformed == [], c.malformed[:3]
        assert len(c.frames) > 3


def test_a_frame_with_an_extra_or_missing_field_is_refused_by_the_models() -> None:
    from pydantic import ValidationError

    from rooms.protocol import parse_server_frame

    good = '{"type":"delta","message_id":1,"index":0,"text":"hi"}'
    assert parse_server_frame(good).type == "delta"
    for bad in (
        '{"type":"delta","message_id":1,"index":0,"text":"hi","extra":1}',
        '{"type":"delta","message_id":1,"index":0}',
        '{"type":"nosuch"}',
    ):
        with pytest.raises(ValidationError):
            parse_server_frame(bad)
