"""The turn engine against real Postgres with a scripted provider (no worker, no network)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from agents import runner
from agents.leases import LeaseLost, chunk_write, rooms_sweep
from agents.models import Turn
from agents.providers.base import ProviderError, TextDelta
from agents.providers.scripted import ScriptedProvider
from agents.queue import turn_cancel, turn_take_next
from rooms.models import Message, RoomEvent, StreamChunk
from rooms.services import ClientIdConflict, message_post

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def scripted(monkeypatch):
    provider = ScriptedProvider()
    monkeypatch.setattr(runner, "get_provider", lambda: provider)
    return provider


def post(room, user, text):
    return message_post(room=room, author=user, client_id=uuid.uuid4(), content=text)


def test_a_turn_streams_into_chunks_and_the_message_equals_them(room, alice, scripted):
    scripted.add("Hello there, this is the answer.")
    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="test")
    assert runner.turn_run(taken=taken) == "done"
    message = Message.objects.get(pk=taken.message_id)
    chunks = list(StreamChunk.objects.filter(message=message).order_by("index"))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert message.content == "".join(c.text for c in chunks) == "Hello there, this is the answer."
    assert message.status == "complete"
    # the context had the system prompt and the user's message with their name
    request = scripted.requests[0]
    assert request.messages[0].role == "system"
    assert request.messages[-1].content == "Alice: hi"


def test_event_seqs_are_gapless_and_match_the_room_counter(room, alice, scripted):
    scripted.add("one", "two")
    post(room, alice[0], "a")
    post(room, alice[0], "b")
    for _ in range(2):
        runner.turn_run(taken=turn_take_next(room_id=room.pk, owner="test"))
    seqs = list(RoomEvent.objects.filter(room=room).values_list("seq", flat=True))
    room.refresh_from_db()
    assert seqs == list(range(1, room.last_seq + 1))


def test_turns_are_taken_in_fifo_order_and_only_one_at_a_time(room, alice, scripted):
    first = post(room, alice[0], "first")
    post(room, alice[0], "second")
    taken = turn_take_next(room_id=room.pk, owner="w1")
    assert taken.trigger_message_id == first.message_id
    assert turn_take_next(room_id=room.pk, owner="w2") is None  # leased: a second kick is a no-op


def test_a_provider_error_fails_the_turn_and_keeps_the_partial_text(room, alice, scripted):
    scripted.add([TextDelta("partial "), ProviderError("boom", retryable=True)])
    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="test")
    assert runner.turn_run(taken=taken) == "failed"
    message = Message.objects.get(pk=taken.message_id)
    assert (message.status, message.content) == ("failed", "partial ")
    assert "boom" in Turn.objects.get(pk=taken.turn_id).error


def test_cancel_requested_stops_the_runner_and_closes_the_stream(room, alice, scripted):
    scripted.add(" ".join(f"w{i}" for i in range(200)))
    scripted.delay = 0.01
    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="test")
    turn_cancel(room=room, user=alice[0], turn_id=taken.turn_id)
    assert runner.turn_run(taken=taken) == "cancelled"
    assert scripted.closed == 1
    assert Message.objects.get(pk=taken.message_id).status == "cancelled"


def test_withdrawing_a_queued_turn_needs_its_author_or_the_owner(room, alice, bob, scripted):
    from agents.queue import CancelRefused
    from rooms.services import membership_join

    membership_join(room=room, user=bob[0])
    post(room, alice[0], "first")
    post(room, alice[0], "second")
    queued = Turn.objects.get(room=room, queue_seq__gt=1, status="queued")
    with pytest.raises(CancelRefused):
        turn_cancel(room=room, user=bob[0], turn_id=queued.pk)
    assert turn_cancel(room=room, user=alice[0], turn_id=queued.pk) == "cancelled"


def test_a_worker_that_lost_its_lease_cannot_write_another_chunk(room, alice, scripted):
    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="zombie")
    chunk_write(taken=taken, index=0, text="before ")
    Turn.objects.filter(pk=taken.turn_id).update(lease_until=timezone.now() - timedelta(seconds=1))
    report = rooms_sweep()
    assert report.recovered == 1
    with pytest.raises(LeaseLost):
        chunk_write(taken=taken, index=1, text="after")
    message = Message.objects.get(pk=taken.message_id)
    assert (message.status, message.content) == ("interrupted", "before ")
    assert StreamChunk.objects.filter(message=message).count() == 1


def test_the_same_client_id_is_stored_once_and_different_text_is_a_conflict(room, alice, scripted):
    cid = uuid.uuid4()
    a = message_post(room=room, author=alice[0], client_id=cid, content="x")
    b = message_post(room=room, author=alice[0], client_id=cid, content="x")
    assert (a.message_id, a.seq) == (b.message_id, b.seq) and a.created and not b.created
    with pytest.raises(ClientIdConflict):
        message_post(room=room, author=alice[0], client_id=cid, content="y")
    assert Message.objects.filter(room=room).count() == 1


def test_mention_rooms_only_answer_when_mentioned(alice, scripted):
    from rooms.services import room_create

    quiet = room_create(owner=alice[0], title="Quiet", ai_trigger="mention")
    post(quiet, alice[0], "just people talking, email me@ai.com")
    assert not Turn.objects.filter(room=quiet).exists()
    post(quiet, alice[0], "@ai what do you think?")
    assert Turn.objects.filter(room=quiet).count() == 1
