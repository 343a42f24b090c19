"""The room's Schedules page and the owner's Webhooks page: made from the page, refused with
the reason (storing nothing), members and owners only."""

from __future__ import annotations

import pytest
from django.test import Client

from agents.models import Schedule
from rooms.services import membership_join
from rooms.webhooks.models import InboundHook, WebhookEndpoint

pytestmark = [pytest.mark.django_db]


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_member_schedules_from_the_room_page_and_sees_it_listed(room, alice, bob):
    membership_join(room=room, user=bob[0])
    web = logged_in(bob[0])
    assert 'id="room-schedules"' in web.get(f"/r/{room.slug}/").content.decode()
    made = web.post(f"/r/{room.slug}/schedules/", {
        "prompt": "summarise yesterday", "kind": "cron", "cron": "0 9 * * 1-5", "timezone": "Europe/Lisbon",
    })  # fmt: skip
    assert made.status_code == 302
    schedule = Schedule.objects.get(room=room)
    assert (schedule.created_by_id, schedule.created_via, schedule.timezone) == (
        bob[0].pk,
        "page",
        "Europe/Lisbon",
    )
    page = web.get(f"/r/{room.slug}/schedules/").content.decode()
    assert "summarise yesterday" in page and "cron &#x27;0 9 * * 1-5&#x27; (Europe/Lisbon)" in page

    bad = web.post(
        f"/r/{room.slug}/schedules/", {"prompt": "x", "kind": "cron", "cron": "nope", "timezone": "UTC"}
    )
    assert bad.status_code == 400 and "not a cron expression" in bad.content.decode()
    bad = web.post(f"/r/{room.slug}/schedules/", {"prompt": "x", "kind": "interval", "every_minutes": "0.01",
                                                  "timezone": "UTC"})  # fmt: skip
    assert bad.status_code == 400 and "at least 60 seconds" in bad.content.decode()
    assert Schedule.objects.filter(room=room).count() == 1

    change = f"/r/{room.slug}/schedules/{schedule.pk}/"
    assert web.post(change, {"action": "pause"}).status_code == 302
    assert not Schedule.objects.get(pk=schedule.pk).enabled
    assert web.post(change, {"action": "resume"}).status_code == 302
    assert Schedule.objects.get(pk=schedule.pk).enabled
    assert web.post(change, {"action": "delete"}).status_code == 302
    assert not Schedule.objects.filter(pk=schedule.pk).exists()


def test_outsiders_get_no_schedules_and_only_the_owner_manages_webhooks(alice, bob):
    from rooms.services import room_create

    private = room_create(owner=alice[0], title="private", visibility="private")
    outsider = logged_in(bob[0])
    assert outsider.get(f"/r/{private.slug}/schedules/").status_code == 403
    assert outsider.post(f"/r/{private.slug}/schedules/", {"prompt": "x", "kind": "cron", "cron": "* * * * *",
                                                          "timezone": "UTC"}).status_code == 403  # fmt: skip
    membership_join(room=private, user=bob[0])
    assert outsider.get(f"/r/{private.slug}/webhooks/").status_code == 403  # a member, not the owner
    assert not Schedule.objects.exists()

    owner = logged_in(alice[0])
    made = owner.post(f"/r/{private.slug}/webhooks/", {
        "form": "endpoint", "url": "https://example.test/hook", "events": ["turn.done", "turn.parked"],
    })  # fmt: skip
    assert made.status_code == 302
    endpoint = WebhookEndpoint.objects.get(room=private)
    assert endpoint.events == ["turn.done", "turn.parked"] and endpoint.secret.startswith("whsec_")
    assert endpoint.cursor_seq == private.last_seq  # starts with the room's next event
    bad = owner.post(
        f"/r/{private.slug}/webhooks/", {"form": "endpoint", "url": "not a url", "events": ["x"]}
    )
    assert bad.status_code == 400 and WebhookEndpoint.objects.count() == 1
    owner.post(f"/r/{private.slug}/webhooks/", {"form": "inbound", "name": "bridge", "text_field": "message.text",
                                                "id_field": "update_id", "sender_field": ""})  # fmt: skip
    hook = InboundHook.objects.get(room=private)
    page = owner.get(f"/r/{private.slug}/webhooks/").content.decode()
    assert f"/hooks/in/{hook.key}/" in page and hook.secret in page and endpoint.url in page


def test_an_inbound_hook_shares_its_users_message_quota(room, alice, settings):
    import json
    from datetime import UTC, datetime

    from rooms.webhooks.signing import headers_signed, secret_new

    settings.RATE_MESSAGES_PER_MINUTE = 1
    hook = InboundHook.objects.create(room=room, user=alice[0], secret=secret_new())
    codes = []
    for n in range(2):
        body = json.dumps({"text": f"message {n}"})
        headers = headers_signed(secret=hook.secret, msg_id=f"m{n}", body=body, now=datetime.now(UTC))
        response = Client().post(f"/hooks/in/{hook.key}/", body, content_type="application/json",
                                 headers=headers)  # fmt: skip
        codes.append(response.status_code)
    assert codes == [202, 429]
    assert response.json()["error"]["code"] == "rate_limited" and int(response["Retry-After"]) >= 1
    assert room.messages.count() == 1
