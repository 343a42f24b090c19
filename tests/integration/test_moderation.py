"""Moderation against the real stack: hide, delete, lock, mute, slow mode, roles, ban, kick,
deactivation; access that holds when the broadcast is lost; the audit log."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from django.test import Client

from rooms import moderation
from rooms.client import RoomClient
from rooms.models import Membership, Message, ModerationAction, RoomEvent, StreamChunk
from rooms.moderation import moderation_apply
from rooms.selectors import messages_search
from rooms.services import membership_join, room_create
from rooms.standing import ModerationRefused
from tests.conftest import make_user, on_own_connection, run_async

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def page_of(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


async def _in_thread(fn, /, **kwargs):
    return await asyncio.to_thread(on_own_connection, fn, **kwargs)


def _answered(c: RoomClient, text: str) -> bool:
    return any(m.role == "assistant" and m.status == "complete" and text in m.content
               for m in c.state.messages.values())  # fmt: skip


def test_hide_redacts_replay_and_page_and_unhide_restores(stack, fake, room, alice, bob):
    membership_join(room=room, user=bob[0])
    secret = "ZEBRA-CROSSING-7"

    async def scenario() -> tuple[list[str], int]:
        b = RoomClient(stack.base_url, room.slug, token=bob[1])
        await b.connect()
        await b.wait_ack(await b.send(f"my secret {secret} !say=noted"))
        await b.wait_for(lambda c: _answered(c, "noted"))
        mid = next(m.id for m in b.state.messages.values() if secret in m.content)
        watcher = RoomClient(stack.base_url, room.slug, token=alice[1])
        await watcher.connect()
        await _in_thread(moderation_apply, actor=alice[0], action="hide", source="command", room=room,
                         message_id=mid, reason="spoiler")  # fmt: skip
        await b.wait_for(lambda c: c.message_status(mid) == "hidden")
        await watcher.wait_for(lambda c: c.message_status(mid) == "hidden")
        await b.wait_ack(await b.send("what did I say? !say=nothing I can see"))  # the model's context
        await b.wait_for(lambda c: _answered(c, "nothing I can see"))
        await b.close()
        await watcher.close()
        fresh = RoomClient(stack.base_url, room.slug, token=alice[1])  # since=0: a full replay
        raw: list[str] = []
        fresh.on_frame = lambda f: raw.append(json.dumps(f))
        await fresh.connect()
        await fresh.close()
        return raw, mid

    raw, mid = run_async(scenario())
    assert raw and not any(secret in text for text in raw), "the replay must not carry the hidden text"
    last_request = json.dumps(fake.requests[-1])
    assert "what did I say" in last_request and secret not in last_request
    assert not RoomEvent.objects.filter(room=room, frame__contains=secret).exists()
    html = page_of(alice[0]).get(f"/r/{room.slug}/").content.decode()
    assert secret not in html and "hidden by a moderator" in html
    assert messages_search(room_id=room.pk, query="zebra") == []

    moderation_apply(actor=alice[0], action="unhide", source="command", room=room, message_id=mid)
    assert secret in page_of(alice[0]).get(f"/r/{room.slug}/").content.decode()
    last = RoomEvent.objects.filter(room=room).order_by("-seq").first()
    assert last.type == "message_update" and secret in last.frame  # unhide: its text again, live
    actions = list(ModerationAction.objects.filter(room=room).values_list("action", "reason", "actor_id"))
    assert actions == [("unhide", "", alice[0].pk), ("hide", "spoiler", alice[0].pk)]


def test_delete_leaves_no_chunk_event_or_content_with_the_text(stack, fake, room, alice):
    secret = "PLATYPUS-SAUCE"

    async def scenario() -> int:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await a.send(f"!say=the recipe is {secret} and more words here")
        await a.wait_for(lambda c: _answered(c, secret))
        await a.close()
        return next(m.id for m in a.state.messages.values() if m.role == "assistant")

    mid = run_async(scenario())
    asked = Message.objects.get(room=room, role="user")  # the question carries the text too
    assert StreamChunk.objects.filter(message_id=mid, text__contains="PLATYPUS").exists()
    moderation_apply(actor=alice[0], action="delete", source="command", room=room, message_id=mid)
    moderation_apply(actor=alice[0], action="delete", source="command", room=room, message_id=asked.pk)
    assert not StreamChunk.objects.filter(message_id=mid).exists()
    assert not RoomEvent.objects.filter(room=room, frame__contains="PLATYPUS").exists()
    message = Message.objects.get(pk=mid)
    assert message.status == "deleted" and message.content == ""
    assert "PLATYPUS" not in page_of(alice[0]).get(f"/r/{room.slug}/").content.decode()
    with pytest.raises(ModerationRefused) as refused:  # gone: nothing to unhide
        moderation_apply(actor=alice[0], action="unhide", source="command", room=room, message_id=mid)
    assert refused.value.code == "conflict"


def test_deleting_an_answer_blanks_its_tool_calls_in_the_event_log(stack, fake, room, alice):
    async def scenario() -> int:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await a.send('sum it !tool=calculator:{"expression": "918273 + 1"} !say=Done.')
        await a.wait_for(lambda c: _answered(c, "Done."))
        await a.close()
        return next(m.id for m in a.state.messages.values() if m.role == "assistant")

    mid = run_async(scenario())
    assert RoomEvent.objects.filter(room=room, type="tool_update", frame__contains="918274").exists()
    asked = Message.objects.get(room=room, role="user")
    for message_id in (mid, asked.pk):
        moderation_apply(actor=alice[0], action="delete", source="command", room=room, message_id=message_id)
    assert not RoomEvent.objects.filter(room=room, frame__contains="91827").exists()
    page = page_of(alice[0]).get(f"/r/{room.slug}/").content.decode()
    assert "91827" not in page and "deleted by a moderator" in page


def test_a_ban_whose_broadcast_is_lost_still_closes_on_heartbeat_and_refuses_sync(
    stack, room, alice, bob, monkeypatch
):
    membership_join(room=room, user=bob[0])
    dropped: list[dict] = []
    # the doorbell is lost: the kick never leaves this process
    monkeypatch.setattr(
        moderation.broadcast, "send_to_group_on_commit", lambda group, message: dropped.append(message)
    )

    async def scenario() -> tuple[int | None, int | None, int | None, bool]:
        on_ping = RoomClient(stack.base_url, room.slug, token=bob[1])
        on_sync = RoomClient(stack.base_url, room.slug, token=bob[1])
        on_send = RoomClient(stack.base_url, room.slug, token=bob[1])
        for c in (on_ping, on_sync, on_send):
            await c.connect()
        await _in_thread(moderation_apply, actor=alice[0], action="ban", source="command", room=room,
                         user_id=bob[0].pk)  # fmt: skip
        still_open = not on_ping._reader.done()  # the broadcast was lost: nothing closed it yet
        await on_ping.ping()  # one heartbeat
        await on_sync.sync()
        await on_send.send("am I still here?")
        for c in (on_ping, on_sync, on_send):
            await c.wait_for(lambda c: c._reader.done(), timeout=10)
        return on_ping.close_code, on_sync.close_code, on_send.close_code, still_open

    ping_code, sync_code, send_code, still_open = run_async(scenario())
    assert [m["type"] for m in dropped] == ["room.kick"]
    assert still_open
    assert (ping_code, sync_code, send_code) == (4403, 4403, 4403)
    assert not Message.objects.filter(room=room, author=bob[0]).exists()


def test_a_silent_socket_is_closed_by_the_servers_own_recheck_when_the_ban_broadcast_is_lost(
    stack, room, alice, bob, monkeypatch
):
    membership_join(room=room, user=bob[0])
    monkeypatch.setattr(moderation.broadcast, "send_to_group_on_commit", lambda group, message: None)

    async def scenario() -> int | None:
        b = RoomClient(stack.base_url, room.slug, token=bob[1])
        await b.connect()
        await _in_thread(moderation_apply, actor=alice[0], action="ban", source="command", room=room,
                         user_id=bob[0].pk)  # fmt: skip
        # no frame, no ping: the stack re-reads every socket's standing (ACCESS_RECHECK_SECONDS)
        await b.wait_for(lambda c: c._reader.done(), timeout=30)
        return b.close_code

    assert run_async(scenario()) == 4403


def test_a_kick_closes_with_4410_even_unannounced_and_the_member_may_come_back(
    stack, room, alice, bob, monkeypatch
):
    membership_join(room=room, user=bob[0])
    monkeypatch.setattr(moderation.broadcast, "send_to_group_on_commit", lambda group, message: None)

    async def scenario() -> tuple[int | None, bool]:
        b = RoomClient(stack.base_url, room.slug, token=bob[1])
        await b.connect()
        await _in_thread(moderation_apply, actor=alice[0], action="kick", source="command", room=room,
                         user_id=bob[0].pk)  # fmt: skip
        await b.ping()
        await b.wait_for(lambda c: c._reader.done(), timeout=10)
        again = RoomClient(stack.base_url, room.slug, token=bob[1])
        await again.connect()  # a kick is not a ban
        back = again.ready.is_set()
        await again.close()
        return b.close_code, back

    assert run_async(scenario()) == (4410, True)


def test_kick_ban_and_deactivation_reach_live_sockets_at_once(stack, room, alice, bob):
    carol, carol_token = make_user("Carol")
    staff, _ = make_user("Staff")
    staff.is_staff = True
    staff.save()
    for user in (bob[0], carol):
        membership_join(room=room, user=user)

    async def scenario() -> tuple[int | None, int | None]:
        b = RoomClient(stack.base_url, room.slug, token=bob[1])
        c = RoomClient(stack.base_url, room.slug, token=carol_token)
        await b.connect()
        await c.connect()
        await _in_thread(moderation_apply, actor=alice[0], action="ban", source="command", room=room,
                         user_id=bob[0].pk)  # fmt: skip
        await _in_thread(moderation_apply, actor=staff, action="deactivate", source="admin", user_id=carol.pk)
        await b.wait_for(lambda x: x._reader.done(), timeout=10)
        await c.wait_for(lambda x: x._reader.done(), timeout=10)
        return b.close_code, c.close_code

    assert run_async(scenario()) == (4403, 4401)


def test_lock_mute_slow_mode_and_viewer_refuse_sends_and_store_nothing(stack, fake, room, alice, bob):
    membership_join(room=room, user=bob[0])
    room.ai_enabled = False
    room.save()

    async def attempt(text: str) -> dict:
        b = RoomClient(stack.base_url, room.slug, token=bob[1])
        await b.connect()
        client_id = await b.send(text)
        await b.wait_for(lambda c: client_id in c.acks or any(e.get("ref") == client_id for e in c.errors))
        await b.close()
        return c_result(b, client_id)

    def c_result(b: RoomClient, client_id: str) -> dict:
        return b.acks.get(client_id) or next(e for e in b.errors if e.get("ref") == client_id)

    def apply(action: str, **kwargs) -> None:
        moderation_apply(actor=alice[0], action=action, source="command", room=room, **kwargs)

    apply("lock")
    assert run_async(attempt("while locked"))["code"] == "locked"
    assert "locked this room: it is read-only" in page_of(bob[0]).get(f"/r/{room.slug}/").content.decode()
    apply("unlock")
    apply("mute", user_id=bob[0].pk)
    assert run_async(attempt("while muted"))["code"] == "muted"
    apply("unmute", user_id=bob[0].pk)
    apply("role", user_id=bob[0].pk, role="viewer")
    assert run_async(attempt("as a viewer"))["code"] == "read_only"
    apply("role", user_id=bob[0].pk, role="member")
    apply("slow_mode", seconds=600)
    assert run_async(attempt("first"))["type"] == "ack"
    slow = run_async(attempt("second, too soon"))
    assert slow["code"] == "slow_mode" and slow["retry_after"] > 500
    stored = list(Message.objects.filter(room=room, author=bob[0]).values_list("content", flat=True))
    assert stored == ["first"]
    kinds = [e.type for e in RoomEvent.objects.filter(room=room).order_by("seq")]
    assert kinds.count("room_update") == 3 and kinds.count("member_update") == 4


def test_a_member_stops_only_their_own_turn_and_a_moderator_any(stack, fake, room, alice, bob):
    carol, carol_token = make_user("Carol")
    membership_join(room=room, user=bob[0])
    membership_join(room=room, user=carol)

    async def scenario() -> tuple[list[str], str]:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        b = RoomClient(stack.base_url, room.slug, token=bob[1])
        c = RoomClient(stack.base_url, room.slug, token=carol_token)
        for x in (a, b, c):
            await x.connect()
        await a.send("long !tokens=400 !delay=30")
        await b.wait_for(lambda x: any(t["status"] == "running" for t in x.state.turns.values()))
        turn_id = next(t["id"] for t in b.state.turns.values() if t["status"] == "running")
        await b.cancel(turn_id)  # not Bob's turn
        await b.wait_for(lambda x: bool(x.errors))
        await _in_thread(moderation_apply, actor=alice[0], action="role", source="command", room=room,
                         user_id=carol.pk, role="moderator")  # fmt: skip
        await c.cancel(turn_id)  # a moderator may
        await a.wait_for(lambda x: x.state.turns[turn_id]["status"] == "cancelled")
        for x in (a, b, c):
            await x.close()
        return [e["code"] for e in b.errors], a.state.turns[turn_id]["status"]

    assert run_async(scenario()) == (["forbidden"], "cancelled")


def test_moderate_and_report_frames_from_the_room(stack, fake, room, alice, bob):
    membership_join(room=room, user=bob[0])
    room.ai_enabled = False
    room.save()

    async def scenario() -> tuple[list[str], str | None]:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        b = RoomClient(stack.base_url, room.slug, token=bob[1])
        await a.connect()
        await b.connect()
        ack = await a.wait_ack(await a.send("something rude"))
        await b.send_raw(json.dumps({"type": "report", "message_id": ack["message_id"], "reason": "rude"}))
        await b.send_raw(json.dumps({"type": "moderate", "action": "hide", "message_id": ack["message_id"]}))
        await b.wait_for(lambda x: len(x.errors) == 1)
        await a.send_raw(json.dumps({"type": "moderate", "action": "hide", "message_id": ack["message_id"]}))
        await b.wait_for(lambda x: x.message_status(ack["message_id"]) == "hidden")
        await a.close()
        await b.close()
        return [e["code"] for e in b.errors], b.message_status(ack["message_id"])

    codes, status = run_async(scenario())
    assert codes == ["forbidden"] and status == "hidden"
    report = room.messages.get().reports.get()
    assert report.reason == "rude" and report.resolution == "hidden"  # hiding closed the report
    assert ModerationAction.objects.get().source == "socket"


def test_invite_link_for_moderators_only_rotates_and_settings_are_404_to_strangers(alice, bob):
    private = room_create(owner=alice[0], title="Secret", visibility="private")
    old = private.invite_token
    stranger = make_user("Stranger")[0]
    assert page_of(stranger).get(f"/r/{private.slug}/settings/").status_code == 404
    assert page_of(bob[0]).get(f"/r/{private.slug}/join/{old}/").status_code == 302
    assert old not in page_of(bob[0]).get(f"/r/{private.slug}/").content.decode()  # a plain member
    assert page_of(bob[0]).get(f"/r/{private.slug}/settings/").status_code == 403
    page_of(alice[0]).post(f"/r/{private.slug}/moderate/", {"action": "rotate_invite"})
    private.refresh_from_db()
    assert private.invite_token != old
    assert page_of(stranger).get(f"/r/{private.slug}/join/{old}/").status_code == 403
    assert not Membership.objects.filter(room=private, user=stranger).exists()
    assert private.invite_token in page_of(alice[0]).get(f"/r/{private.slug}/").content.decode()
    # the room page's member tools: the same service
    page_of(alice[0]).post(
        f"/r/{private.slug}/moderate/", {"action": "role", "user_id": bob[0].pk, "role": "viewer"}
    )
    assert Membership.objects.get(room=private, user=bob[0]).role == "viewer"
    assert page_of(stranger).post(f"/r/{private.slug}/moderate/", {"action": "lock"}).status_code == 404


def test_admin_forms_and_actions_go_through_the_service(stack, room, alice, bob):
    staff = make_user("Admin")[0]
    staff.is_staff = staff.is_superuser = True
    staff.save()
    membership_join(room=room, user=bob[0])
    admin = page_of(staff)
    form = admin.get(f"/admin/rooms/room/{room.pk}/change/").content.decode()
    assert 'name="locked"' in form and 'name="last_seq"' not in form
    data = {"title": room.title, "visibility": room.visibility, "ai_enabled": "on", "ai_model": "",
            "system_prompt": room.system_prompt, "ai_trigger": room.ai_trigger, "recovery": room.recovery,
            "slow_mode_seconds": "30", "locked": "on", "reason": "raid", "_save": "Save",
            "memberships-TOTAL_FORMS": "2", "memberships-INITIAL_FORMS": "2"}  # fmt: skip
    for i, m in enumerate(Membership.objects.filter(room=room).order_by("pk")):
        data[f"memberships-{i}-id"] = str(m.pk)
        data[f"memberships-{i}-room"] = str(room.pk)
    response = admin.post(f"/admin/rooms/room/{room.pk}/change/", data)
    assert response.status_code == 302, re.findall(r"errorlist[^<]*<li>[^<]*", response.content.decode())
    room.refresh_from_db()
    assert room.locked_at is not None and room.slow_mode_seconds == 30
    audit = list(ModerationAction.objects.order_by("id").values_list("action", "source", "reason"))
    assert audit == [("slow_mode", "admin", "raid"), ("lock", "admin", "raid")]
    assert [e.type for e in RoomEvent.objects.filter(room=room)] == ["room_update", "room_update"]

    message = Message.objects.create(room=room, seq=99, role="user", author=bob[0], content="nasty words")
    msg_form = admin.get(f"/admin/rooms/message/{message.pk}/change/").content.decode()
    assert 'name="content"' not in msg_form  # read-only: only the service changes it
    assert 'name="action" value="hide"' in msg_form  # the message page moderates through the actions
    admin.post(
        "/admin/rooms/message/", {"action": "hide", "_selected_action": [message.pk], "reason": "rude"}
    )
    message.refresh_from_db()
    assert message.status == "hidden"
    assert ModerationAction.objects.filter(action="hide", target_id=message.pk, reason="rude").exists()

    membership = Membership.objects.get(room=room, user=bob[0])
    admin.post(
        f"/admin/rooms/membership/{membership.pk}/change/", {"role": "viewer", "muted": "on", "_save": "1"}
    )
    membership.refresh_from_db()
    assert membership.role == "viewer" and membership.muted_at is not None
    assert ModerationAction.objects.filter(action__in=["role", "mute"], target_id=bob[0].pk).count() == 2

    log_id = ModerationAction.objects.first().pk
    assert admin.get("/admin/rooms/moderationaction/?action__exact=hide").status_code == 200
    assert admin.post(f"/admin/rooms/moderationaction/{log_id}/change/", {"reason": "x"}).status_code == 403
    assert admin.post(f"/admin/rooms/moderationaction/{log_id}/delete/").status_code == 403


def test_dashboard_shows_reports_actions_and_active_rooms(stack, fake, room, alice, bob):
    staff = make_user("Admin")[0]
    staff.is_staff = staff.is_superuser = True
    staff.save()
    membership_join(room=room, user=bob[0])
    message = Message.objects.create(room=room, seq=50, role="user", author=bob[0], content="spam spam")
    moderation.report_create(room=room, user=alice[0], message_id=message.pk, reason="pure spam")
    moderation_apply(
        actor=alice[0], action="mute", source="room", room=room, user_id=bob[0].pk, reason="flood"
    )

    async def scenario() -> str:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        await a.wait_for(lambda c: any(f["type"] == "presence" for f in c.frames))
        html = await asyncio.to_thread(
            on_own_connection, lambda: page_of(staff).get("/admin/").content.decode()
        )
        await a.close()
        return html

    html = run_async(scenario())
    assert "Rooms active now" in html and room.slug in html
    assert "pure spam" in html and "flood" in html


def test_one_statement_reads_the_standing_of_many_sockets(room, alice, bob):
    from django.core.management import call_command
    from django.utils import timezone

    from rooms.models import ApiToken
    from rooms.standing import SocketId, sockets_standing

    carol, _ = make_user("Carol")
    dave, _ = make_user("Dave")
    for user in (bob[0], carol, dave):
        membership_join(room=room, user=user)
    before = timezone.now()
    token = ApiToken.objects.get(user=alice[0])
    call_command("moderate", "ban", "--room", room.slug, "--user", bob[0].username, "--by", alice[0].username)
    moderation_apply(actor=alice[0], action="kick", source="command", room=room, user_id=carol.pk)
    Membership.objects.filter(room=room, user=dave).delete()
    sockets = [
        SocketId(room.pk, alice[0].pk, token.pk, before),  # fine
        SocketId(room.pk, bob[0].pk, None, before),  # banned
        SocketId(room.pk, carol.pk, None, before),  # kicked after it connected
        SocketId(room.pk, carol.pk, None, timezone.now()),  # connected again after the kick
        SocketId(room.pk, dave.pk, None, before),  # removed
        SocketId(room.pk + 999, alice[0].pk, None, before),  # the room is gone
    ]
    codes = [code for code, _seq in sockets_standing(sockets=sockets)]
    assert codes == [0, 4403, 4410, 0, 4403, 4404]
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    type(alice[0]).objects.filter(pk=bob[0].pk).update(is_active=False)
    again = sockets_standing(sockets=[sockets[0], sockets[1]])
    assert [code for code, _ in again] == [4401, 4401]
    assert ModerationAction.objects.filter(action="ban", source="command").count() == 1


def test_a_locked_room_refuses_retries_and_tool_answers_and_roles_rule_retries(room, alice, bob):
    from agents.models import Turn
    from rooms.turns import TurnRefused, turn_queue

    membership_join(room=room, user=bob[0])
    asked = Message.objects.create(room=room, seq=1, role="user", author=alice[0], content="q")
    turn = Turn.objects.create(room=room, queue_seq=1, trigger_message=asked, status="interrupted")

    def refusal(fn, **kwargs) -> str:
        with pytest.raises(TurnRefused) as refused:
            fn(room=room, **kwargs)
        return refused.value.code

    queue = turn_queue()
    assert refusal(queue.retry, user=bob[0], turn_id=turn.pk) == "forbidden"  # not Bob's turn
    moderation_apply(actor=alice[0], action="lock", source="command", room=room)
    room.refresh_from_db()
    assert refusal(queue.retry, user=bob[0], turn_id=turn.pk) == "locked"
    assert refusal(queue.tool_decide, user=bob[0], call_id="1", approved=True, reason=None) == "locked"
    assert refusal(queue.tool_result, user=bob[0], call_id="1", output=1, error=None) == "locked"
    moderation_apply(actor=alice[0], action="unlock", source="command", room=room)
    moderation_apply(
        actor=alice[0], action="role", source="command", room=room, user_id=bob[0].pk, role="viewer"
    )
    room.refresh_from_db()
    assert refusal(queue.tool_decide, user=bob[0], call_id="1", approved=True, reason=None) == "read_only"
    turn.refresh_from_db()
    assert turn.status == "interrupted"  # nothing changed


def test_moderation_refuses_what_its_actor_may_not_do_and_changes_nothing(room, alice, bob):
    carol, _ = make_user("Carol")
    membership_join(room=room, user=bob[0])
    membership_join(room=room, user=carol)

    def code(actor, action: str, **kwargs) -> str:
        with pytest.raises(ModerationRefused) as refused:
            moderation_apply(actor=actor, action=action, source="command", room=room, **kwargs)
        return refused.value.code

    stranger = make_user("Stranger")[0]
    assert code(alice[0], "mute", user_id=stranger.pk) == "not_found"  # a mute makes no member
    assert not Membership.objects.filter(room=room, user=stranger).exists()
    assert code(bob[0], "lock") == "forbidden"  # a member is not a moderator
    assert code(alice[0], "ban", user_id=alice[0].pk) == "forbidden"  # no one moderates the owner
    moderation_apply(actor=alice[0], action="role", source="command", room=room, user_id=bob[0].pk,
                     role="moderator")  # fmt: skip
    assert code(bob[0], "role", user_id=carol.pk, role="moderator") == "forbidden"  # the owner makes them
    moderation_apply(actor=alice[0], action="role", source="command", room=room, user_id=carol.pk,
                     role="moderator")  # fmt: skip
    assert code(bob[0], "ban", user_id=carol.pk) == "forbidden"  # a moderator cannot ban a moderator
    assert code(bob[0], "deactivate", user_id=carol.pk) == "forbidden"  # staff only
    assert Membership.objects.get(room=room, user=carol).banned_at is None
    assert ModerationAction.objects.count() == 2  # only the two role changes happened
