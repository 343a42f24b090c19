"""The HTTP API and the OpenAI-compatible door on the real stack (Daphne, a Celery worker,
Postgres, Redis, the fake LLM): the official `openai` client streaming a room's turn while a
socket watches it, idempotent retries, submissions (long-poll, approvals), cancel, errors."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from typing import Any

import httpx
import openai
import pytest

from agents.models import ToolCall, Turn
from rooms.client import RoomClient
from rooms.models import ApiIdempotencyKey, Message, RoomEvent
from rooms.services import membership_join, room_create
from tests.conftest import run_async

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def api(stack: Any, token: str) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def ai(stack: Any, token: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=token, **{"max_retries": 0, **kwargs})


def user_messages(room: Any) -> list[str]:
    return list(Message.objects.filter(room=room, role="user").values_list("content", flat=True))


def test_the_openai_client_streams_a_room_turn_that_a_socket_watches(stack, fake, room, alice, bob):
    membership_join(room=room, user=bob[0])
    question = "Tell us a story !tokens=40 !delay=20"

    async def scenario() -> tuple[list[Any], RoomClient]:
        watcher = RoomClient(stack.base_url, room.slug, token=bob[1])
        await watcher.connect()
        client = openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key=alice[1], max_retries=0)
        chunks = []
        stream = await client.chat.completions.create(
            model=room.slug,
            stream=True,
            messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": question}],
        )
        async for chunk in stream:
            chunks.append(chunk)
        await watcher.wait_for(
            lambda c: any(t["status"] == "done" for t in c.state.turns.values()), timeout=30
        )
        await watcher.close()
        await client.close()
        return chunks, watcher

    chunks, watcher = run_async(scenario())
    answer = Message.objects.get(room=room, role="assistant")
    turn = Turn.objects.get(room=room)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == answer.content and text.endswith(" ".join(f"w{i}" for i in range(1, 41)))
    assert answer.status == "complete" and turn.status == "done"
    assert {c.id for c in chunks} == {f"chatcmpl-{turn.pk}"} and {c.model for c in chunks} == {room.slug}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert sum(1 for c in chunks if c.choices[0].delta.content) > 1  # streamed, not in one piece
    # the watching socket saw the same turn stream: its deltas join to the same text
    deltas = [f for f in watcher.frames if f["type"] == "delta" and f["message_id"] == answer.pk]
    snapshot = [f for f in watcher.frames if f["type"] == "snapshot" and f["message_id"] == answer.pk]
    assert deltas and not snapshot
    assert "".join(f["text"] for f in sorted(deltas, key=lambda f: f["index"])) == text
    assert watcher.state.messages[answer.pk].content == text and watcher.malformed == []
    # the last user message was posted as the token's user, through the socket's service
    posted = Message.objects.get(room=room, role="user")
    assert (posted.author_id, posted.content) == (alice[0].pk, question)
    assert any(f["type"] == "message" and f["message"]["id"] == posted.pk for f in watcher.frames)
    assert fake.requests[-1]["messages"][-1]["content"].endswith(question)


def test_the_openai_client_gets_the_whole_answer_when_not_streaming(stack, fake, room, alice):
    completion = ai(stack, alice[1]).chat.completions.create(
        model=room.slug,
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi !say=Hello there."}]}],
    )
    answer = Message.objects.get(room=room, role="assistant")
    assert completion.choices[0].message.content == answer.content == "Hello there."
    assert completion.choices[0].finish_reason == "stop" and completion.object == "chat.completion"
    assert completion.id == f"chatcmpl-{Turn.objects.get(room=room).pk}"


def test_a_keyed_post_retried_stores_one_message_and_answers_the_same(stack, fake, room, alice):
    events_before = RoomEvent.objects.filter(room=room).count()
    with api(stack, alice[1]) as http:
        url = f"/api/rooms/{room.slug}/messages"
        first = http.post(url, json={"content": "once !say=ok"}, headers={"Idempotency-Key": "k-1"})
        again = http.post(url, json={"content": "once !say=ok"}, headers={"Idempotency-Key": "k-1"})
        other = http.post(url, json={"content": "twice"}, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    assert other.headers["x-should-retry"] == "false"
    assert user_messages(room) == ["once !say=ok"]
    assert Turn.objects.filter(room=room).count() == 1
    # the post's two events (message, turn) and no more came from the three requests; the
    # turn's own events follow as it runs
    posted = first.json()
    assert posted["turn"]["status"] == "queued" and posted["message"]["content"] == "once !say=ok"
    stored = RoomEvent.objects.filter(room=room, seq__lte=posted["message"]["seq"] + 1).count()
    assert stored - events_before == 2


def test_racing_retries_with_one_key_store_one_message(stack, fake, room, alice):
    def post(_: int) -> httpx.Response:
        with api(stack, alice[1]) as http:
            return http.post(
                f"/api/rooms/{room.slug}/messages",
                json={"content": "race !say=ok"},
                headers={"Idempotency-Key": "race"},
            )

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, range(6)))
    assert {a.status_code for a in answers} == {201}
    assert len({a.text for a in answers}) == 1
    assert user_messages(room) == ["race !say=ok"]
    assert ApiIdempotencyKey.objects.filter(user=alice[0], key="race").count() == 1


def test_an_openai_retry_with_the_same_key_follows_the_same_turn(stack, fake, room, alice):
    client = ai(stack, alice[1])
    messages = [{"role": "user", "content": "remember me !say=Sure thing."}]
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = client.chat.completions.create(model=room.slug, messages=messages, extra_headers=key)
    again = client.chat.completions.create(model=room.slug, messages=messages, extra_headers=key)
    assert (first.id, first.choices[0].message.content) == (again.id, again.choices[0].message.content)
    assert first.choices[0].message.content == "Sure thing."
    # the streamed retry is another request body: refused, not retried by the client, nothing stored
    with pytest.raises(openai.ConflictError) as refused:
        ai(stack, alice[1], max_retries=2).chat.completions.create(
            model=room.slug, messages=messages, extra_headers=key, stream=True
        )
    assert refused.value.code == "idempotency_conflict"
    assert user_messages(room) == ["remember me !say=Sure thing."]
    assert Turn.objects.filter(room=room).count() == 1


def test_models_are_the_rooms_the_token_may_post_to(stack, fake, room, alice, bob):
    private = room_create(owner=bob[0], title="Bob's den", visibility="private")
    public = room_create(owner=bob[0], title="Bob's hall")
    ids = {m.id for m in ai(stack, alice[1]).models.list()}
    assert {room.slug, public.slug} <= ids and private.slug not in ids
    assert ai(stack, alice[1]).models.retrieve(room.slug).title == "Test room"
    with pytest.raises(openai.AuthenticationError):
        ai(stack, "rct_not-a-token").models.list()
    with pytest.raises(openai.PermissionDeniedError) as denied:
        ai(stack, alice[1]).chat.completions.create(
            model=private.slug, messages=[{"role": "user", "content": "hi"}]
        )
    assert denied.value.code == "forbidden"
    assert not Message.objects.filter(room=private).exists()


def test_bad_requests_get_a_stable_code_and_store_nothing(stack, fake, room, alice):
    mention_only = room_create(owner=alice[0], title="Quiet", ai_trigger="mention")
    client = ai(stack, alice[1])
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-room", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "not_found"
    with pytest.raises(openai.BadRequestError) as no_answer:
        client.chat.completions.create(model=mention_only.slug, messages=[{"role": "user", "content": "hi"}])
    assert no_answer.value.code == "no_answer"
    with pytest.raises(openai.BadRequestError) as no_user:
        client.chat.completions.create(model=room.slug, messages=[{"role": "system", "content": "hi"}])
    assert no_user.value.code == "invalid"
    with api(stack, alice[1]) as http:
        url = f"/api/rooms/{room.slug}/messages"
        blank = http.post(url, json={"content": "   "})
        extra = http.post(url, json={"content": "hi", "colour": "red"})
        broken = http.post(url, content=b"{not json", headers={"content-type": "application/json"})
        long = http.post(url, json={"content": "x" * 20_000})
        bad_key = http.post(url, json={"content": "hi"}, headers={"Idempotency-Key": "a b"})
    assert [r.status_code for r in (blank, extra, broken, long, bad_key)] == [400] * 5
    assert [r.json()["error"]["code"] for r in (blank, extra, broken, long, bad_key)] == [
        "invalid", "invalid", "bad_json", "invalid", "invalid",
    ]  # fmt: skip
    assert blank.json()["error"]["param"] == "content"
    assert not Message.objects.filter(room__in=[room, mention_only]).exists()
    assert not RoomEvent.objects.filter(room__in=[room, mention_only]).exists()


def test_a_submission_parks_is_approved_over_http_and_ends(stack, fake, room, alice, bob):
    membership_join(room=room, user=bob[0])
    with api(stack, alice[1]) as http, api(stack, bob[1]) as bystander:
        posted = http.post(
            f"/api/rooms/{room.slug}/messages",
            json={"content": 'remember this !tool=note:{"text": "buy milk"} !say=Noted.'},
        ).json()
        url = posted["submission_url"]
        parked = http.get(url, params={"wait": 30}).json()
        assert parked["status"] == "parked" and not parked["settled"]
        [call] = parked["waiting_calls"]
        # asked again by one who saw it parked: nothing moved, so it is still parked when the wait ends
        assert http.get(url, params={"wait": 0.5, "after": "parked"}).json()["status"] == "parked"
        assert (call["name"], call["state"]) == ("note", "awaiting_approval")
        approval = f"/api/rooms/{room.slug}/calls/{call['id']}/approval"
        refused = bystander.post(approval, json={"approved": True})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
        decided = http.post(approval, json={"approved": True})
        assert decided.status_code == 200 and decided.json()["call"]["state"] != "awaiting_approval"
        done = http.get(url, params={"wait": 30, "after": "parked"}).json()
        again = http.post(approval, json={"approved": False})
        turn = http.get(f"/api/rooms/{room.slug}/turns/{posted['turn']['id']}").json()
    assert done["status"] == "done" and done["settled"] and done["text"].endswith("Noted.")
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    assert [c["state"] for c in turn["calls"]] == ["done"] and turn["calls"][0]["decided_by"]["id"] == alice[
        0
    ].pk
    assert ToolCall.objects.get(room=room).state == "done"


def test_cancelling_over_http_ends_the_openai_stream_with_the_partial_answer(stack, fake, room, alice):
    async def scenario() -> tuple[str, Any, int]:
        client = openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key=alice[1], max_retries=0)
        http = httpx.AsyncClient(base_url=stack.base_url, headers={"Authorization": f"Bearer {alice[1]}"})
        pieces: list[str] = []
        stream = await client.chat.completions.create(
            model=room.slug,
            stream=True,
            messages=[{"role": "user", "content": "go on !tokens=2000 !delay=20"}],
        )
        error = None
        turn_id = 0
        try:
            async for chunk in stream:
                pieces.append(chunk.choices[0].delta.content or "")
                if turn_id == 0 and len("".join(pieces)) > 0:
                    turn_id = int(chunk.id.removeprefix("chatcmpl-"))
                    cancel = await http.post(f"/api/rooms/{room.slug}/turns/{turn_id}/cancel")
                    assert cancel.status_code == 200
        except openai.APIError as exc:
            error = exc
        await http.aclose()
        await client.close()
        return "".join(pieces), error, turn_id

    text, error, turn_id = run_async(scenario())
    turn = Turn.objects.get(pk=turn_id)
    answer = Message.objects.get(pk=turn.assistant_message_id)
    assert turn.status == "cancelled" and answer.status == "cancelled"
    assert error is not None and error.code == "turn_cancelled"
    assert text == answer.content and 0 < len(text) < len(" ".join(f"w{i}" for i in range(1, 2001)))


def test_the_transcript_pages_by_seq_and_many_long_polls_share_few_threads(stack, fake, room, alice):
    with api(stack, alice[1]) as http:
        posted = http.post(
            f"/api/rooms/{room.slug}/messages", json={"content": "count !tokens=30 !delay=30"}
        ).json()

    async def polls() -> list[dict[str, Any]]:
        # more waiting requests than the web process has database threads (DB_POOL_MAX): none
        # holds one while it waits
        async with httpx.AsyncClient(
            base_url=stack.base_url, headers={"Authorization": f"Bearer {alice[1]}"}, timeout=60
        ) as client:
            answers = await asyncio.gather(
                *(client.get(posted["submission_url"], params={"wait": 30}) for _ in range(16))
            )
        return [a.json() for a in answers]

    answers = run_async(polls())
    text = Message.objects.get(room=room, role="assistant").content
    assert text.endswith(" w29 w30")
    assert {(a["status"], a["text"]) for a in answers} == {("done", text)}
    with api(stack, alice[1]) as http:
        first = http.get(f"/api/rooms/{room.slug}/messages", params={"limit": 1}).json()
        second = http.get(f"/api/rooms/{room.slug}/messages", params={"since": first["next_since"]}).json()
        rest = http.get(f"/api/rooms/{room.slug}/messages", params={"since": second["next_since"]}).json()
    assert [m["role"] for m in first["messages"]] == ["user"] and first["has_more"]
    assert [(m["role"], m["content"]) for m in second["messages"]] == [("assistant", text)]
    assert not second["has_more"] and second["next_since"] == second["latest_seq"]
    assert rest["messages"] == [] and rest["next_since"] == second["next_since"]


def test_two_openai_streams_into_one_room_each_get_their_own_turn_in_order(stack, fake, room, alice, bob):
    membership_join(room=room, user=bob[0])

    async def ask(token: str, content: str) -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key=token, max_retries=0)
        stream = await client.chat.completions.create(
            model=room.slug, stream=True, messages=[{"role": "user", "content": content}]
        )
        pieces, ids = [], set()
        async for chunk in stream:
            pieces.append(chunk.choices[0].delta.content or "")
            ids.add(chunk.id)
        await client.close()
        [only] = ids
        return only, "".join(pieces)

    async def scenario() -> list[tuple[str, str]]:
        first = asyncio.create_task(ask(alice[1], "first !tokens=30 !delay=20"))
        while not Message.objects.filter(room=room, role="user").exists():
            await asyncio.sleep(0.02)  # the first post is stored: the second queues behind it
        second = asyncio.create_task(ask(bob[1], "second !say=Second answer."))
        return list(await asyncio.gather(first, second))

    (id1, text1), (id2, text2) = run_async(scenario())
    turns = list(Turn.objects.filter(room=room).order_by("queue_seq"))
    assert [t.status for t in turns] == ["done", "done"]
    assert (id1, id2) == (f"chatcmpl-{turns[0].pk}", f"chatcmpl-{turns[1].pk}")
    assert text1 == Message.objects.get(pk=turns[0].assistant_message_id).content and text1.endswith(" w30")
    assert text2 == Message.objects.get(pk=turns[1].assistant_message_id).content == "Second answer."
    assert turns[0].finished_at <= turns[1].started_at  # one at a time, in order


def test_a_client_that_leaves_mid_stream_does_not_stop_the_turn(stack, fake, room, alice):
    client = ai(stack, alice[1])
    stream = client.chat.completions.create(
        model=room.slug, stream=True, messages=[{"role": "user", "content": "long !tokens=60 !delay=20"}]
    )
    got = []
    for chunk in stream:
        if chunk.choices[0].delta.content:
            got.append(chunk.choices[0].delta.content)
        if len(got) == 2:
            break
    stream.close()  # the client goes away with the answer half read
    with api(stack, alice[1]) as http:
        message_id = Message.objects.get(room=room, role="user").pk
        done = http.get(f"/api/rooms/{room.slug}/submissions/{message_id}", params={"wait": 30}).json()
    assert (
        done["status"] == "done" and done["text"].startswith("".join(got)) and done["text"].endswith(" w60")
    )


CLIENT_TOOL = {"name": "local_time", "description": "The user's local time.",
               "parameters": {"type": "object", "properties": {}}}  # fmt: skip


def test_a_script_offers_a_client_tool_and_answers_its_call_over_http(stack, fake, room, alice, bob):
    membership_join(room=room, user=bob[0])
    with api(stack, alice[1]) as http, api(stack, bob[1]) as bystander:
        posted = http.post(
            f"/api/rooms/{room.slug}/messages",
            json={
                "content": "what time is it for me? !tool=local_time:{} !say=It is evening.",
                "tools": [CLIENT_TOOL],
            },
        ).json()
        parked = http.get(posted["submission_url"], params={"wait": 30}).json()
        [call] = parked["waiting_calls"]
        assert (call["name"], call["kind"], call["state"]) == ("local_time", "client", "waiting_client")
        result = f"/api/rooms/{room.slug}/calls/{call['id']}/result"
        refused = bystander.post(result, json={"output": {"time": "09:00"}})
        answered = http.post(result, json={"output": {"time": "21:30"}})
        done = http.get(posted["submission_url"], params={"wait": 30, "after": "parked"}).json()
        listed = http.get(f"/api/rooms/{room.slug}/calls", params={"turn_id": posted["turn"]["id"]}).json()
    assert refused.status_code == 403 and answered.status_code == 200
    assert done["status"] == "done" and done["text"].endswith("It is evening.")
    assert [(c["id"], c["state"], c["output"]) for c in listed["calls"]] == [
        (call["id"], "done", {"time": "21:30"})
    ]
    assert Turn.objects.get(pk=posted["turn"]["id"]).client_tools == [CLIENT_TOOL]


def test_a_failed_turn_is_an_error_the_openai_client_does_not_retry_and_a_member_can_retry(
    stack, fake, room, alice
):
    client = ai(stack, alice[1], max_retries=2)  # the client's own retries would post again
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(
            model=room.slug, messages=[{"role": "user", "content": "break !fail=500"}]
        )
    assert failed.value.code == "turn_failed" and failed.value.response.headers["x-should-retry"] == "false"
    assert user_messages(room) == ["break !fail=500"]  # once: the 502 was not retried
    turn = Turn.objects.get(room=room)
    assert turn.status == "failed" and f"turn {turn.pk} ended failed" in failed.value.message
    with api(stack, alice[1]) as http:
        listed = http.get(f"/api/rooms/{room.slug}/turns").json()
        retried = http.post(f"/api/rooms/{room.slug}/turns/{turn.pk}/retry")
        message_id = Message.objects.get(room=room, role="user").pk
        settled = http.get(f"/api/rooms/{room.slug}/submissions/{message_id}", params={"wait": 30}).json()
        missing = http.post(f"/api/rooms/{room.slug}/turns/999999/cancel")
    assert [t["id"] for t in listed["turns"]] == [turn.pk]
    assert retried.status_code == 200 and retried.json()["turn"]["status"] in ("queued", "running", "failed")
    assert settled["status"] == "failed" and settled["settled"]  # the fake fails it again
    assert Turn.objects.get(pk=turn.pk).attempt >= 1 and user_messages(room) == ["break !fail=500"]
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_an_openai_stream_gets_every_chunk_once_when_the_web_process_loses_redis(stack, fake, room, alice):
    from tests.integration.test_hub import kill_hub_connections

    async def scenario() -> str:
        client = openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key=alice[1], max_retries=0)
        stream = await client.chat.completions.create(
            model=room.slug, stream=True, messages=[{"role": "user", "content": "long !tokens=150 !delay=15"}]
        )
        pieces: list[str] = []
        killed = 0
        async for chunk in stream:
            pieces.append(chunk.choices[0].delta.content or "")
            if killed < 2 and len(pieces) in (5, 40):  # the broadcasts it follows are lost meanwhile
                killed += 1
                assert await asyncio.to_thread(kill_hub_connections) >= 1
        await client.close()
        return "".join(pieces)

    text = run_async(scenario())
    answer = Message.objects.get(room=room, role="assistant")
    assert answer.status == "complete" and text == answer.content and text.endswith(" w149 w150")
