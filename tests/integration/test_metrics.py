"""/metrics on the real stack: the web process serves what every process recorded (turns and
chunk writes in the worker, sockets and replays in Daphne, deliveries in the webhooks worker),
and a turn's admin page shows its trace."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from agents.models import Turn, TurnTrace
from rooms.client import RoomClient
from rooms.webhooks.models import WebhookDelivery
from rooms.webhooks.outbound import endpoint_create
from tests.conftest import run_async
from tests.integration.test_webhooks import Receiver, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page by (name, labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_metrics_add_up_every_process_and_the_turn_page_shows_its_trace(stack, fake, room, alice):
    receiver = Receiver()
    prompts = [
        "!say=one two three four",
        '!tool=calculator:{"expression": "6*7"} !say=It is 42.',
        "!tokens=12 !delay=5",
    ]
    try:
        endpoint_create(room=room, user=alice[0], url=receiver.url, events=["turn.done"])

        async def scenario() -> str:
            c = RoomClient(stack.base_url, room.slug, token=alice[1])
            await c.connect()
            for content in prompts:
                client_id = str(uuid.uuid4())
                await c.send_raw(json.dumps({"type": "send", "client_id": client_id, "content": content}))
                await c.wait_ack(client_id)
            await c.wait_for(
                lambda c: (
                    sum(1 for f in c.frames if f["type"] == "turn" and f["turn"]["status"] == "done") == 3
                ),
                timeout=60,
            )
            # scraped while this socket is still open
            async with httpx.AsyncClient() as http:
                response = await http.get(f"{stack.base_url}/metrics")
            await c.close()
            assert response.status_code == 200
            return response.text

        text = run_async(scenario())
        wait_for(lambda: WebhookDelivery.objects.filter(status="delivered").count() == 3, what="deliveries")
        text = httpx.get(f"{stack.base_url}/metrics").text  # now with the deliveries
    finally:
        receiver.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "metrics.txt").write_text(text)
    found = samples(text)
    assert value(found, "roomchat_turns_total", status="done") >= 3  # worker
    assert value(found, "roomchat_turn_first_token_seconds_count") >= 3
    assert value(found, "roomchat_turn_queue_wait_seconds_count") >= 3
    assert value(found, "roomchat_turn_duration_seconds_count") >= 3
    assert value(found, "roomchat_turn_tokens_per_second_count") >= 2
    assert value(found, "roomchat_tool_calls_total", tool="calculator", outcome="done") >= 1
    assert value(found, "roomchat_tool_call_seconds_count", tool="calculator") >= 1
    assert value(found, "roomchat_chunk_write_seconds_count") >= 3
    assert value(found, "roomchat_replay_events_count") >= 1  # Daphne
    assert value(found, "roomchat_webhook_deliveries_total", outcome="delivered") >= 3  # webhooks worker
    assert ("roomchat_approvals_waiting", frozenset()) in found
    assert value(found, "roomchat_turns_now", status="running") == 0

    # the calculator turn's page in the admin shows its trace: the model's steps and the call
    turn = Turn.objects.filter(room=room, status="done").order_by("queue_seq")[1]
    trace = TurnTrace.objects.get(turn=turn)
    names = [s["name"] for s in trace.spans]
    assert names[:2] == ["step 0: model", "step 1: model"] and "step 0: calculator" in names
    admin = get_user_model().objects.create_superuser(f"root-{uuid.uuid4().hex[:6]}", password="pw-x1234567")
    client = Client()
    client.force_login(admin)
    page = client.get(f"/admin/agents/turn/{turn.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'class="turn-trace"' in html and "step 0: calculator" in html and "step 1: model" in html
