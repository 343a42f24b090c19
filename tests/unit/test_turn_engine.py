"""The turn engine against real Postgres with a scripted provider (no worker, no network)."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from agents import runner, streams
from agents.chunks import chunk_write
from agents.models import Turn
from agents.providers.base import ProviderError, TextDelta
from agents.providers.scripted import ScriptedProvider
from agents.turns import LeaseLost, rooms_sweep, turn_cancel, turn_retry, turn_take_next
from rooms.models import Message, Room, RoomEvent, StreamChunk
from rooms.services import ClientIdConflict, message_post, room_update
from rooms.turns import TurnRefused

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["thread", "loop"])
def scripted(monkeypatch, request):
    """Each test twice: the model read from a thread of the turn's own, and on the worker's
    stream loop (agents/streams.py)."""
    provider = ScriptedProvider(on_loop=request.param == "loop")
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


def test_text_postgres_cannot_store_is_replaced_and_the_turn_still_ends_done(room, alice, scripted):
    # A NUL and a lone surrogate (both can come out of a model's JSON stream): Postgres text
    # holds neither, and the chunk statement is shared by every turn of the process.
    scripted.add([TextDelta("Bad \x00byte "), TextDelta("and \ud800half "), TextDelta("pair, café ✓")])
    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="test")
    assert runner.turn_run(taken=taken) == "done"
    message = Message.objects.get(pk=taken.message_id)
    assert message.content == "Bad \ufffdbyte and \ufffdhalf pair, café ✓"
    assert message.status == "complete"


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
    failure = ProviderError("boom at llm.internal:8443", retryable=True, public="the model did not answer")
    scripted.add([TextDelta("partial "), failure])
    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="test")
    assert runner.turn_run(taken=taken) == "failed"
    message = Message.objects.get(pk=taken.message_id)
    assert (message.status, message.content) == ("failed", "partial ")
    # members are told the public reason; the provider's words and host stay in the log
    error = Turn.objects.get(pk=taken.turn_id).error
    assert error == "model error: the model did not answer" and "llm.internal" not in error


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
    from rooms.services import membership_join

    membership_join(room=room, user=bob[0])
    post(room, alice[0], "first")
    post(room, alice[0], "second")
    queued = Turn.objects.get(room=room, queue_seq__gt=1, status="queued")
    with pytest.raises(TurnRefused):
        turn_cancel(room=room, user=bob[0], turn_id=queued.pk)
    assert turn_cancel(room=room, user=alice[0], turn_id=queued.pk) == "cancelled"


def expire_lease(taken) -> None:
    Turn.objects.filter(pk=taken.turn_id).update(lease_until=timezone.now() - timedelta(seconds=1))


def test_a_worker_that_lost_its_lease_cannot_write_another_chunk(room, alice, scripted):
    room.recovery = "interrupt"
    room.save()
    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="zombie")
    chunk_write(taken=taken, index=0, text="before ")
    expire_lease(taken)
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


def test_a_lost_turn_is_continued_in_the_same_message_with_what_it_already_said(room, alice, scripted):
    post(room, alice[0], "tell me a story")
    first = turn_take_next(room_id=room.pk, owner="dies")
    chunk_write(taken=first, index=0, text="Once upon ")
    chunk_write(taken=first, index=1, text="a time")
    expire_lease(first)
    assert rooms_sweep().recovered == 1
    turn = Turn.objects.get(pk=first.turn_id)
    assert turn.status == "queued" and turn.assistant_message_id == first.message_id
    assert Message.objects.get(pk=first.message_id).status == "streaming"  # recovering
    with pytest.raises(LeaseLost):  # the zombie is fenced off
        chunk_write(taken=first, index=2, text="zombie")
    scripted.add(", there was a room.")
    second = turn_take_next(room_id=room.pk, owner="heir")
    assert (second.turn_id, second.message_id, second.next_index) == (first.turn_id, first.message_id, 2)
    assert second.generation > first.generation
    assert runner.turn_run(taken=second) == "done"
    message = Message.objects.get(pk=first.message_id)
    assert (message.status, message.content) == ("complete", "Once upon a time, there was a room.")
    context = scripted.requests[-1].messages
    assert context[-2].role == "assistant" and context[-2].content == "Once upon a time"
    assert context[-1].content == runner.CONTINUE_PROMPT
    assert Message.objects.filter(room=room, role="assistant").count() == 1


def test_a_turn_that_keeps_losing_its_worker_ends_failed_with_the_reason(room, alice, scripted, settings):
    settings.MAX_TURN_ATTEMPTS = 2
    post(room, alice[0], "hi")
    for _ in range(2):
        taken = turn_take_next(room_id=room.pk, owner="dies")
        expire_lease(taken)
        rooms_sweep()
    turn = Turn.objects.get(pk=taken.turn_id)
    assert turn.status == "failed" and "gave up after 2 attempts" in turn.error
    assert Message.objects.get(pk=taken.message_id).status == "failed"


def test_a_turn_whose_tool_had_side_effects_is_never_rerun(room, alice, scripted):
    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="dies")
    Turn.objects.filter(pk=taken.turn_id).update(side_effects_started=True)
    expire_lease(taken)
    rooms_sweep()
    assert Turn.objects.get(pk=taken.turn_id).status == "interrupted"
    with pytest.raises(TurnRefused):
        turn_retry(room=room, user=alice[0], turn_id=taken.turn_id)


def test_retry_continues_an_interrupted_answer(room, alice, bob, scripted):
    room.recovery = "interrupt"
    room.save()
    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="dies")
    chunk_write(taken=taken, index=0, text="Half ")
    expire_lease(taken)
    rooms_sweep()
    assert turn_retry(room=room, user=alice[0], turn_id=taken.turn_id) == "queued"
    assert Message.objects.get(pk=taken.message_id).status == "streaming"
    scripted.add("done.")
    again = turn_take_next(room_id=room.pk, owner="heir")
    runner.turn_run(taken=again)
    assert Message.objects.get(pk=taken.message_id).content == "Half done."
    with pytest.raises(TurnRefused):  # only interrupted or failed turns retry
        turn_retry(room=room, user=alice[0], turn_id=taken.turn_id)


def test_a_worker_shutting_down_hands_its_turn_over(room, alice, scripted, monkeypatch):
    scripted.add(" ".join(f"w{i}" for i in range(100)))
    scripted.delay = 0.01
    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="leaving")
    for module in (runner, streams):
        monkeypatch.setattr(module, "drain_requested", lambda: True)
        monkeypatch.setattr(module, "heartbeat_every", lambda: 0.05)
    assert runner.turn_run(taken=taken) == "released"
    turn = Turn.objects.get(pk=taken.turn_id)
    assert turn.status == "queued" and turn.attempt == 0
    written = StreamChunk.objects.filter(message_id=taken.message_id).count()
    for module in (runner, streams):
        monkeypatch.setattr(module, "drain_requested", lambda: False)
    scripted.add("the rest")
    heir = turn_take_next(room_id=room.pk, owner="heir")
    assert heir.next_index == written
    assert runner.turn_run(taken=heir) == "done"


def test_the_queue_refuses_more_turns_than_the_room_limit(room, alice, scripted, settings):
    from rooms.services import RoomBusy

    settings.RATE_QUEUED_TURNS_PER_ROOM = 2
    post(room, alice[0], "1")
    post(room, alice[0], "2")
    with pytest.raises(RoomBusy):
        post(room, alice[0], "3")
    assert Message.objects.filter(room=room).count() == 2


def test_the_message_quota_counts_per_user_per_minute(settings):
    from rooms.ratelimit import RateLimited, TokenBucket, message_quota_spend

    settings.RATE_MESSAGES_PER_MINUTE = 3
    user_id = int(uuid.uuid4().int % 10**9)
    for _ in range(3):
        message_quota_spend(user_id=user_id)
    with pytest.raises(RateLimited) as spent:
        message_quota_spend(user_id=user_id)
    assert 0 < spent.value.retry_after <= 60
    bucket = TokenBucket(rate=10, burst=2)
    assert [bucket.take() is None for _ in range(3)] == [True, True, False]


def test_withdrawing_a_recovering_turn_ends_its_message_with_the_text_so_far(room, alice, scripted):
    post(room, alice[0], "tell me a story")
    taken = turn_take_next(room_id=room.pk, owner="dies")
    chunk_write(taken=taken, index=0, text="Once upon")
    expire_lease(taken)
    rooms_sweep()  # queued again, its message still streaming: "recovering"
    assert turn_cancel(room=room, user=alice[0], turn_id=taken.turn_id) == "cancelled"
    message = Message.objects.get(pk=taken.message_id)
    assert (message.status, message.content) == ("cancelled", "Once upon")
    last = RoomEvent.objects.filter(room=room).order_by("-seq")[:2]
    assert [e.type for e in last] == ["turn", "message_update"]


def test_a_chunk_write_repeated_after_a_lost_commit_reply_stores_one_chunk(room, alice, scripted):
    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="w")
    chunk_write(taken=taken, index=0, text="Hello")
    chunk_write(taken=taken, index=0, text="Hello")  # the retry of a write that did commit
    assert list(StreamChunk.objects.filter(message_id=taken.message_id).values_list("text", flat=True)) == [
        "Hello"
    ]


def test_a_brief_database_outage_mid_turn_is_retried_and_the_turn_ends_done(
    room, alice, scripted, monkeypatch
):
    from django.db import OperationalError

    from agents import writer

    scripted.add("one two three")
    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="w")
    failures = {"left": 2}
    real = writer.chunks_write_unsent

    def flaky(rows):
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("terminating connection due to administrator command")
        return real(rows)

    monkeypatch.setattr(writer, "chunks_write_unsent", flaky)
    assert runner.turn_run(taken=taken) == "done"
    assert failures["left"] == 0
    assert Message.objects.get(pk=taken.message_id).content == "one two three"


def test_a_room_has_at_most_one_waiting_kick(room, monkeypatch):
    from agents import kicks, tasks

    sent = []
    monkeypatch.setattr(tasks.kick_room, "delay", lambda room_id: sent.append(room_id))
    kicks.kick_taken(room.pk)
    assert kicks.kick_room_send(room.pk) and not kicks.kick_room_send(room.pk)
    kicks.kick_taken(room.pk)  # a worker started on it: the next ring sends a new kick
    assert kicks.kick_room_send(room.pk)
    assert sent == [room.pk, room.pk]
    kicks.kick_taken(room.pk)


def test_a_post_writes_frames_whose_ids_and_seqs_are_the_databases_even_with_lookalike_content(
    room, alice, scripted, monkeypatch
):
    import json

    from rooms import broadcast

    sent = []
    monkeypatch.setattr(broadcast, "send_to_room_on_commit", lambda room_id, messages: sent.extend(messages))
    tricky = (
        'quotes " and "id":-7000000001 and {"seq":-7000000002} ünïcode \\ "trigger_message_id":-7000000001'
    )
    result = post(room, alice[0], tricky)
    message = Message.objects.get(pk=result.message_id)
    turn = Turn.objects.get(trigger_message=message)
    events = {e.seq: e for e in RoomEvent.objects.filter(room=room)}
    first, second = json.loads(events[message.seq].frame), json.loads(events[message.seq + 1].frame)
    assert first["seq"] == first["message"]["seq"] == message.seq
    assert first["message"]["id"] == message.pk and first["message"]["content"] == tricky == message.content
    assert first["message"]["author"]["id"] == alice[0].pk
    assert second["seq"] == message.seq + 1 and second["turn"]["id"] == turn.pk
    assert second["turn"]["trigger_message_id"] == message.pk and second["turn"]["status"] == "queued"
    assert [(m["seq"], m["text"]) for m in sent] == [
        (s, events[s].frame) for s in (message.seq, message.seq + 1)
    ]
    room.refresh_from_db()
    assert room.last_seq == message.seq + 1


def test_taking_and_closing_a_turn_write_events_whose_ids_and_seqs_are_the_databases(room, alice, scripted):
    import json

    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="w")
    message = Message.objects.get(pk=taken.message_id)
    events = {e.seq: json.loads(e.frame) for e in RoomEvent.objects.filter(room=room)}
    started, running = events[message.seq], events[message.seq + 1]
    assert started["type"] == "message" and started["seq"] == message.seq
    assert started["message"]["id"] == message.pk and started["message"]["seq"] == message.seq
    assert started["message"]["status"] == "streaming" and started["message"]["turn_id"] == taken.turn_id
    assert running["type"] == "turn" and running["turn"]["message_id"] == message.pk
    assert running["turn"]["id"] == taken.turn_id and running["turn"]["status"] == "running"
    chunk_write(taken=taken, index=0, text="Hello")
    from agents.turns import turn_finish

    assert turn_finish(taken=taken, status="done")
    room.refresh_from_db()
    last = [json.loads(e.frame) for e in RoomEvent.objects.filter(room=room).order_by("seq")][-2:]
    assert [(e["type"], e["seq"]) for e in last] == [
        ("message_update", room.last_seq - 1),
        ("turn", room.last_seq),
    ]
    assert last[0]["message"]["content"] == "Hello" and last[0]["message"]["status"] == "complete"
    assert sorted(events) + [room.last_seq - 1, room.last_seq] == list(range(1, room.last_seq + 1))


def test_a_starting_worker_builds_the_model_provider_before_its_first_turn():
    # Importing the openai SDK costs about a second of CPU: paid at worker start, not by the
    # turns that start first (threads pool: worker_init; prefork: each pool process).
    import os

    from celery.signals import worker_init, worker_process_init

    import agents.tasks  # connects the handlers, as the worker's import does
    from agents import providers

    for signal in (worker_init, worker_process_init):  # (sending them would run Celery's own)
        assert agents.tasks._provider_warm in signal._live_receivers(None)
    providers.reset_provider_cache()
    agents.tasks._provider_warm()
    assert providers._cached is not None and providers._cached[0] == os.getpid()
    providers.reset_provider_cache()


def test_a_hundred_runners_ask_redis_about_draining_once_per_interval(monkeypatch):
    # Every runner looks at the drain mark on each loop; with many turns in one process the
    # lookups must not all go to Redis at once (they did, every 0.5 s, a herd of connections).
    import threading
    import time

    from agents import drain

    calls = []

    class SlowRedis:
        def exists(self, *keys):
            calls.append(keys)
            time.sleep(0.05)
            return 0

    monkeypatch.setattr(drain, "redis_sync", lambda: SlowRedis())
    monkeypatch.setattr(drain, "_last", (0.0, False))
    start = threading.Barrier(100)

    def runner():
        start.wait()
        assert drain.drain_requested() is False

    threads = [threading.Thread(target=runner) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert drain.drain_requested() is False and len(calls) == 1  # within the interval: cached


def test_a_room_gets_only_a_model_the_server_offers(room, alice, scripted, settings):
    settings.LLM_MODEL, settings.LLM_MODELS = "house-model", ["cheap-model"]
    with pytest.raises(ValueError, match="not offered"):
        room_update(room=room, ai_model="gpt-4-very-expensive")
    room.refresh_from_db()
    assert room.ai_model == ""
    room_update(room=room, ai_model="cheap-model")
    Room.objects.filter(pk=room.pk).update(ai_model="written-before-the-list")  # an old row
    for _ in range(2):  # the old row's model, then an offered one
        scripted.add("ok")
        post(room, alice[0], "hi")
        taken = turn_take_next(room_id=room.pk, owner="test")
        assert runner.turn_run(taken=taken) == "done"
        Room.objects.filter(pk=room.pk).update(ai_model="cheap-model")
    assert [r.model for r in scripted.requests] == ["house-model", "cheap-model"]


def test_a_message_deleted_while_it_streams_does_not_fail_the_other_turns_chunks(room, alice, scripted):
    from agents.chunks import ChunkRow, chunks_write_unsent
    from rooms.services import room_create

    other = room_create(owner=alice[0], title="Other")
    post(room, alice[0], "one")
    post(other, alice[0], "two")
    first = turn_take_next(room_id=room.pk, owner="w1")
    second = turn_take_next(room_id=other.pk, owner="w2")
    Message.objects.filter(pk=first.message_id).delete()  # a moderator deletes the answer
    held = chunks_write_unsent([ChunkRow(first, 0, "gone"), ChunkRow(second, 0, "kept")])
    assert second.turn_id in held
    assert list(StreamChunk.objects.values_list("message_id", "text")) == [(second.message_id, "kept")]


def test_two_concurrent_posts_cannot_both_take_the_queues_last_place(room, alice, bob, scripted, settings):
    import threading

    from django.db import connection, transaction

    from rooms.services import RoomBusy, membership_join

    settings.RATE_QUEUED_TURNS_PER_ROOM = 2
    membership_join(room=room, user=bob[0])
    post(room, alice[0], "1")  # one place left
    first_in, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def first() -> None:  # takes the last place and holds its transaction open
        try:
            with transaction.atomic():
                post(room, alice[0], "2")
                first_in.set()
                release.wait(30)
        finally:
            connection.close()

    def second() -> None:
        try:
            outcome["second"] = post(room, bob[0], "3")
        except RoomBusy as exc:
            outcome["second"] = exc
        finally:
            connection.close()

    a = threading.Thread(target=first)
    a.start()
    assert first_in.wait(30)
    b = threading.Thread(target=second)
    b.start()
    # the second post is waiting on a lock the first holds (its count or its statement)
    with connection.cursor() as cursor:
        for _ in range(600):
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0]:
                break
            b.join(0.05)
    release.set()
    a.join(30)
    b.join(30)
    assert isinstance(outcome["second"], RoomBusy), outcome
    assert Turn.objects.filter(room=room, status="queued").count() == 2
    assert not Message.objects.filter(room=room, content="3").exists()


def test_on_the_stream_loop_a_turn_starts_no_reader_thread(room, alice, monkeypatch):
    provider = ScriptedProvider(["Read on the loop, every word."], on_loop=True)
    monkeypatch.setattr(runner, "get_provider", lambda: provider)
    monkeypatch.setattr(runner, "_pump", lambda *a: pytest.fail("a reader thread was started"))
    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="test")
    assert runner.turn_run(taken=taken) == "done"
    assert Message.objects.get(pk=taken.message_id).content == "Read on the loop, every word."


def test_on_the_stream_loop_backpressure_keeps_the_text_and_writes_it_later(room, alice, monkeypatch):
    from agents.writer import writer

    words = [f"w{i} " for i in range(40)]
    provider = ScriptedProvider(["".join(words)], delay=0.005, on_loop=True)
    monkeypatch.setattr(runner, "get_provider", lambda: provider)
    full = {"until": 30}  # the writer is "full" for the first 30 words' flushes
    has_room = writer.has_room

    def slow_writer(sink):
        full["until"] -= 1
        return full["until"] < 0 and has_room(sink)

    monkeypatch.setattr(writer, "has_room", slow_writer)
    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="test")
    assert runner.turn_run(taken=taken) == "done"
    chunks = list(StreamChunk.objects.filter(message_id=taken.message_id).order_by("index"))
    assert "".join(c.text for c in chunks) == "".join(words)
    assert len(chunks[0].text) > len(words[0])  # what waited went out as one larger chunk


def test_if_the_stream_loop_stops_the_turn_is_handed_over_and_the_next_loop_goes_on(room, alice, monkeypatch):
    provider = ScriptedProvider([" ".join(f"w{i}" for i in range(100))], delay=0.01, on_loop=True)
    monkeypatch.setattr(runner, "get_provider", lambda: provider)
    monkeypatch.setattr(streams, "heartbeat_every", lambda: 0.05)
    post(room, alice[0], "hi")
    taken = turn_take_next(room_id=room.pk, owner="test")
    loop = streams.stream_loop.loop()
    threading.Timer(0.3, lambda: loop.call_soon_threadsafe(loop.stop)).start()  # as a bug would
    assert runner.turn_run(taken=taken) == "released"
    assert Turn.objects.get(pk=taken.turn_id).status == "queued"
    provider.add("and the rest.")
    again = turn_take_next(room_id=room.pk, owner="heir")
    assert runner.turn_run(taken=again) == "done"  # on a new loop
    assert streams.stream_loop.loop() is not loop
    content = Message.objects.get(pk=taken.message_id).content
    assert content.startswith("w0 w1") and content.endswith("and the rest.")
