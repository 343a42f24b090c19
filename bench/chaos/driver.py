"""The clients of a chaos run: one `RoomClient` per logical client, kept across reconnects.

Each client connects to a random one of the ASGI ports, sends messages at random moments
(`!tokens=N !delay=MS` directives make the fake LLM stream slowly), cancels running and queued
turns now and then, pings every ~2 s (a pong ahead of it makes `RoomClient` sync), and
reconnects with backoff whenever its socket goes away. Its `RoomClient` keeps the whole frame
record (`client.frames`) and its `RoomState` (with `last_seq`) across reconnects.

A share of the messages make the fake model call a tool: `calculator` (a server read),
`slow_lookup` (a slow server read), `launch` (a slow server side effect), `chaos_echo` (a client
tool this client offers in its `send` and answers with `tool_result`), `ask_researcher` or
`ask_analyst` (a sub-agent: a child run in an agent room, now and then with a slow read of its
own) and `note` (asks first:
the asker or the room's owner answers with `tool_approval`, approve or deny; now and then both
do and the second is refused). Answers come after a random delay, sometimes after the client
dropped its socket and reconnected, and keep coming through the settle phase.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rooms.client import RoomClient

log = logging.getLogger("bench.chaos.driver")

TERMINAL = frozenset({"done", "cancelled", "failed", "interrupted"})
WAITING = frozenset({"awaiting_approval", "waiting_client"})

CLIENT_TOOL = {
    "name": "chaos_echo",
    "description": "Echo a text back (run by the chaos client that offered it).",
    "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}
# what the fake model is told to call, by weight (server read, slow read, slow side effect,
# client tool, ask-first side effect)
TOOL_KINDS: dict[str, int] = {
    "calculator": 2,
    "slow_lookup": 1,
    "launch": 3,
    "client": 2,
    "note": 2,
    "agent": 3,
}
# the sub-agents every chaos room may call (rooms set up as agents by the run, bench/chaos/__main__.py)
AGENT_TOOLS = ("ask_researcher", "ask_analyst")


@dataclass(frozen=True)
class ClientSpec:
    """Who a client is and where it goes."""

    name: str
    room_id: int
    slug: str
    user_id: int
    token: str
    is_owner: bool


@dataclass
class Tuning:
    """How hard the clients push (defaults suit 2 cores and 4 worker slots)."""

    send_mean: float = 6.0  # seconds between a client's messages (exponential)
    max_queued: int = 2  # a client does not send while its room has this many queued turns
    cancel_mean: float = 60.0  # seconds between a client's cancels
    react_cancel: float = 0.5  # chance to withdraw a turn of ours the moment it is requeued (recovering)
    ping_every: float = 2.0
    tokens: tuple[int, int] = (5, 150)
    delay_ms: tuple[int, int] = (5, 60)
    tool_share: float = 0.4  # of the messages make the model call a tool
    tool_seconds: tuple[float, float] = (1.0, 4.0)  # how long launch and slow_lookup take
    answer_delay: tuple[float, float] = (0.2, 4.0)  # before a client tool result or an approval
    answer_after_reconnect: float = 0.2  # chance to drop the socket first and answer after reconnecting
    deny: float = 0.3  # chance an approval is a denial
    client_error: float = 0.1  # chance a client tool answers with an error
    resend_after: float = 5.0  # an answer not taken effect by then is sent again


@dataclass
class Answer:
    """A `tool_result` or `tool_approval` a client will send for one call."""

    kind: str
    payload: dict[str, Any]
    due: float = 0.0
    reconnect_first: bool = False
    twice: bool = False  # sent a second time once it took effect (then refused: conflict)
    force: bool = False  # sent once even if someone else's answer took effect first (refused)
    sent_at: float | None = None
    sends: int = 0


@dataclass
class ChaosClient:
    """One logical client: a `RoomClient` plus what it sent and what it asked for."""

    spec: ClientSpec
    ports: Callable[[], list[int]]
    rng: random.Random
    counts: Counter[str]
    tuning: Tuning = field(default_factory=Tuning)
    sent: dict[str, str] = field(default_factory=dict)  # client_id -> content (every send)
    rejected: dict[str, dict[str, Any]] = field(default_factory=dict)  # client_id -> error frame
    unanswered: dict[str, str] = field(default_factory=dict)  # never acked nor rejected
    connects: int = 0
    connect_failures: int = 0
    not_before: float = 0.0  # no reconnect before this (monotonic), after a simulated drop
    answers_refused: list[dict[str, Any]] = field(default_factory=list)  # error frames to our answers
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _answers: dict[str, Answer] = field(default_factory=dict)  # call id -> what we will answer
    _scheduled: set[str] = field(default_factory=set)  # calls we decided to answer (once each)
    _connecting: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        port = self.rng.choice(self.ports())
        self.rc = RoomClient(f"http://127.0.0.1:{port}", self.spec.slug, token=self.spec.token)
        self.rc.on_frame = self._on_frame
        self._n = 0

    # --- state ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        reader = self.rc._reader  # RoomClient has no public "is open"; its reader ends on close
        return reader is not None and not reader.done()

    def turns(self, status: str) -> list[dict[str, Any]]:
        return [t for t in self.rc.state.turns.values() if t["status"] == status]

    # --- connecting -----------------------------------------------------------------------

    async def _abort(self) -> None:
        """Forget a half-open socket (connected but no `ready`) before trying again."""
        ws = self.rc.ws
        if ws is not None and getattr(ws, "transport", None) is not None:
            ws.transport.abort()
        if self.rc._reader is not None:
            await asyncio.gather(self.rc._reader, return_exceptions=True)

    async def ensure_connected(self, stop: asyncio.Event | None, deadline: float | None = None) -> bool:
        """Connect (to a random ASGI port) with backoff until `ready`; False if told to stop."""
        async with self._connecting:  # the run loop and the answers may both want to
            return await self._connect(stop, deadline)

    async def _connect(self, stop: asyncio.Event | None, deadline: float | None) -> bool:
        backoff = 0.5
        while not self.connected:
            if stop is not None and stop.is_set():
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
            wait = self.not_before - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self.rc.ws_url = f"ws://127.0.0.1:{self.rng.choice(self.ports())}"
            try:
                await self.rc.connect(timeout=10.0)
                self.connects += 1
                self.counts["connects"] += 1
                return True
            except Exception as exc:  # refused, 5xx, closed before ready, timeout: all expected
                self.connect_failures += 1
                self.counts["connect_failures"] += 1
                log.debug("%s: connect failed: %r", self.spec.name, exc)
                await self._abort()
                await asyncio.sleep(backoff * self.rng.uniform(0.5, 1.5))
                backoff = min(5.0, backoff * 2)
        return True

    # --- what the client does -------------------------------------------------------------

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "error":
            ref = frame.get("ref")
            if isinstance(ref, str) and ref in self.rc.unacked:
                # rejected (rate limit, room busy): nothing stored; do not resend it forever
                self.rejected[ref] = frame
                self.rc.unacked.pop(ref, None)
                self.counts["sends_rejected"] += 1
                self.counts[f"sends_rejected_{frame.get('code')}"] += 1
                self.counts[f"rejected: {str(frame.get('detail'))[:60]}"] += 1
            elif isinstance(ref, str) and ref in self._answers:
                # an answer refused: `conflict` when someone answered first (expected when two
                # decide), anything else is a finding the checker reports
                self.answers_refused.append(frame)
                self.counts[f"answers_refused_{frame.get('code')}"] += 1
                self._answers.pop(ref, None)
            else:
                self.counts[f"errors_{frame.get('code')}"] += 1
        elif kind in ("tool_call", "tool_update"):
            self._on_call(frame["call"])
        elif kind == "turn":
            turn = frame["turn"]
            if turn.get("recovering") and turn["status"] == "queued":
                self.counts["recovering_seen"] += 1
                may = self.spec.is_owner or self._author_of(turn["trigger_message_id"]) == self.spec.user_id
                if may and self.rng.random() < self.tuning.react_cancel:
                    self._spawn(self._cancel(turn["id"], "cancel_recovering"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel(self, turn_id: int, kind: str) -> None:
        if self.connected:
            await self.rc.cancel(turn_id)
            self.counts[kind] += 1

    # --- tools --------------------------------------------------------------------------------

    def _tool_directive(self) -> tuple[str, list[dict[str, Any]] | None]:
        """A `!tool=` directive for the fake model (and the client tools to offer), or none."""
        if self.rng.random() >= self.tuning.tool_share:
            return "", None
        kind = self.rng.choices(list(TOOL_KINDS), list(TOOL_KINDS.values()))[0]
        self.counts[f"tool_sends_{kind}"] += 1
        label = f"{self.spec.name}-{self._n}"
        seconds = round(self.rng.uniform(*self.tuning.tool_seconds), 1)
        if kind == "calculator":
            args: dict[str, Any] = {"expression": f"{self.rng.randint(2, 999)} * {self.rng.randint(2, 99)}"}
        elif kind == "slow_lookup":
            args = {"key": label, "seconds": seconds}
        elif kind == "launch":
            args = {"label": label, "seconds": seconds}
        elif kind == "note":
            args = {"text": f"note {label}"}
        elif kind == "agent":
            # the child run streams in the agent's room; now and then it calls a slow read itself
            task = f"task {label} !tokens={self.rng.randint(5, 60)} !delay={self.rng.randint(5, 40)}"
            if self.rng.random() < 0.3:
                task += f" !tool=slow_lookup:{json.dumps({'key': label, 'seconds': seconds})}"
            return f" !tool={self.rng.choice(AGENT_TOOLS)}:{json.dumps({'task': task})}", None
        else:
            return f" !tool={CLIENT_TOOL['name']}:{json.dumps({'text': label})}", [CLIENT_TOOL]
        return f" !tool={kind}:{json.dumps(args)}", None

    def _on_call(self, call: dict[str, Any]) -> None:
        """A call we are to answer: schedule the answer (once per call)."""
        call_id, state = call["id"], call["state"]
        if call_id in self._scheduled or state not in WAITING:
            return
        mine = call["initiator_id"] == self.spec.user_id
        if state == "waiting_client":
            if call["kind"] != "client" or not mine:
                return
            if self.rng.random() < self.tuning.client_error:
                answer = Answer("tool_result", {"error": "the chaos client could not run it"})
            else:
                answer = Answer("tool_result", {"output": {"echo": (call["input"] or {}).get("text")}})
            answer.twice = self.rng.random() < 0.1  # a second tab answering too: refused
        else:
            # who decides, the same for every client: the asker, the owner, or (1 in 10) both
            who = int(call_id) % 10
            if not ((mine and (who < 6 or who == 9)) or (self.spec.is_owner and who >= 6)):
                return
            approved = self.rng.random() >= self.tuning.deny
            payload = {"approved": approved} | ({} if approved else {"reason": "chaos"})
            answer = Answer("tool_approval", payload)
            answer.force = who == 9  # both decide: the later is refused (unless one client is both)
        self._scheduled.add(call_id)
        answer.due = time.monotonic() + self.rng.uniform(*self.tuning.answer_delay)
        answer.reconnect_first = self.rng.random() < self.tuning.answer_after_reconnect
        self._answers[call_id] = answer
        self.counts[f"answers_scheduled_{answer.kind}"] += 1

    async def answer_due(self) -> None:
        """Send the answers that are due (again if one has not taken effect after a while)."""
        now = time.monotonic()
        for call_id, answer in list(self._answers.items()):
            current = self.rc.state.calls.get(call_id)
            settled = current is not None and current["state"] not in WAITING
            if now < answer.due or not self.connected:
                if settled and not answer.force:
                    self._answers.pop(call_id, None)  # someone else's answer took effect
                continue
            if settled:
                if answer.twice and answer.sends == 1:  # a second tab answering too: refused
                    answer.twice = False
                    self.counts["answers_twice"] += 1
                    await self._answer(call_id, answer)
                elif answer.force and answer.sends == 0:  # the other decider was first: refused
                    self.counts["answers_both_decide"] += 1
                    await self._answer(call_id, answer)
                else:
                    self._answers.pop(call_id, None)  # it took effect
                continue
            if answer.reconnect_first:
                answer.reconnect_first = False
                self.counts["answers_after_reconnect"] += 1
                await self.drop(self.rng.uniform(0.2, 1.5))
                return
            if answer.sent_at is not None and now - answer.sent_at < self.tuning.resend_after:
                continue
            if answer.sends:
                self.counts["answers_resent"] += 1
            await self._answer(call_id, answer)

    async def _answer(self, call_id: str, answer: Answer) -> None:
        if answer.kind == "tool_result":
            await self.rc.tool_result(call_id, **answer.payload)
        else:
            await self.rc.tool_approval(call_id, **answer.payload)
        answer.sent_at, answer.sends = time.monotonic(), answer.sends + 1
        self.counts[f"answers_sent_{answer.kind}"] += 1

    async def answer_loop(self, stop: asyncio.Event, done: asyncio.Event) -> None:
        """Answer until `done` (after the settle phase); once the run loop has stopped, connect
        by itself when an answer is pending."""
        while not done.is_set():
            if not self.connected and stop.is_set() and self._answers:
                await self.ensure_connected(None, time.monotonic() + 10)
            await self.answer_due()
            await asyncio.sleep(0.1)

    @property
    def answers_pending(self) -> int:
        return len(self._answers)

    async def send_one(self) -> None:
        self._n += 1
        tokens = self.rng.randint(*self.tuning.tokens)
        delay = self.rng.randint(*self.tuning.delay_ms)
        directive, tools = self._tool_directive()
        content = f"{self.spec.name} #{self._n}: tell me more{directive} !tokens={tokens} !delay={delay}"
        client_id = await self.rc.send(content, tools=tools)
        self.sent[client_id] = content
        self.counts["sends"] += 1
        if self.turns("running"):
            self.counts["sends_while_streaming"] += 1

    async def cancel_one(self) -> None:
        """Stop a running turn, or withdraw a queued one this client may withdraw."""
        parked = self.turns("parked")
        if parked and self.rng.random() < 0.25:  # a turn waiting on a person: stopped by anyone
            await self._cancel(self.rng.choice(parked)["id"], "cancel_parked")
            return
        running = self.turns("running")
        mine = [
            t
            for t in self.turns("queued")
            if self.spec.is_owner or self._author_of(t["trigger_message_id"]) == self.spec.user_id
        ]
        if running and (not mine or self.rng.random() < 0.6):
            await self._cancel(self.rng.choice(running)["id"], "cancel_running")
        elif mine:
            turn = self.rng.choice(mine)
            await self._cancel(turn["id"], "cancel_recovering" if turn.get("recovering") else "cancel_queued")

    def _author_of(self, message_id: int) -> int | None:
        m = self.rc.state.messages.get(message_id)
        return m.author["id"] if m is not None and m.author else None

    async def run(self, stop: asyncio.Event) -> None:
        """Drive until `stop`: connect, send, cancel, ping; reconnect whenever dropped."""
        now = time.monotonic()
        next_send = now + self.rng.uniform(0.2, self.tuning.send_mean)
        next_ping = now + self.rng.uniform(0.0, self.tuning.ping_every)
        next_cancel = now + self.rng.expovariate(1 / self.tuning.cancel_mean)
        while not stop.is_set():
            if not self.connected:
                if not await self.ensure_connected(stop):
                    break
                continue
            now = time.monotonic()
            if now >= next_ping:
                await self.rc.ping()
                self.counts["pings"] += 1
                next_ping = now + self.tuning.ping_every * self.rng.uniform(0.8, 1.2)
            if now >= next_send:
                if len(self.turns("queued")) < self.tuning.max_queued:
                    await self.send_one()
                next_send = now + self.rng.expovariate(1 / self.tuning.send_mean)
            if now >= next_cancel:
                await self.cancel_one()
                next_cancel = now + self.rng.expovariate(1 / self.tuning.cancel_mean)
            await asyncio.sleep(0.1)

    # --- client faults ----------------------------------------------------------------------

    async def drop(self, pause: float) -> None:
        """Lose the socket abruptly; reconnect no sooner than `pause` seconds from now."""
        self.not_before = time.monotonic() + pause
        await self.rc.drop()

    def pause_reads(self, seconds: float) -> bool:
        """Stop reading the socket for `seconds` (the server keeps writing into its buffers)."""
        ws = self.rc.ws
        transport = getattr(ws, "transport", None)
        if not self.connected or transport is None or transport.is_closing():
            return False
        transport.pause_reading()

        def resume() -> None:
            if not transport.is_closing():
                transport.resume_reading()

        asyncio.get_running_loop().call_later(seconds, resume)
        return True

    # --- settling ---------------------------------------------------------------------------

    async def settle(self, deadline: float) -> None:
        """Be connected with every send answered (acked or rejected), by `deadline`."""
        while time.monotonic() < deadline:
            if not self.connected:
                self.not_before = 0.0
                await self.ensure_connected(None, deadline)
                continue
            if not self.rc.unacked:
                return
            await asyncio.sleep(0.1)

    async def final_sync(self, deadline: float) -> bool:
        """Reconnect with `since = last_seq` and wait for `ready`: the client's last word."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        # Sends never answered by now would be resent by connect(): set them aside instead.
        self.unanswered.update(self.rc.unacked)
        self.rc.unacked.clear()
        await self.rc.close()
        self.not_before = 0.0
        ok = await self.ensure_connected(None, deadline)
        await self.rc.close()
        return ok
