"""Guarantee 6: the server-rendered page plus the events after its seq equal a fresh render."""

from __future__ import annotations

import html as htmllib
import re
from typing import Any

import pytest
from django.test import Client

from rooms.client import RoomClient
from tests.conftest import run_async

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

_LI = re.compile(r'<li class="msg[^"]*"([^>]*)>(.*?)</li>', re.S)
_ATTR = re.compile(r'data-([a-z-]+)="([^"]*)"')
_BODY = re.compile(r'<div class="body( streaming)?">(.*?)</div>', re.S)


def parse_page(page: str) -> tuple[int, dict[int, dict[str, Any]]]:
    """The page's seq and, per message, what a reader sees of it."""
    seq = int(re.search(r'id="room"[^>]*data-seq="(\d+)"', page).group(1))
    messages = {}
    for attrs, inner in _LI.findall(page):
        data = dict(_ATTR.findall(attrs))
        body = _BODY.search(inner)
        messages[int(data["id"])] = {
            "seq": int(data["seq"]),
            "status": data["status"],
            "turn_status": data.get("turn-status"),
            "body": body.group(2).strip() if body else None,
        }
    return seq, messages


def apply_events(messages: dict[int, dict[str, Any]], frames: list[dict[str, Any]]) -> None:
    """Apply room events to a parsed page as the browser client would."""
    for frame in frames:
        if frame["type"] in ("message", "message_update"):
            m = frame["message"]
            streaming = m["status"] == "streaming"
            previous = messages.get(m["id"], {})
            messages[m["id"]] = {
                "seq": m["seq"],
                "status": m["status"],
                "turn_status": previous.get("turn_status"),
                "body": htmllib.escape(m["content"], quote=False) if streaming else m["html"].strip(),
            }
        elif frame["type"] == "turn":
            trigger = frame["turn"]["trigger_message_id"]
            if trigger in messages:
                messages[trigger]["turn_status"] = frame["turn"]["status"]


def test_a_page_rendered_mid_stream_plus_later_events_equals_a_fresh_render(stack, fake, room, alice):
    browser = Client()
    browser.force_login(alice[0])

    async def post(texts: list[str]) -> RoomClient:
        a = RoomClient(stack.base_url, room.slug, token=alice[1])
        await a.connect()
        for text in texts:
            await a.wait_ack(await a.send(text))
        await a.wait_for(
            lambda c: any(m.role == "assistant" and m.content for m in c.state.messages.values())
        )
        await a.close()
        return a

    run_async(post(["first **bold** <script>x</script> !tokens=80 !delay=20", "second !say=*done*"]))
    old_seq, old = parse_page(browser.get(f"/r/{room.slug}/").content.decode())
    assert any(m["status"] == "streaming" for m in old.values()), "rendered mid-stream"

    async def events_after(since: int) -> list[dict[str, Any]]:
        c = RoomClient(stack.base_url, room.slug, token=alice[1], since=since)
        await c.connect()

        def done(c: RoomClient) -> bool:
            finished = sum(1 for t in c.state.turns.values() if t["status"] == "done")
            seen = sum(f["type"] == "turn" and f["turn"]["status"] == "done" for f in c.frames)
            return finished >= 2 or seen >= 2

        await c.wait_for(done, timeout=30)
        await c.close()
        return [f for f in c.frames if "seq" in f and f["type"] != "ready"]

    frames = run_async(events_after(old_seq))
    assert frames and frames[0]["seq"] == old_seq + 1
    apply_events(old, frames)
    new_seq, fresh = parse_page(browser.get(f"/r/{room.slug}/").content.decode())
    assert new_seq == frames[-1]["seq"]
    assert old == fresh
    assert all(m["status"] == "complete" for m in fresh.values())
    assert "<script" not in "".join(m["body"] for m in fresh.values())
