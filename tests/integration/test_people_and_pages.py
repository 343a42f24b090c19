"""People and pages: private rooms, invite links, tokens, presence and typing."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from rooms.client import RoomClient
from rooms.models import ApiToken, Membership
from rooms.services import room_create
from tests.conftest import run_async

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def logged_in(user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def test_a_private_room_is_closed_to_non_members_until_they_use_the_invite_link(alice, bob):
    private = room_create(owner=alice[0], title="Secret", visibility="private")
    page = logged_in(bob[0])
    assert page.get(f"/r/{private.slug}/").status_code == 403
    assert page.get(f"/r/{private.slug}/join/wrong-token/").status_code == 403
    assert not Membership.objects.filter(room=private, user=bob[0]).exists()
    response = page.get(f"/r/{private.slug}/join/{private.invite_token}/")
    assert response.status_code == 302
    assert page.get(f"/r/{private.slug}/").status_code == 200
    owner_page = logged_in(alice[0]).get(f"/r/{private.slug}/").content.decode()
    assert private.invite_token in owner_page  # the owner can share the link


def test_anonymous_visitors_are_sent_to_log_in():
    response = Client().get("/r/anything/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_forms_refuse_posts_without_a_csrf_token(alice, room):
    page = logged_in(alice[0])
    assert page.post("/", {"title": "x"}).status_code == 403
    assert page.post(f"/r/{room.slug}/post/", {"content": "x"}).status_code == 403
    assert page.post("/tokens/", {"name": "x"}).status_code == 403


def test_tokens_are_created_once_shown_and_revoked_from_the_page(stack, alice, room):
    page = Client()
    page.force_login(alice[0])
    body = page.post("/tokens/", {"name": "my bot"}).content.decode()
    token = ApiToken.objects.get(user=alice[0], name="my bot")
    raw = re.search(r"rct_[A-Za-z0-9_-]{43}", body).group(0)  # shown once, right after creation
    assert raw.startswith(token.prefix)
    assert raw not in page.get("/tokens/").content.decode()

    async def connects(raw_token: str) -> int | None:
        client = RoomClient(stack.base_url, room.slug, token=raw_token)
        try:
            await client.connect()
        except ConnectionError:
            return client.close_code
        await client.close()
        return 0

    assert run_async(connects(raw)) == 0
    page.post(f"/tokens/{token.pk}/revoke/")
    assert run_async(connects(raw)) == 4401


def test_presence_and_typing_reach_the_other_members(stack, fake, room, alice, bob):
    async def scenario() -> tuple[list, list]:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        b = RoomClient(stack.base_url, room.slug, token=bob[1])
        await a.connect()
        await b.connect()
        await a.wait_for(
            lambda c: any(
                f["type"] == "presence" and {u["name"] for u in f["users"]} == {"Alice", "Bob"}
                for f in c.frames
            )
        )
        await b.send_raw('{"type":"typing"}')
        await a.wait_for(lambda c: any(f["type"] == "typing" for f in c.frames))
        await b.close()
        await a.wait_for(
            lambda c: (
                [u["name"] for u in [f for f in c.frames if f["type"] == "presence"][-1]["users"]]
                == ["Alice"]
            )
        )
        await a.close()
        return a.frames, b.frames

    a_frames, b_frames = run_async(scenario())
    assert [f["user"]["name"] for f in a_frames if f["type"] == "typing"] == ["Bob"]
    assert not any(f["type"] == "typing" for f in b_frames), "typing is not echoed to its sender"


def test_a_socket_from_a_foreign_origin_is_refused(stack, room, alice):
    async def scenario() -> str:
        client = RoomClient(
            stack.base_url, room.slug, token=alice[1], headers={"Origin": "http://evil.example"}
        )
        try:
            await client.connect()
        except Exception as exc:  # refused at the handshake
            return type(exc).__name__
        await client.close()
        return "accepted"

    assert run_async(scenario()) != "accepted"
