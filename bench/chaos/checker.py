"""The checker: every client's frame record and final state against the database.

The checks, one letter each (the guarantees of ARCHITECTURE.md, stated so a program can check
them; every violation names its room, its client and the first event that differs):

  a  gapless, exactly once: the room-event seqs a client applied are 1, 2, 3, ... with no hole
     and no repeat, end at the room's last seq, and every room-event frame it received equals
     the database's RoomEvent.frame for that seq
  b  converged: the client's text and status of every message (and status of every turn)
     equal the database's, and it knows no message the database does not
  c  no acked message lost: every ack names a stored message of that client (id, seq, author,
     client_id); every stored user message was sent by a client; every send got an answer
  d  no duplicated assistant message: each assistant message belongs to exactly one turn, and
     the `message` event that created it names that turn
  e  every turn terminal and no message left streaming after the settle phase
  f  a room's turns started in the order of their triggering messages
  g  no two turns of a room overlap in time
  h  chunk indexes gapless from 0; a finished assistant message's content == its joined chunks
  i  every delta a client received equals the persisted chunk at that index (nothing written
     or sent that is not in the database, e.g. by a paused worker that lost its lease)
  j  the broadcast path recovered: after the faults, a probe message's turn reaches every open
     socket of its room without the client asking (no pings then)
  k  a turn whose worker was killed or paused leaves that worker's lease (is recovered) within
     the lease timeout plus one sweep (plus a slack for a loaded machine, plus any time the
     database refused connections meanwhile)
  l  a side effect ran at most once: RoomNote rows (each written with its call's id) <= 1 for
     every call of `launch` and `note`, == 1 for a call `done`, == 0 for one `denied` or `error`
     (or still waiting); a `launch` whose worker was killed mid-run ended `interrupted` (or had
     finished `done` just before); a read killed mid-run was never `interrupted`; every note
     belongs to a side-effecting call of its room
  m  every call settled: done, error, denied or interrupted, or still waiting on a person with
     its turn `parked`; none `running` at the end
  n  a parked turn was never recovered: after `parked` a turn only goes back to `queued` (the
     answer, with the attempt it had: waiting is not a failed attempt) or `cancelled`; a turn
     that was ever parked ends done, cancelled or parked, or failed/interrupted only after it ran
     again (never straight out of the wait)
  o  the clients' view of every call (the last tool_call/tool_update each applied) equals the
     database's row as the wire carries it (state, output, error, times, who decided), and no
     answer a client was allowed to give was refused other than as `conflict` (someone first)
  z  the run exercised the system: every client received events, every room finished an answer
     and was probed after the faults (a run where nothing happened proves nothing)
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from rooms.client import RoomState
from rooms.protocol import ROOM_EVENT_TYPES

ROOM_EVENTS = ROOM_EVENT_TYPES
TERMINAL = frozenset({"done", "cancelled", "failed", "interrupted"})
SETTLED_CALL = frozenset({"done", "error", "denied", "interrupted"})
WAITING_CALL = frozenset({"awaiting_approval", "waiting_client"})
SIDE_EFFECT_TOOLS = ("launch", "note")  # each run writes a RoomNote with its call id

CHECKS = {
    "a": "gapless, exactly once",
    "b": "converged text",
    "c": "no acked message lost",
    "d": "no duplicated assistant message",
    "e": "every turn terminal",
    "f": "turns start in order",
    "g": "no overlapping turns",
    "h": "chunks gapless, content == chunks",
    "i": "deltas == persisted chunks",
    "j": "live delivery recovered",
    "k": "recovered within lease + one sweep",
    "l": "side effects at most once",
    "m": "every call settled",
    "n": "parked turns never recovered",
    "o": "clients' calls == database",
    "p": "no duplicate child runs",
    "q": "every parent call settled or parked",
    "z": "the run exercised every room and client",
}


@dataclass
class ClientRecord:
    """What one client saw and did, as the checker needs it."""

    name: str
    room_id: int
    user_id: int
    frames: list[dict[str, Any]]
    state: RoomState
    acks: dict[str, dict[str, Any]]
    sent: dict[str, str]
    rejected: dict[str, dict[str, Any]]
    unanswered: dict[str, str]
    answers_refused: list[dict[str, Any]] = field(default_factory=list)  # error frames to tool answers


@dataclass
class Violation:
    check: str
    room: str
    client: str
    detail: str

    def __str__(self) -> str:
        what = f"{self.check}: {CHECKS[self.check]}"
        return f"VIOLATION [{what}] room={self.room} client={self.client}: {self.detail}"


@dataclass
class RoomData:
    """One room as the database has it."""

    id: int
    slug: str
    last_seq: int
    events: dict[int, tuple[str, str]] = field(default_factory=dict)  # seq -> (type, frame text)
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    turns: dict[int, dict[str, Any]] = field(default_factory=dict)
    chunks: dict[int, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> the row, and as on the wire
    notes: list[tuple[int, int | None]] = field(default_factory=list)  # (note id, call id)


def load_rooms(room_ids: list[int]) -> dict[int, RoomData]:
    """Read every room of the run, with its events, messages, turns, chunks, calls and notes."""
    from agents.calls import call_wire
    from agents.models import ToolCall, Turn
    from rooms.models import Message, Room, RoomEvent, RoomNote, StreamChunk

    rooms = {
        pk: RoomData(pk, slug, last_seq)
        for pk, slug, last_seq in Room.objects.filter(pk__in=room_ids).values_list("pk", "slug", "last_seq")
    }
    for room_id, seq, type_, frame in RoomEvent.objects.filter(room_id__in=room_ids).values_list(
        "room_id", "seq", "type", "frame"
    ):
        rooms[room_id].events[seq] = (type_, frame)
    for m in Message.objects.filter(room_id__in=room_ids).values(
        "id", "room_id", "seq", "role", "author_id", "content", "status", "client_id"
    ):
        rooms[m["room_id"]].messages[m["id"]] = m
    for t in Turn.objects.filter(room_id__in=room_ids).values(
        "id",
        "room_id",
        "queue_seq",
        "trigger_message_id",
        "assistant_message_id",
        "status",
        "attempt",
        "started_at",
        "finished_at",
        "error",
        "parent_call_id",
    ):
        rooms[t["room_id"]].turns[t["id"]] = t
    message_room = {mid: m["room_id"] for r in rooms.values() for mid, m in r.messages.items()}
    for message_id, index, text in (
        StreamChunk.objects.filter(message__room_id__in=room_ids)
        .order_by("message_id", "index")
        .values_list("message_id", "index", "text")
    ):
        rooms[message_room[message_id]].chunks[message_id].append((index, text))
    for call in ToolCall.objects.filter(room_id__in=room_ids).select_related("decided_by"):
        rooms[call.room_id].calls[call.pk] = {
            "id": call.pk,
            "turn_id": call.turn_id,
            "name": call.name,
            "kind": call.kind,
            "state": call.state,
            "error": call.error,
            "finished_at": call.finished_at,
            "started_at": call.started_at,
            "output": call.output,
            "wire": json.loads(call_wire(call).model_dump_json()),
        }
    for note_id, room_id, call_id in RoomNote.objects.filter(room_id__in=room_ids).values_list(
        "pk", "room_id", "call_id"
    ):
        rooms[room_id].notes.append((note_id, call_id))
    return rooms


def _first_diff(a: str, b: str) -> str:
    """Where two texts part, with a little context."""
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    start = max(0, i - 20)
    return f"at char {i}: client {a[start : i + 30]!r} vs db {b[start : i + 30]!r} (len {len(a)} vs {len(b)})"


def _brief(frame_text: str | dict[str, Any] | None) -> str:
    if frame_text is None:
        return "none"
    f = json.loads(frame_text) if isinstance(frame_text, str) else frame_text
    inner = f.get("message") or f.get("turn") or f.get("call") or f.get("note") or {}
    keep = {
        k: inner.get(k)
        for k in ("id", "role", "status", "state", "name", "turn_id", "trigger_message_id", "message_id")
        if k in inner
    }
    return f"{f.get('type')} seq={f.get('seq')} {keep}"


@dataclass
class CheckReport:
    violations: list[Violation] = field(default_factory=list)
    frames_checked: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


class Checker:
    """Runs every check over the records of all clients and the rooms they were in."""

    def __init__(
        self,
        records: list[ClientRecord],
        rooms: dict[int, RoomData],
        *,
        probes: list[dict[str, Any]] | None = None,
        recoveries: list[dict[str, Any]] | None = None,
        recovery_bound: float = 8.0,
        db_outages: list[tuple[float, float]] | None = None,
        tool_kills: list[dict[str, Any]] | None = None,
        parked_kills: list[dict[str, Any]] | None = None,
        agent_rooms: dict[int, RoomData] | None = None,
    ) -> None:
        self.records = records
        self.rooms = rooms
        self.probes = probes or []
        self.recoveries = recoveries or []
        self.recovery_bound = recovery_bound
        self.db_outages = db_outages or []  # (t, seconds) the database refused connections
        self.tool_kills = tool_kills or []  # calls whose worker was killed mid-run
        self.parked_kills = parked_kills or []  # kills while turns were parked
        self.agent_rooms = agent_rooms or {}  # the rooms set up as agents: child runs, no clients
        self.report = CheckReport()
        self.tool_stats: Counter[str] = Counter()
        self.parked_endings: Counter[str] = Counter()

    def fail(self, check: str, room: RoomData, client: str, detail: str) -> None:
        self.report.violations.append(Violation(check, room.slug, client, detail))

    def run(self) -> CheckReport:
        for rec in self.records:
            room = self.rooms[rec.room_id]
            self.check_events(rec, room)
            self.check_converged(rec, room)
            self.check_acks(rec, room)
            self.check_deltas(rec, room)
            self.check_client_calls(rec, room)
        sent_by = {(rec.user_id, cid): content for rec in self.records for cid, content in rec.sent.items()}
        for room in self.rooms.values():
            self.check_user_messages(room, sent_by)
            self.check_assistant_messages(room)
            self.check_terminal(room)
            self.check_order(room)
            self.check_chunks(room)
            self.check_side_effects(room)
            self.check_calls_settled(room)
            self.check_parked(room)
        for room in self.agent_rooms.values():  # what clients did not see: the database's checks
            self.check_assistant_messages(room)
            self.check_terminal(room)
            self.check_order(room)
            self.check_chunks(room)
            self.check_side_effects(room)
            self.check_calls_settled(room)
            self.check_parked(room)
        self.check_child_runs()
        self.check_parent_calls()
        self.check_tool_kills()
        self.check_probes()
        self.check_recoveries()
        self.check_exercised()
        self.report.stats = self.stats()
        return self.report

    # --- a ----------------------------------------------------------------------------------

    def check_events(self, rec: ClientRecord, room: RoomData) -> None:
        seqs = rec.state.applied_seqs
        for i, seq in enumerate(seqs):
            if seq != i + 1:
                missing = i + 1
                what = "applied twice" if seq in seqs[:i] else f"applied {seq} where {missing} was due"
                self.fail(
                    "a",
                    room,
                    rec.name,
                    f"event #{i}: {what}; first differing event: db "
                    f"{_brief(room.events.get(missing, (None, None))[1])}",
                )
                break
        if rec.state.last_seq != room.last_seq:
            self.fail(
                "a", room, rec.name, f"client ended at seq {rec.state.last_seq}, room at {room.last_seq}"
            )
        bad = 0
        for frame in rec.frames:
            if frame.get("type") not in ROOM_EVENTS:
                continue
            self.report.frames_checked += 1
            db = room.events.get(frame["seq"])
            if db is None or json.loads(db[1]) != frame:
                bad += 1
                if bad == 1:
                    self.fail(
                        "a",
                        room,
                        rec.name,
                        f"received {_brief(frame)} but db has {_brief(db[1] if db else None)}: "
                        f"{json.dumps(frame)[:300]} vs {(db[1] if db else '')[:300]}",
                    )
        if bad > 1:
            self.fail("a", room, rec.name, f"{bad} event frames in all differ from the database")

    # --- b ----------------------------------------------------------------------------------

    def check_converged(self, rec: ClientRecord, room: RoomData) -> None:
        mine = rec.state.messages
        for mid, m in sorted(room.messages.items(), key=lambda kv: kv[1]["seq"]):
            cm = mine.get(mid)
            # a message still streaming has its text in its chunks (check e reports it)
            text = (
                "".join(t for _, t in room.chunks.get(mid, []))
                if m["status"] == "streaming"
                else m["content"]
            )
            if cm is None:
                self.fail("b", room, rec.name, f"message {mid} (seq {m['seq']}, {m['role']}) never seen")
            elif cm.content != text:
                self.fail(
                    "b",
                    room,
                    rec.name,
                    f"message {mid} ({m['role']}, db {m['status']}, client {cm.status}) text differs "
                    f"{_first_diff(cm.content, text)}",
                )
            elif cm.status != m["status"]:
                self.fail("b", room, rec.name, f"message {mid} status: client {cm.status}, db {m['status']}")
        for mid in set(mine) - set(room.messages):
            self.fail("b", room, rec.name, f"client has message {mid} the database does not")
        for tid, t in room.turns.items():
            ct = rec.state.turns.get(tid)
            if ct is None or ct["status"] != t["status"]:
                self.fail(
                    "b",
                    room,
                    rec.name,
                    f"turn {tid}: client {ct['status'] if ct else 'never saw it'}, db {t['status']}",
                )

    # --- c ----------------------------------------------------------------------------------

    def check_acks(self, rec: ClientRecord, room: RoomData) -> None:
        for cid, ack in rec.acks.items():
            m = room.messages.get(ack["message_id"])
            if m is None:
                self.fail("c", room, rec.name, f"acked message {ack['message_id']} ({cid}) is not stored")
            elif (str(m["client_id"]), m["author_id"], m["seq"], m["content"]) != (
                cid,
                rec.user_id,
                ack["seq"],
                rec.sent.get(cid),
            ):
                self.fail(
                    "c",
                    room,
                    rec.name,
                    f"ack {ack} does not match stored message (client_id {m['client_id']}, author "
                    f"{m['author_id']}, seq {m['seq']}, content {m['content'][:60]!r})",
                )
        for cid in rec.unanswered:
            self.fail("c", room, rec.name, f"send {cid} never acked nor rejected after settling")

    def check_user_messages(self, room: RoomData, sent_by: dict[tuple[int, str], str]) -> None:
        for m in room.messages.values():
            if m["role"] != "user":
                continue
            sent = sent_by.get((m["author_id"], str(m["client_id"])))
            if sent != m["content"]:
                self.fail(
                    "c",
                    room,
                    "-",
                    f"stored user message {m['id']} was never sent like that: {m['content'][:80]!r}",
                )

    # --- d ----------------------------------------------------------------------------------

    def check_assistant_messages(self, room: RoomData) -> None:
        owners: dict[int, list[int]] = defaultdict(list)
        for tid, t in room.turns.items():
            if t["assistant_message_id"] is not None:
                owners[t["assistant_message_id"]].append(tid)
        created_by: dict[int, Any] = {}
        for _seq, (type_, text) in room.events.items():
            if type_ == "message":
                body = json.loads(text)["message"]
                if body["role"] == "assistant":
                    created_by[body["id"]] = body.get("turn_id")
        per_turn: Counter[Any] = Counter(created_by.values())
        for mid, m in room.messages.items():
            if m["role"] != "assistant":
                continue
            turns = owners.get(mid, [])
            if len(turns) != 1:
                self.fail("d", room, "-", f"assistant message {mid} belongs to turns {turns}")
            elif created_by.get(mid) != turns[0]:
                self.fail(
                    "d",
                    room,
                    "-",
                    f"assistant message {mid} was created for turn {created_by.get(mid)}, "
                    f"but turn {turns[0]} holds it",
                )
        for tid, n in per_turn.items():
            if n > 1:
                self.fail("d", room, "-", f"turn {tid} created {n} assistant messages")

    # --- e ----------------------------------------------------------------------------------

    def check_terminal(self, room: RoomData) -> None:
        for tid, t in room.turns.items():
            if t["status"] not in TERMINAL:
                self.fail(
                    "e",
                    room,
                    "-",
                    f"turn {tid} is still {t['status']} (attempt {t['attempt']}, "
                    f"error {t['error']!r}); its events: {self.turn_history(room, tid)}",
                )
        for mid, m in room.messages.items():
            if m["status"] == "streaming":
                turn = next((t for t in room.turns.values() if t["assistant_message_id"] == mid), None)
                history = self.turn_history(room, turn["id"]) if turn else "-"
                self.fail(
                    "e",
                    room,
                    "-",
                    f"message {mid} is still streaming ({len(room.chunks.get(mid, []))} "
                    f"chunks); its turn {turn['id'] if turn else None} is "
                    f"{turn['status'] if turn else None} (error {turn['error'] if turn else ''!r}); "
                    f"the turn's events: {history}",
                )

    @staticmethod
    def turn_history(room: RoomData, turn_id: int) -> str:
        """The `turn` events of one turn, in seq order: how it got where it is."""
        steps = []
        for seq in sorted(room.events):
            type_, text = room.events[seq]
            if type_ == "turn":
                t = json.loads(text)["turn"]
                if t["id"] == turn_id:
                    extra = " recovering" if t.get("recovering") else ""
                    steps.append(f"seq {seq} {t['status']}{extra} (attempt {t['attempt']})")
        return "; ".join(steps)

    # --- f, g -------------------------------------------------------------------------------

    def check_order(self, room: RoomData) -> None:
        started = sorted((t for t in room.turns.values() if t["started_at"]), key=lambda t: t["started_at"])
        for prev, nxt in zip(started, started[1:], strict=False):
            if nxt["queue_seq"] < prev["queue_seq"]:
                self.fail(
                    "f",
                    room,
                    "-",
                    f"turn {nxt['id']} (queue_seq {nxt['queue_seq']}) started at "
                    f"{nxt['started_at']:%H:%M:%S.%f}, after turn {prev['id']} (queue_seq "
                    f"{prev['queue_seq']}) at {prev['started_at']:%H:%M:%S.%f}",
                )
            if prev["finished_at"] is None or prev["finished_at"] > nxt["started_at"]:
                self.fail(
                    "g",
                    room,
                    "-",
                    f"turn {prev['id']} ran {prev['started_at']:%H:%M:%S.%f}.."
                    f"{prev['finished_at'] and format(prev['finished_at'], '%H:%M:%S.%f')} and turn "
                    f"{nxt['id']} started {nxt['started_at']:%H:%M:%S.%f}",
                )

    # --- h, i -------------------------------------------------------------------------------

    def check_chunks(self, room: RoomData) -> None:
        for mid, m in room.messages.items():
            chunks = room.chunks.get(mid, [])
            if m["role"] != "assistant":
                if chunks:
                    self.fail("h", room, "-", f"{m['role']} message {mid} has chunks")
                continue
            indexes = [i for i, _ in chunks]
            if indexes != list(range(len(indexes))):
                self.fail("h", room, "-", f"message {mid} chunk indexes {indexes[:20]}...")
            joined = "".join(t for _, t in chunks)
            if m["status"] != "streaming" and m["content"] != joined:
                self.fail(
                    "h",
                    room,
                    "-",
                    f"message {mid} ({m['status']}) content != chunks {_first_diff(m['content'], joined)}",
                )

    def check_deltas(self, rec: ClientRecord, room: RoomData) -> None:
        bad = 0
        for frame in rec.frames:
            if frame.get("type") != "delta":
                continue
            self.report.frames_checked += 1
            chunks = dict(room.chunks.get(frame["message_id"], []))
            if chunks.get(frame["index"]) != frame["text"]:
                bad += 1
                if bad == 1:
                    self.fail(
                        "i",
                        room,
                        rec.name,
                        f"delta message {frame['message_id']} index {frame['index']} text "
                        f"{frame['text'][:60]!r}, db chunk {chunks.get(frame['index'], '<none>')!r:.80}",
                    )
        if bad > 1:
            self.fail("i", room, rec.name, f"{bad} delta frames in all differ from the chunks")

    # --- j, k -------------------------------------------------------------------------------

    def check_probes(self) -> None:
        by_slug = {r.slug: r for r in self.rooms.values()}
        for probe in self.probes:
            if not probe["ok"]:
                detail = (
                    probe.get("detail") or f"never saw the probe's turn end: {', '.join(probe['missing'])}"
                )
                self.fail("j", by_slug[probe["room"]], "-", detail)

    def check_exercised(self) -> None:
        """A run in which nothing happened proves nothing: every client must have received
        events, every room must have finished an answer and been probed after the faults."""
        for rec in self.records:
            if not rec.state.applied_seqs:
                self.fail("z", self.rooms[rec.room_id], rec.name, "the client never received an event")
        if self.rooms and not any(room.calls for room in self.rooms.values()):
            self.fail("z", next(iter(self.rooms.values())), "-", "no tool was called in the whole run")
        probed = {probe["room"] for probe in self.probes}
        for room in self.rooms.values():
            if not any(t.get("status") == "done" for t in room.turns.values()):
                self.fail("z", room, "-", "no turn of the room finished")
            if room.slug not in probed:
                self.fail("z", room, "-", "the room was not probed after the faults")

    def check_recoveries(self) -> None:
        by_id = self.rooms
        for r in self.recoveries:
            room = by_id.get(r["room"])
            if room is None:
                continue
            # While the database refuses connections nobody can recover anything: the time it
            # refused them inside the window is added to the bound.
            bound = self.recovery_bound
            for t, hold in self.db_outages:
                if r["t"] <= t <= r["t"] + (r["latency_s"] or 0):
                    bound += hold
            if r["latency_s"] is None or r["latency_s"] > bound:
                took = "never" if r["latency_s"] is None else f"after {r['latency_s']}s"
                self.fail(
                    "k",
                    room,
                    "-",
                    f"{r['kind']} at t={r['t']}s: turn {r['turn']} kept the lost lease (generation "
                    f"{r['generation']}) until {took} (bound {bound:.1f}s); then {r['after']}",
                )

    # --- l, m, n, o: tools -------------------------------------------------------------------

    def check_side_effects(self, room: RoomData) -> None:
        runs: Counter[int | None] = Counter(call_id for _, call_id in room.notes)
        for note_id, call_id in room.notes:
            call = room.calls.get(call_id) if call_id is not None else None
            if call is None or call["name"] not in SIDE_EFFECT_TOOLS:
                self.fail(
                    "l",
                    room,
                    "-",
                    f"note {note_id} was written by no side-effecting call of the room ({call_id})",
                )
        for call in room.calls.values():
            if call["name"] not in SIDE_EFFECT_TOOLS:
                continue
            n, state = runs[call["id"]], call["state"]
            self.tool_stats[f"notes_{call['name']}"] += n
            expected = {"done": (1,), "interrupted": (0, 1)}.get(state, (0,))
            if n not in expected:
                why = "ran more than once" if n > 1 else f"is {state} ({call['error'][:80]!r})"
                self.fail("l", room, "-", f"{call['name']} call {call['id']} wrote {n} notes and {why}")

    def check_tool_kills(self) -> None:
        for kill in self.tool_kills:
            room = self.rooms.get(kill["room"])
            call = room.calls.get(kill["call"]) if room else None
            if room is None or call is None:
                continue
            self.tool_stats[f"kills_{kill['tool']}"] += 1
            turn = room.turns.get(call["turn_id"], {})
            if kill["tool"] == "launch":
                if call["state"] == "interrupted":
                    self.tool_stats["killed_launches_interrupted"] += 1
                elif call["state"] == "done":  # it finished just before the kill landed
                    self.tool_stats["killed_launches_done_first"] += 1
                else:
                    self.fail("l", room, "-", f"launch call {call['id']} was killed mid-run and ended "
                              f"{call['state']} ({call['error'][:80]!r}), not interrupted")  # fmt: skip
            elif call["state"] == "interrupted":
                self.fail(
                    "l",
                    room,
                    "-",
                    f"read call {call['id']} killed mid-run ended interrupted: reads run again",
                )
            elif call["state"] == "done":
                self.tool_stats["killed_reads_done"] += 1
            elif turn.get("status") == "done":
                self.fail(
                    "l",
                    room,
                    "-",
                    f"read call {call['id']} killed mid-run ended {call['state']} in a turn done",
                )
        for kill in self.tool_kills:
            room = self.rooms.get(kill["room"])
            if room is not None and kill["tool"] == "launch":
                self.tool_stats["killed_launches_noted"] += sum(1 for _, c in room.notes if c == kill["call"])

    def check_calls_settled(self, room: RoomData) -> None:
        for call in room.calls.values():
            state = call["state"]
            turn = room.turns.get(call["turn_id"], {})
            if state in SETTLED_CALL:
                continue
            if state in WAITING_CALL and turn.get("status") == "parked":
                continue
            if call["kind"] == "agent" and call["started_at"] and turn.get("status") == "parked":
                continue  # waits on its child run (check q looks at the child)
            history = self.turn_history(room, call["turn_id"])
            self.fail("m", room, "-", f"{call['name']} call {call['id']} is {state}; its turn "
                      f"{call['turn_id']} is {turn.get('status')}: {history}")  # fmt: skip

    # --- p, q: sub-agents ---------------------------------------------------------------------

    def _agent_calls(self) -> dict[int, tuple[RoomData, dict[str, Any]]]:
        rooms = [*self.rooms.values(), *self.agent_rooms.values()]
        return {cid: (room, c) for room in rooms for cid, c in room.calls.items() if c["kind"] == "agent"}

    def _child_runs(self) -> dict[int, list[tuple[RoomData, dict[str, Any]]]]:
        runs: dict[int, list[tuple[RoomData, dict[str, Any]]]] = defaultdict(list)
        for room in [*self.rooms.values(), *self.agent_rooms.values()]:
            for t in room.turns.values():
                if t["parent_call_id"] is not None:
                    runs[t["parent_call_id"]].append((room, t))
        return runs

    def check_child_runs(self) -> None:
        """One child run per agent call, each a turn of an agent's room with one task message;
        a call that is `done` carries its child's final answer; it settled in one event."""
        calls, runs = self._agent_calls(), self._child_runs()
        for room in self.agent_rooms.values():
            tasks = [m for m in room.messages.values() if m["role"] == "user"]
            triggers = Counter(t["trigger_message_id"] for t in room.turns.values())
            for m in tasks:
                if triggers[m["id"]] != 1:
                    self.fail("p", room, "-", f"task message {m['id']} started {triggers[m['id']]} runs")
            for t in room.turns.values():
                if t["parent_call_id"] is None or t["parent_call_id"] not in calls:
                    self.fail("p", room, "-", f"turn {t['id']} of an agent room answers no known call")
        for call_id, (room, call) in calls.items():
            children = runs.get(call_id, [])
            self.tool_stats["agent_calls"] += 1
            self.tool_stats["agent_child_runs"] += len(children)
            if len(children) > 1:
                ids = [t["id"] for _, t in children]
                self.fail("p", room, "-", f"agent call {call_id} has {len(children)} child runs: {ids}")
            settles = 0
            for _seq, (type_, text) in sorted(room.events.items()):
                if type_ == "tool_update":
                    wire = json.loads(text)["call"]
                    settles += wire["id"] == str(call_id) and wire["state"] in SETTLED_CALL
            if call["state"] in SETTLED_CALL and settles != 1:
                self.fail("p", room, "-", f"agent call {call_id} settled in {settles} events")
            if call["state"] == "done":
                if len(children) != 1:
                    self.fail("p", room, "-", f"agent call {call_id} is done with {len(children)} child runs")
                    continue
                child_room, child = children[0]
                answer = child_room.messages.get(child["assistant_message_id"] or -1, {}).get("content")
                if child["status"] != "done" or (call["output"] or {}).get("answer") != answer:
                    self.fail("p", room, "-", f"agent call {call_id} is done but its child {child['id']} is "
                              f"{child['status']} or answered otherwise")  # fmt: skip

    def check_parent_calls(self) -> None:
        """Every agent call settled, or waits (dispatched) with its turn parked on an open child;
        a child that failed, was cancelled or interrupted never reads as done."""
        runs = self._child_runs()
        for call_id, (room, call) in self._agent_calls().items():
            children = runs.get(call_id, [])
            turn = room.turns.get(call["turn_id"], {})
            self.tool_stats[f"agent_calls_{call['state']}"] += 1
            if call["state"] in SETTLED_CALL:
                if call["state"] == "done" and any(t["status"] != "done" for _, t in children):
                    self.fail("q", room, "-", f"agent call {call_id} is done, its child is not")
                continue
            waiting = call["state"] == "running" and call["started_at"] and turn.get("status") == "parked"
            open_child = any(t["status"] not in TERMINAL for _, t in children)
            if not (waiting and open_child):
                child = ", ".join(f"{t['id']} {t['status']}" for _, t in children) or "none"
                detail = f"agent call {call_id} is {call['state']} (turn {turn.get('status')}, child {child})"
                self.fail("q", room, "-", f"{detail}: neither settled nor parked on its child")

    def check_parked(self, room: RoomData) -> None:
        histories: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
        for seq in sorted(room.events):
            type_, text = room.events[seq]
            if type_ == "turn":
                t = json.loads(text)["turn"]
                histories[t["id"]].append((seq, t["status"], t["attempt"]))
        for turn_id, history in histories.items():
            statuses = [status for _, status, _ in history]
            if "parked" not in statuses:
                continue
            for i, (seq, status, attempt) in enumerate(history[:-1]):
                if status != "parked":
                    continue
                _, after, after_attempt = history[i + 1]
                if after not in ("queued", "cancelled"):
                    self.fail("n", room, "-", f"turn {turn_id} went from parked (seq {seq}) to {after}: "
                              f"{self.turn_history(room, turn_id)}")  # fmt: skip
                elif after == "queued" and after_attempt != attempt:
                    self.fail("n", room, "-", f"turn {turn_id}: the wait changed its attempt "
                              f"{attempt} -> {after_attempt} (seq {seq})")  # fmt: skip
            final = room.turns.get(turn_id, {}).get("status", "?")
            self.parked_endings[final] += 1
            if final in ("failed", "interrupted"):
                last_park = len(statuses) - 1 - statuses[::-1].index("parked")
                if "running" in statuses[last_park:]:
                    self.tool_stats[f"parked_then_{final}_after_running_again"] += 1
                else:
                    self.fail("n", room, "-", f"turn {turn_id} ended {final} out of its wait: "
                              f"{self.turn_history(room, turn_id)}")  # fmt: skip

    def check_client_calls(self, rec: ClientRecord, room: RoomData) -> None:
        for call_id, call in room.calls.items():
            seen = rec.state.calls.get(str(call_id))
            self.tool_stats["calls_compared"] += 1
            if seen is None:
                self.fail("o", room, rec.name, f"{call['name']} call {call_id} ({call['state']}) never seen")
                continue
            if seen != call["wire"]:
                keys = sorted(k for k in {*seen, *call["wire"]} if seen.get(k) != call["wire"].get(k))
                diff = {k: (seen.get(k), call["wire"].get(k)) for k in keys}
                self.fail(
                    "o", room, rec.name, f"{call['name']} call {call_id}: client vs db {str(diff)[:300]}"
                )
        for call_id in set(rec.state.calls) - {str(c) for c in room.calls}:
            self.fail("o", room, rec.name, f"client has call {call_id} the database does not")
        for frame in rec.answers_refused:
            if frame.get("code") != "conflict":
                self.fail(
                    "o", room, rec.name, f"an allowed answer to call {frame.get('ref')} was refused: {frame}"
                )

    def tool_summary(self) -> dict[str, Any]:
        calls: dict[str, Counter[str]] = defaultdict(Counter)
        for room in self.rooms.values():
            for call in room.calls.values():
                calls[call["name"]][call["state"]] += 1
        s = self.tool_stats
        return {
            "calls": {name: dict(sorted(states.items())) for name, states in sorted(calls.items())},
            "calls_total": sum(sum(c.values()) for c in calls.values()),
            "notes_launch": s["notes_launch"],
            "notes_note": s["notes_note"],
            "kills_launch": s["kills_launch"],
            "kills_slow_lookup": s["kills_slow_lookup"],
            "killed_launches_interrupted": s["killed_launches_interrupted"],
            "killed_launches_done_first": s["killed_launches_done_first"],
            "killed_launches_noted": s["killed_launches_noted"],
            "killed_reads_done": s["killed_reads_done"],
            "parked_kills": len(self.parked_kills),
            "parked_at_kills": sum(len(k["parked"]) for k in self.parked_kills),
            "parked_endings": dict(self.parked_endings.most_common()),
            "parked_then_failed_after_running_again": s["parked_then_failed_after_running_again"],
            "parked_then_interrupted_after_running_again": s["parked_then_interrupted_after_running_again"],
            "calls_compared": s["calls_compared"],
            "agent_calls": s["agent_calls"],
            "agent_child_runs": s["agent_child_runs"],
            "agent_calls_by_state": {
                k.removeprefix("agent_calls_"): v
                for k, v in sorted(s.items())
                if k.startswith("agent_calls_") and k != "agent_calls_compared"
            },
        }

    # --- numbers ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        turns: Counter[str] = Counter()
        messages: Counter[str] = Counter()
        attempts: Counter[int] = Counter()
        endings: Counter[str] = Counter()  # why turns ended other than done
        for room in self.rooms.values():
            turns.update(t["status"] for t in room.turns.values())
            endings.update(
                f"{t['status']}: {t['error'][:50] or '-'}"
                for t in room.turns.values()
                if t["status"] != "done"
            )
            attempts.update(t["attempt"] for t in room.turns.values())
            messages.update(m["role"] for m in room.messages.values())
        by_check = Counter(v.check for v in self.report.violations)
        return {
            "rooms": len(self.rooms),
            "clients": len(self.records),
            "turns": dict(sorted(turns.items())),
            "turn_attempts": dict(sorted(attempts.items())),
            "turn_endings": dict(endings.most_common()),
            "messages": dict(sorted(messages.items())),
            "events": sum(len(r.events) for r in self.rooms.values()),
            "chunks": sum(len(c) for r in self.rooms.values() for c in r.chunks.values()),
            "frames_received": sum(len(r.frames) for r in self.records),
            "frames_checked": self.report.frames_checked,
            "tools": self.tool_summary(),
            "violations": len(self.report.violations),
            "violations_by_check": {k: by_check.get(k, 0) for k in CHECKS},
        }
