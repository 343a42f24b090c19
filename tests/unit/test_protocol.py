"""Frame parsing and the sanitizer: pure functions, no services."""

from __future__ import annotations

import json
import uuid

import pytest

from rooms.client import RoomState
from rooms.protocol import CancelFrame, FrameError, SendFrame, SyncFrame, parse_client_frame
from rooms.rendering import render_markdown


def test_a_valid_send_parses_with_its_uuid():
    cid = uuid.uuid4()
    frame = parse_client_frame(json.dumps({"type": "send", "client_id": str(cid), "content": "hi"}))
    assert isinstance(frame, SendFrame) and frame.client_id == cid and frame.content == "hi"


def test_cancel_and_sync_parse():
    assert isinstance(parse_client_frame('{"type":"cancel","turn_id":3}'), CancelFrame)
    assert parse_client_frame('{"type":"sync","since":0}') == SyncFrame(type="sync", since=0)


@pytest.mark.parametrize(
    "raw,code",
    [
        ("x" * 70_000, "too_large"),
        ('{"type":"send","content":"' + "é" * 40_000 + '"}', "too_large"),
        ("nope", "bad_json"),
        ("null", "bad_json"),
        ("[" * 100_000 + "]" * 100_000, "too_large"),
        ("[" * 5_000 + "]" * 5_000, "bad_json"),
        ('{"type":"Send"}', "unknown_type"),
        ('{"type":["send"]}', "unknown_type"),
        ('{"type":"cancel","turn_id":true}', "invalid"),
        ('{"type":"cancel","turn_id":0}', "invalid"),
        ('{"type":"send","client_id":"%s","content":"a\\u0000b"}' % uuid.uuid4(), "invalid"),
        ('{"type":"send","client_id":"%s","content":"%s"}' % (uuid.uuid4(), "y" * 16_001), "invalid"),
        ('{"type":"ping","x":1}', "invalid"),
    ],
)
def test_bad_frames_raise_their_wire_code(raw, code):
    with pytest.raises(FrameError) as info:
        parse_client_frame(raw)
    assert info.value.code == code


def test_binary_frames_are_refused():
    with pytest.raises(FrameError) as info:
        parse_client_frame(None, b"{}")
    assert info.value.code == "bad_json"


@pytest.mark.parametrize(
    "payload",
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "[click](javascript:alert(1))",
        '<svg onload="alert(1)"><circle/></svg>',
        '<a href="javascript:alert(1)">x</a>',
        "![x](javascript:alert(1))",
        "<iframe src=//evil></iframe>",
    ],
)
def test_markdown_renders_hostile_content_inert(payload):
    tags, attrs = _parse(render_markdown(payload))
    assert not tags & {"script", "iframe", "svg", "img", "object", "embed", "style"}
    for name, value in attrs:
        assert not name.startswith("on"), name
        assert not (value or "").strip().lower().startswith("javascript:"), value


def _parse(html: str) -> tuple[set[str], list[tuple[str, str | None]]]:
    from html.parser import HTMLParser

    tags: set[str] = set()
    attrs: list[tuple[str, str | None]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, tag_attrs):  # type: ignore[no-untyped-def]
            tags.add(tag)
            attrs.extend(tag_attrs)

    Collect().feed(html)
    return tags, attrs


def test_markdown_keeps_code_tables_and_links():
    html = render_markdown("**b** `c`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n[x](https://e.com)")
    assert "<strong>b</strong>" in html and "<code>c</code>" in html and "<table>" in html
    assert 'href="https://e.com"' in html and "noopener" in html


def _event(seq: int, kind: str = "message", **message: object) -> dict:
    body = {
        "id": seq,
        "seq": seq,
        "role": "user",
        "status": "complete",
        "content": str(seq),
        "author": None,
        "turn_id": None,
    }
    body.update(message)
    return {"type": kind, "seq": seq, "message": body}


def test_room_state_applies_in_order_ignores_duplicates_and_asks_for_sync_on_gaps():
    state = RoomState()
    assert state.apply(_event(1)) is False
    assert state.apply(_event(1)) is False  # duplicate: ignored
    assert state.apply(_event(3)) is True  # gap: sync
    assert state.apply(_event(2)) is False
    assert state.applied_seqs == [1, 2]


def test_room_state_deltas_follow_indexes_and_snapshots():
    state = RoomState()
    state.apply(_event(1, role="assistant", status="streaming", content=""))
    assert state.apply({"type": "delta", "message_id": 1, "index": 0, "text": "Hel"}) is False
    assert state.apply({"type": "delta", "message_id": 1, "index": 0, "text": "Hel"}) is False
    assert state.apply({"type": "delta", "message_id": 1, "index": 2, "text": "!"}) is True
    state.apply({"type": "snapshot", "message_id": 1, "content": "Hello", "next_index": 2})
    state.apply({"type": "delta", "message_id": 1, "index": 2, "text": "!"})
    assert state.messages[1].content == "Hello!"
    assert state.duplicate_deltas == 1
