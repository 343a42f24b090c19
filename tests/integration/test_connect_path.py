"""The connect path's hand-written reads and its batched presence (issue 5): same answers as
before, fewer round trips."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from django.utils import timezone

from rooms import auth, selectors
from rooms.client import RoomClient
from rooms.models import ApiToken
from rooms.services import member_ban, membership_join, room_create, token_revoke
from tests.conftest import make_user, run_async

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _last_used(token_id: int):
    return ApiToken.objects.values_list("last_used_at", flat=True).get(pk=token_id)


def test_a_token_records_its_use_at_most_once_a_minute(alice):
    user, raw = alice
    found = auth.token_user(raw)
    assert found is not None and found[0] == user and found[0].first_name == "Alice"
    token_id = found[1]
    first = _last_used(token_id)
    assert first is not None, "the first use is recorded"
    assert auth.token_user(raw) is not None
    assert _last_used(token_id) == first, "a second use within the minute writes nothing"
    stale = timezone.now() - timedelta(seconds=auth.TOKEN_TOUCH_EVERY + 5)
    ApiToken.objects.filter(pk=token_id).update(last_used_at=stale)
    assert auth.token_user(raw) is not None
    assert _last_used(token_id) > stale, "a use after the minute is recorded again"


def test_revoked_tokens_and_inactive_users_are_refused_and_not_recorded(alice, bob):
    _, raw = alice
    token_revoke(user=alice[0], token_id=ApiToken.objects.get(user=alice[0]).pk)
    assert auth.token_user(raw) is None
    user, raw_b = bob
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert auth.token_user(raw_b) is None
    assert _last_used(ApiToken.objects.get(user=user).pk) is None
    assert auth.token_user("") is None and auth.token_user("x" * 201) is None
    assert auth.token_user("rct_not-a-token") is None


def test_socket_access_answers_as_room_access(alice, bob):
    owner, stranger = alice[0], bob[0]
    public = room_create(owner=owner, title="Open")
    private = room_create(owner=owner, title="Closed", visibility="private")
    assert selectors.socket_access(slug="no-such-room", user_id=stranger.pk).room_id == 0
    for room in (public, private):
        for user in (owner, stranger):
            found = selectors.socket_access(slug=room.slug, user_id=user.pk)
            assert found.room_id == room.pk
            assert found.access == selectors.room_access(room=room, user=user), (room.slug, user)
    membership_join(room=private, user=stranger)
    assert selectors.socket_access(slug=private.slug, user_id=stranger.pk).access == "member"
    member_ban(room=private, user=stranger)
    assert selectors.socket_access(slug=private.slug, user_id=stranger.pk).access == "denied"


def test_sockets_joining_at_once_all_end_up_in_every_members_presence(stack, room):
    people = [make_user(f"Person{i}") for i in range(6)]
    names = {user.first_name for user, _ in people}

    def present(client: RoomClient) -> set[str]:
        frames = [f for f in client.frames if f["type"] == "presence"]
        return {u["name"] for u in frames[-1]["users"]} if frames else set()

    async def scenario() -> None:
        clients = [RoomClient(stack.base_url, room.slug, token=raw) for _, raw in people]
        await asyncio.gather(*(c.connect() for c in clients))
        for c in clients:
            await c.wait_for(lambda c: present(c) == names)
        await clients[0].close()
        rest = names - {people[0][0].first_name}
        for c in clients[1:]:
            await c.wait_for(lambda c: present(c) == rest)
        await asyncio.gather(*(c.close() for c in clients[1:]))

    run_async(scenario())
