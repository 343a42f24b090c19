"""Moderation in real Chromium: a moderator hides a message while another member watches it go,
a locked room, the admin's dashboard and audit log; saves the screenshots in docs/screenshots."""

from __future__ import annotations

import shutil

import pytest

from rooms.models import Message
from rooms.moderation import moderation_apply, report_create
from rooms.services import membership_join
from tests.browser.test_ui import DOCS_SHOTS, SHOTS, shot
from tests.browser.test_user_story import room_url, send, wait_live
from tests.conftest import make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _publish(*names: str) -> None:
    DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000
        shutil.copy(SHOTS / f"{name}.png", DOCS_SHOTS / f"{name}.png")


def test_a_moderator_hides_a_message_and_the_other_member_sees_it_go(stack, fake, room, alice, bob, page_for):
    membership_join(room=room, user=bob[0])
    room.ai_enabled = False
    room.save()
    b = page_for(bob[0])
    b.goto(room_url(stack, room))
    wait_live(b)
    send(b, "my phone number is 555-0199, call me")
    b.wait_for_selector("li.msg.role-user:not(.pending):has-text('555-0199')")
    message = Message.objects.get(room=room, content__contains="555-0199")

    a = page_for(alice[0])  # the owner: a moderator of the room
    a.goto(room_url(stack, room))
    wait_live(a)
    a.click(f"#m-{message.pk} .mod-form button[value=hide]")
    a.wait_for_selector(f"#m-{message.pk}[data-status=hidden] .body.moderated")

    # Bob's page changes live, without a reload: the text is gone, the place says why
    b.wait_for_selector(f"#m-{message.pk}[data-status=hidden] .body.moderated")
    assert "555-0199" not in b.content()
    assert b.inner_text(f"#m-{message.pk} .body") == "hidden by a moderator"
    shot(b, "moderation-hidden-message")
    b.reload()  # and the server-rendered page agrees
    wait_live(b)
    assert "555-0199" not in b.content()
    assert b.inner_text(f"#m-{message.pk} .body") == "hidden by a moderator"

    errors: list[str] = []
    a.on("pageerror", lambda exc: errors.append(str(exc)))
    send(b, "a second one")  # arrives live on the moderator's page, with the same tools
    a.wait_for_selector("li.msg.role-user:has-text('a second one') .mod-form button[value=hide]")
    live_id = a.get_attribute("li.msg.role-user:has-text('a second one')", "data-id")
    assert a.input_value(f"#m-{live_id} .mod-form input[name=message_id]") == live_id
    assert errors == []

    a.click("#room-moderation summary")
    a.click("#lock-room")
    a.wait_for_selector("#locked-banner:not([hidden])")
    b.wait_for_selector("#locked-banner:not([hidden])")  # live
    assert b.is_disabled("#content")
    shot(b, "moderation-locked-room")
    _publish("moderation-hidden-message", "moderation-locked-room")


def test_screenshots_of_the_dashboard_and_the_audit_log(stack, fake, room, alice, bob, page_for):
    staff = make_user("Moderator")[0]
    staff.is_staff = staff.is_superuser = True
    staff.save()
    membership_join(room=room, user=bob[0])
    room.ai_enabled = False
    room.save()
    rude = Message.objects.create(room=room, seq=90, role="user", author=bob[0], content="buy cheap pills")
    report_create(room=room, user=alice[0], message_id=rude.pk, reason="spam link")
    moderation_apply(actor=alice[0], action="slow_mode", source="room", room=room, seconds=30, reason="busy")
    moderation_apply(
        actor=staff, action="mute", source="admin", room=room, user_id=bob[0].pk, reason="flooding"
    )

    watcher = page_for(bob[0])  # someone connected, so the room is active now
    watcher.goto(room_url(stack, room))
    wait_live(watcher)
    admin = page_for(staff)
    admin.goto(f"{stack.base_url}/admin/")
    admin.wait_for_selector("#dash-active >> text=Test room")
    assert "spam link" in admin.inner_text("#dash-reports")
    assert "flooding" in admin.inner_text("#dash-actions")
    shot(admin, "moderation-dashboard")
    admin.set_viewport_size({"width": 1500, "height": 700})
    admin.goto(f"{stack.base_url}/admin/rooms/moderationaction/")
    admin.wait_for_selector("#result_list >> text=mute")
    if admin.is_visible("#nav-sidebar"):
        admin.click("#toggle-nav-sidebar")  # the whole log in view
    shot(admin, "moderation-audit-log")
    _publish("moderation-dashboard", "moderation-audit-log")
