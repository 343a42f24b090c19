"""The browser's protocol state (static/js/room/state.js) against the Python client's
(rooms.client.RoomState), in real Chromium: the same frames give the same answers and state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from rooms.client import RoomState
from tests.browser.test_markdown import static_server  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.browser]


def message(seq: int, mid: int, status: str, content: str = "", role: str = "assistant") -> dict[str, Any]:
    return {
        "type": "message",
        "seq": seq,
        "message": {
            "id": mid,
            "seq": seq,
            "role": role,
            "status": status,
            "content": content,
            "author": None,
            "turn_id": 7,
        },
    }


def delta(mid: int, index: int, text: str) -> dict[str, Any]:
    return {"type": "delta", "message_id": mid, "index": index, "text": text}


# Replay, a snapshot that overtakes its message event, duplicate and lost deltas, a gap in seq,
# an old event, a pong from a room ahead of us, and the answer's end.
FRAMES: list[dict[str, Any]] = [
    message(1, 10, "complete", "hello", role="user"),
    {"type": "snapshot", "message_id": 11, "content": "Par", "next_index": 1},
    message(2, 11, "streaming"),
    {"type": "ready", "seq": 2},
    delta(11, 1, "tial"),
    delta(11, 1, "tial"),
    delta(11, 3, " lost"),
    {"type": "snapshot", "message_id": 11, "content": "Partial answ", "next_index": 3},
    {"type": "snapshot", "message_id": 11, "content": "Partial", "next_index": 2},
    delta(11, 3, "er"),
    {"type": "turn", "seq": 3, "turn": {"id": 7, "status": "running"}},
    message(5, 12, "complete", "skipped ahead", role="user"),
    message(2, 11, "streaming"),
    {"type": "pong", "latest_seq": 9},
    {"type": "pong", "latest_seq": 3},
    {
        "type": "message_update",
        "seq": 4,
        "message": {
            "id": 11,
            "seq": 2,
            "role": "assistant",
            "status": "complete",
            "content": "Partial answer",
            "author": None,
            "turn_id": 7,
        },
    },
    delta(11, 4, " late"),
]


@pytest.fixture(scope="module")
def state_page(chromium: Any, static_server: str) -> Iterator[Any]:  # noqa: F811
    context = chromium.new_context()
    page = context.new_page()
    page.goto(static_server + "/css/app.css")
    page.evaluate("async () => { window.__state = await import('/js/room/state.js'); }")
    yield page
    context.close()


def test_the_browser_state_applies_frames_like_the_python_client(state_page):
    py = RoomState()
    py_syncs = [py.apply(frame) for frame in FRAMES]
    js = state_page.evaluate(
        """(frames) => {
        const room = new __state.RoomState();
        const syncs = frames.map((f) => room.apply(f).sync);
        const messages = [...room.messages.values()].sort((a, b) => a.seq - b.seq)
          .map((m) => [m.seq, m.role, m.status, m.content]);
        return { syncs, lastSeq: room.lastSeq, messages, nextIndex: [...room.nextIndex],
                 duplicates: room.duplicateDeltas };
    }""",
        FRAMES,
    )
    assert js["syncs"] == py_syncs
    assert js["lastSeq"] == py.last_seq == 4
    assert [tuple(m) for m in js["messages"]] == py.transcript()
    assert py.transcript()[-1] == (2, "assistant", "complete", "Partial answer")
    assert js["nextIndex"] == [[k, v] for k, v in py.next_index.items()] == []
    assert js["duplicates"] == py.duplicate_deltas == 1


def test_the_browser_state_keeps_unacked_sends_and_resends_them_after_ready(state_page):
    changes = state_page.evaluate(
        """() => {
        const room = new __state.RoomState({ me: 1 });
        room.queueSend('a', 'first');
        room.queueSend('b', 'second');
        const acked = room.apply({ type: 'ack', client_id: 'a', message_id: 5, seq: 1 });
        const ready = room.apply({ type: 'ready', seq: 0 });
        const refused = room.apply({ type: 'error', code: 'rate_limited', detail: 'slow down', ref: 'b' });
        return [acked.outboxChanged, ready.changes[0].resend, refused.changes[0].failed, room.outbox.size];
    }"""
    )
    assert changes == [True, [{"type": "send", "client_id": "b", "content": "second"}], "b", 0]


def tool_event(kind: str, seq: int, call_id: str, state: str, **extra: Any) -> dict[str, Any]:
    call = {"id": call_id, "turn_id": 7, "message_id": 11, "step": 0, "name": "calculator",
            "kind": "server", "input": {"expression": "1+1"}, "state": state, "output": None,
            "error": None, "requires_approval": False, "decided_by": None, "initiator_id": 1,
            "created_at": "2026-12-03T09:00:00+00:00", "started_at": None, "finished_at": None}  # fmt: skip
    return {"type": kind, "seq": seq, "call": call | extra}


# A call made and settled, a note, a gap (the call's update after a missing seq: sync), the
# update replayed again in order, and an old one.
TOOL_FRAMES: list[dict[str, Any]] = [
    message(1, 11, "streaming"),
    tool_event("tool_call", 2, "40", "running"),
    {"type": "note", "seq": 3, "note": {"id": 5, "text": "remember", "call_id": None, "created_at": "x"}},
    tool_event("tool_update", 5, "40", "error"),
    tool_event("tool_update", 4, "40", "done", output={"result": 2}),
    tool_event("tool_update", 2, "40", "running"),
]


def test_the_browser_state_keeps_calls_and_notes_like_the_python_client(state_page):
    py = RoomState()
    py_syncs = [py.apply(frame) for frame in TOOL_FRAMES]
    js = state_page.evaluate(
        """(frames) => {
        const room = new __state.RoomState();
        const out = frames.map((f) => room.apply(f));
        const refused = room.apply({ type: 'error', code: 'conflict', detail: 'settled', ref: '40' });
        return { syncs: out.map((o) => o.sync), lastSeq: room.lastSeq,
                 calls: Object.fromEntries(room.calls), notes: Object.fromEntries(room.notes),
                 changes: out.map((o) => o.changes.map((c) => c.type)), refusedCall: refused.changes[0].call,
                 of11: room.callsOf(11).map((c) => c.id) };
    }""",
        TOOL_FRAMES,
    )
    assert js["syncs"] == py_syncs == [False, False, False, True, False, False]
    assert js["lastSeq"] == py.last_seq == 4
    assert js["calls"] == py.calls and py.calls["40"]["state"] == "done"
    assert {int(k): v for k, v in js["notes"].items()} == py.notes and py.notes[5]["text"] == "remember"
    assert js["changes"] == [["message"], ["tool_call"], ["note"], [], ["tool_call"], []]
    assert js["refusedCall"] == "40" and js["of11"] == ["40"]
