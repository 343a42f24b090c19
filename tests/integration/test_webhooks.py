"""Webhooks on the real stack: room events out to a local receiver (signed, retried until it
answers 2xx, recorded), a dead endpoint that does not slow the room, and signed JSON in."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from agents.models import Turn
from rooms.client import RoomClient
from rooms.models import Message
from rooms.services import member_ban, membership_join
from rooms.webhooks.models import InboundHook, WebhookDelivery
from rooms.webhooks.outbound import endpoint_create
from rooms.webhooks.signing import headers_signed, secret_new
from tests.conftest import run_async

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"no {what} in {timeout}s")


class Receiver:
    """A local HTTP receiver that answers the scripted status codes in turn (then 200), or
    never answers (`hang`); it records every request."""

    def __init__(self, codes: list[int] | None = None, hang: bool = False) -> None:
        self.codes = list(codes or [])
        self.hang = hang
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                if receiver.hang:
                    receiver.release.wait(30)
                    return
                code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def post_and_finish(stack: Any, room: Any, token: str, content: str) -> Turn:
    """Send a message over a socket and wait until its turn ended."""

    async def scenario() -> None:
        c = RoomClient(stack.base_url, room.slug, token=token)
        await c.connect()
        client_id = str(uuid.uuid4())
        await c.send_raw(json.dumps({"type": "send", "client_id": client_id, "content": content}))
        await c.wait_ack(client_id)
        await c.close()

    run_async(scenario())
    return wait_for(
        lambda: Turn.objects.filter(room=room, status__in=Turn.TERMINAL).order_by("-pk").first(), what="turn"
    )


def test_deliveries_are_signed_and_retried_until_the_receiver_answers(stack, fake, room, alice):
    receiver = Receiver(codes=[500, 503])  # the first two requests fail, then 200
    try:
        endpoint = endpoint_create(
            room=room, user=alice[0], url=receiver.url, events=["message.posted", "turn.done"]
        )
        turn = post_and_finish(stack, room, alice[1], "!say=hello hooks")
        assert turn.status == "done"
        wait_for(
            lambda: WebhookDelivery.objects.filter(endpoint=endpoint, status="delivered").count() == 2,
            what="two delivered",
        )
    finally:
        receiver.stop()
    deliveries = {d.event_type: d for d in WebhookDelivery.objects.filter(endpoint=endpoint)}
    assert set(deliveries) == {"message.posted", "turn.done"}
    attempts = sorted(d.attempts for d in deliveries.values())
    assert sum(attempts) == 4  # two failed attempts, then one success each
    retried = next(d for d in deliveries.values() if d.attempts > 1)
    assert retried.last_error.startswith("HTTP 50") and retried.last_status_code == 200
    # every request is signed with the endpoint's secret (a receiver checks it as below)
    verifier = Webhook(endpoint.secret)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for request in receiver.requests:
        payload = verifier.verify(request["body"].decode(), request["headers"])
        by_id.setdefault(request["headers"]["webhook-id"], []).append(payload)
    assert len(receiver.requests) == 4 and len(by_id) == 2  # a retry has the same webhook-id
    done = deliveries["turn.done"].payload
    assert done["type"] == "turn.done" and done["room"]["slug"] == room.slug
    assert done["data"]["turn"]["id"] == turn.pk
    assert done["data"]["answer"]["content"] == "hello hooks"
    posted = deliveries["message.posted"].payload["data"]["message"]
    assert posted["content"] == "!say=hello hooks" and posted["author"]["id"] == alice[0].pk
    tampered = receiver.requests[-1]["body"].replace(b"hello", b"HELLO")
    with pytest.raises(Exception, match="signature"):
        verifier.verify(tampered.decode(), receiver.requests[-1]["headers"])


def test_an_endpoint_that_never_answers_does_not_slow_the_room(stack, fake, room, alice):
    receiver = Receiver(hang=True)
    try:
        endpoint = endpoint_create(room=room, user=alice[0], url=receiver.url, events=["message.posted"])
        first = post_and_finish(stack, room, alice[1], "!say=one")
        wait_for(lambda: receiver.requests, what="a delivery under way")
        second = post_and_finish(stack, room, alice[1], "!say=two")
        # both answers finished while the endpoint held its first request unanswered
        assert first.status == second.status == "done"
        assert not WebhookDelivery.objects.filter(endpoint=endpoint, status="delivered").exists()
        wait_for(
            lambda: WebhookDelivery.objects.filter(endpoint=endpoint, attempts__gte=1).exists(),
            what="timeout",
        )
        failed = WebhookDelivery.objects.filter(endpoint=endpoint, attempts__gte=1).first()
        assert "Timeout" in failed.last_error and failed.status == "pending"
    finally:
        receiver.stop()


def signed(secret: str, body: bytes, msg_id: str, now: datetime | None = None) -> dict[str, str]:
    headers = headers_signed(secret=secret, msg_id=msg_id, body=body.decode(), now=now or datetime.now(UTC))
    return headers | {"content-type": "application/json"}


def test_a_signed_json_message_in_is_posted_once_per_event_id(stack, fake, room, alice, bob):
    membership_join(room=room, user=bob[0])
    hook = InboundHook.objects.create(
        room=room, user=bob[0], secret=secret_new(), text_field="message.text",
        id_field="update_id", sender_field="message.from",
    )  # fmt: skip
    url = f"{stack.base_url}/hooks/in/{hook.key}/"
    body = json.dumps({"update_id": 4711, "message": {"text": "!say=bridged", "from": "Carol"}}).encode()

    first = httpx.post(url, content=body, headers=signed(hook.secret, body, "msg_1"))
    assert first.status_code == 202, first.text
    message = Message.objects.get(pk=first.json()["message_id"])
    assert message.author_id == bob[0].pk and message.content == "Carol: !say=bridged"
    turn = wait_for(lambda: Turn.objects.filter(trigger_message=message, status="done").first(), what="turn")
    assert Message.objects.get(pk=turn.assistant_message_id).content == "bridged"

    again = httpx.post(url, content=body, headers=signed(hook.secret, body, "msg_2"))  # the sender retries
    assert again.status_code == 202 and again.json() == first.json() | {"duplicate": True}

    other = json.dumps({"update_id": 4711, "message": {"text": "something else"}}).encode()
    conflict = httpx.post(url, content=other, headers=signed(hook.secret, other, "msg_3"))
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "conflict"

    refused = [
        httpx.post(url, content=body, headers={"content-type": "application/json"}),  # unsigned
        httpx.post(url, content=body, headers=signed(secret_new(), body, "msg_4")),  # another secret
        httpx.post(url, content=body + b" ", headers=signed(hook.secret, body, "msg_5")),  # changed
        httpx.post(
            url, content=body, headers=signed(hook.secret, body, "m", datetime.now(UTC) - timedelta(hours=1))
        ),
        httpx.post(
            url, content=body, headers=signed(hook.secret, body, "m") | {"webhook-signature": "garbage"}
        ),
    ]
    assert [r.status_code for r in refused] == [401] * 5
    assert {r.json()["error"]["code"] for r in refused} == {"invalid_signature"}
    not_json = b"{not json"
    bad = httpx.post(url, content=not_json, headers=signed(hook.secret, not_json, "msg_6"))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    no_text = json.dumps({"update_id": 1}).encode()
    bad = httpx.post(url, content=no_text, headers=signed(hook.secret, no_text, "msg_7"))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_fields"
    assert httpx.post(f"{stack.base_url}/hooks/in/nope/", content=body).status_code == 404

    member_ban(room=room, user=bob[0])  # a banned user's hook posts nothing
    later = json.dumps({"update_id": 4712, "message": {"text": "after the ban"}}).encode()
    banned = httpx.post(url, content=later, headers=signed(hook.secret, later, "msg_8"))
    assert banned.status_code == 403 and banned.json()["error"]["code"] == "forbidden"
    assert Message.objects.filter(room=room, author=bob[0]).count() == 1  # only the first post
