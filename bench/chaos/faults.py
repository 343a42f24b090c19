"""The fault injector: kills, pauses and restarts pieces of the stack at random moments.

System faults run one at a time (a paused worker stays paused while nothing else happens to the
stack; the clients go on); client faults (socket drops, stalled reads) run in their own loop.
Every fault injected is counted by kind and logged with its time and details, so a violation
can be lined up with what happened just before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async

from bench.chaos.driver import ChaosClient
from bench.chaos.stack import AppProcesses, ChaosDatabase, ChaosRedis, port_open

log = logging.getLogger("bench.chaos.faults")

SYSTEM_FAULTS: dict[str, int] = {  # kind -> weight
    "kill_worker_child": 4,
    "kill_worker": 1,
    "stop_worker_child": 2,
    "stop_worker_in_txn": 1,
    "restart_redis": 1,
    "restart_asgi": 2,
    "pg_refuse": 1,
    "kill_during_tool": 6,
    "kill_while_parked": 3,
    "kill_during_agent": 3,
}
CLIENT_FAULTS: dict[str, int] = {"drop_client": 3, "pause_reads": 2}
SLOW_TOOLS = ("launch", "slow_lookup")  # tests/tools.py: what kill_during_tool kills inside of


def _running_turns() -> list[tuple[int, int, str, int]]:
    """(turn id, room id, lease owner, lease generation) of every running turn."""
    from django.db import connection

    from agents.models import Turn

    try:
        return list(
            Turn.objects.filter(status="running")
            .exclude(lease_owner="")
            .values_list("pk", "room_id", "lease_owner", "lease_generation")
        )
    except Exception:
        connection.close()  # the database may be refusing us (pg_refuse): reconnect next time
        raise


def _running_tool_calls() -> list[tuple[int, str, int, int, str, int]]:
    """(call id, tool, turn id, room id, lease owner, generation) of every slow server call
    that is running now with its `started_at` committed (between its start and its result)."""
    from django.db import connection

    from agents.models import ToolCall

    try:
        return list(
            ToolCall.objects.filter(
                name__in=SLOW_TOOLS, state="running", started_at__isnull=False, turn__status="running"
            )
            .exclude(turn__lease_owner="")
            .values_list("pk", "name", "turn_id", "room_id", "turn__lease_owner", "turn__lease_generation")
        )
    except Exception:
        connection.close()
        raise


def _running_child_runs() -> list[tuple[int, int, str, int]]:
    """(turn id, room id, lease owner, generation) of every sub-agent turn running now."""
    from django.db import connection

    from agents.models import Turn

    try:
        return list(
            Turn.objects.filter(status="running", parent_call__isnull=False)
            .exclude(lease_owner="")
            .values_list("pk", "room_id", "lease_owner", "lease_generation")
        )
    except Exception:
        connection.close()
        raise


def _parked_turns() -> list[int]:
    from django.db import connection

    from agents.models import Turn

    try:
        return list(Turn.objects.filter(status="parked").values_list("pk", flat=True))
    except Exception:
        connection.close()
        raise


def _turn_state(turn_id: int) -> tuple[str, int] | None:
    from django.db import connection

    from agents.models import Turn

    try:
        return Turn.objects.filter(pk=turn_id).values_list("status", "lease_generation").first()
    except Exception:
        connection.close()
        raise


@dataclass
class FaultInjector:
    """Injects faults into one chaos run until told to stop; `restore()` undoes what lingers."""

    apps: AppProcesses
    db: ChaosDatabase
    redis: ChaosRedis | None  # None: REDIS_URL was given, the Redis restart fault is skipped
    clients: list[ChaosClient]
    rng: random.Random
    lease_timeout: float
    gap: tuple[float, float] = (2.0, 6.0)  # seconds between system faults
    client_gap: tuple[float, float] = (0.3, 1.5)  # seconds between client faults
    only: frozenset[str] | None = None  # inject only these kinds (None: all)
    counts: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    recoveries: list[dict[str, Any]] = field(default_factory=list)  # one per worker fault
    tool_kills: list[dict[str, Any]] = field(default_factory=list)  # calls whose worker was killed
    parked_kills: list[dict[str, Any]] = field(default_factory=list)  # kills while turns were parked
    agent_kills: list[dict[str, Any]] = field(default_factory=list)  # kills during a child run
    _stopped_pids: set[int] = field(default_factory=set)
    _refusing: bool = False
    _watchers: set[asyncio.Task[None]] = field(default_factory=set)

    # --- loops ------------------------------------------------------------------------------

    async def run_system(self, stop: asyncio.Event) -> None:
        kinds = {k: w for k, w in SYSTEM_FAULTS.items() if k != "restart_redis" or self.redis is not None}
        await self._loop(stop, kinds, self.gap)

    async def run_clients(self, stop: asyncio.Event) -> None:
        await self._loop(stop, CLIENT_FAULTS, self.client_gap)

    async def _loop(self, stop: asyncio.Event, kinds: dict[str, int], gap: tuple[float, float]) -> None:
        if self.only is not None:
            kinds = {k: w for k, w in kinds.items() if k in self.only}
        if not kinds:
            return
        names, weights = list(kinds), list(kinds.values())
        # every kind once first (in random order), so even a short run injects each of them
        not_yet = self.rng.sample(names, len(names))
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.rng.uniform(*gap))
                return
            except TimeoutError:
                pass
            kind = not_yet[-1] if not_yet else self.rng.choices(names, weights)[0]
            method: Callable[[], Awaitable[dict[str, Any] | None]] = getattr(self, kind)
            at = time.monotonic() - self.started
            try:
                detail = await method()
            except Exception as exc:
                log.warning("fault %s failed: %r", kind, exc)
                self.skipped[f"{kind} (error)"] += 1
                if kind in not_yet:
                    not_yet.remove(kind)
                    not_yet.insert(0, kind)
                continue
            if detail is None:
                self.skipped[kind] += 1
                if kind in not_yet:  # not possible now (e.g. no tool running): one other first
                    not_yet.remove(kind)
                    not_yet.insert(max(0, len(not_yet) - 1), kind)
                continue
            self.counts[kind] += 1
            if kind in not_yet:
                not_yet.remove(kind)
            self.timeline.append({"t": round(at, 2), "kind": kind, **detail})
            log.info("t=%6.1fs %-18s %s", at, kind, detail)

    # --- worker faults ----------------------------------------------------------------------

    async def _leased_child(self) -> tuple[int, int, int, int, str] | None:
        """A running turn whose lease is held by a pool process of one of our workers:
        (turn id, room id, generation, pid, worker name)."""
        try:
            turns = await sync_to_async(_running_turns, thread_sensitive=True)()
        except Exception:
            return None
        host = socket.gethostname()
        candidates = []
        for turn_id, room_id, owner, generation in turns:
            owner_host, _, pid_text = owner.rpartition(":")
            if owner_host != host or not pid_text.isdigit():
                continue
            worker = self.apps.worker_of_child(int(pid_text))
            if worker is not None and int(pid_text) not in self._stopped_pids:
                candidates.append((turn_id, room_id, generation, int(pid_text), worker))
        return self.rng.choice(candidates) if candidates else None

    async def kill_worker_child(self) -> dict[str, Any] | None:
        """SIGKILL the pool process streaming a turn (its master forks a new one)."""
        found = await self._leased_child()
        if found is None:
            return None
        turn_id, room_id, generation, pid, worker = found
        os.kill(pid, signal.SIGKILL)
        self.watch_recovery("kill_worker_child", turn_id, room_id, generation)
        return {"turn": turn_id, "room": room_id, "pid": pid, "worker": worker, "generation": generation}

    async def kill_worker(self) -> dict[str, Any] | None:
        """SIGKILL a whole worker (master and pool), then start a new one in its place."""
        found = await self._leased_child()
        name = found[4] if found is not None else self.rng.choice(AppProcesses.WORKERS)
        pid = self.apps.pid(name)
        await asyncio.to_thread(self.apps.stop, name, signal.SIGKILL)
        if found is not None:
            self.watch_recovery("kill_worker", found[0], found[1], found[2])
        await asyncio.sleep(self.rng.uniform(0.2, 2.0))
        self.apps.start(name)
        return {"worker": name, "pid": pid, "turn": found[0] if found else None}

    async def _running_tool_candidates(self) -> list[tuple[int, str, int, int, int, int, str, bool]]:
        """Slow calls running now in a worker of ours: (call, tool, turn, room, generation, pid,
        worker, whether the pid is a pool process)."""
        try:
            calls = await sync_to_async(_running_tool_calls, thread_sensitive=True)()
        except Exception:
            return []
        host = socket.gethostname()
        candidates = []
        for call_id, name, turn_id, room_id, owner, generation in calls:
            owner_host, _, pid_text = owner.rpartition(":")
            if owner_host != host or not pid_text.isdigit() or int(pid_text) in self._stopped_pids:
                continue
            pid = int(pid_text)
            child_of = self.apps.worker_of_child(pid)
            worker = child_of or next((w for w in AppProcesses.WORKERS if self.apps.pid(w) == pid), None)
            if worker is not None:
                candidates.append(
                    (call_id, name, turn_id, room_id, generation, pid, worker, child_of is not None)
                )
        return candidates

    async def kill_during_tool(self, wait: float = 6.0) -> dict[str, Any] | None:
        """SIGKILL the worker running a slow tool call between its `started_at` and its result
        (a launch rather than a read when both run): the pool process of a prefork worker, or
        the whole threads worker (started again). Waits up to `wait` seconds for such a call."""
        deadline = time.monotonic() + wait
        while not (candidates := await self._running_tool_candidates()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if not candidates:
            return None
        launches = [c for c in candidates if c[1] == "launch"]
        pool = launches if launches and self.rng.random() < 0.75 else candidates
        call_id, name, turn_id, room_id, generation, pid, worker, is_child = self.rng.choice(pool)
        at = time.time()
        if is_child:
            os.kill(pid, signal.SIGKILL)
        else:
            await asyncio.to_thread(self.apps.stop, worker, signal.SIGKILL)
        self.watch_recovery("kill_during_tool", turn_id, room_id, generation)
        self.tool_kills.append({"call": call_id, "tool": name, "turn": turn_id, "room": room_id, "wall": at})
        if not is_child:
            await asyncio.sleep(self.rng.uniform(0.2, 1.5))
            self.apps.start(worker)
        return {"call": call_id, "tool": name, "turn": turn_id, "room": room_id, "pid": pid,
                "worker": worker, "whole_worker": not is_child}  # fmt: skip

    async def kill_during_agent(self, wait: float = 6.0) -> dict[str, Any] | None:
        """SIGKILL the worker running a sub-agent's child turn (its parent is parked on it, or
        still waits on its step in the same worker): the pool process of a prefork worker, or
        the whole threads worker (started again). Waits up to `wait` seconds for one."""
        deadline = time.monotonic() + wait
        host = socket.gethostname()
        while True:
            try:
                runs = await sync_to_async(_running_child_runs, thread_sensitive=True)()
            except Exception:
                runs = []
            candidates = []
            for turn_id, room_id, owner, generation in runs:
                owner_host, _, pid_text = owner.rpartition(":")
                if owner_host != host or not pid_text.isdigit() or int(pid_text) in self._stopped_pids:
                    continue
                pid = int(pid_text)
                child_of = self.apps.worker_of_child(pid)
                worker = child_of or next((w for w in AppProcesses.WORKERS if self.apps.pid(w) == pid), None)
                if worker is not None:
                    candidates.append((turn_id, room_id, generation, pid, worker, child_of is not None))
            if candidates or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
        if not candidates:
            return None
        turn_id, room_id, generation, pid, worker, is_child = self.rng.choice(candidates)
        if is_child:
            os.kill(pid, signal.SIGKILL)
        else:
            await asyncio.to_thread(self.apps.stop, worker, signal.SIGKILL)
        self.watch_recovery("kill_during_agent", turn_id, room_id, generation)
        self.agent_kills.append({"turn": turn_id, "room": room_id, "wall": time.time()})
        if not is_child:
            await asyncio.sleep(self.rng.uniform(0.2, 1.5))
            self.apps.start(worker)
        return {"turn": turn_id, "room": room_id, "pid": pid, "worker": worker, "whole_worker": not is_child}

    async def kill_while_parked(self, wait: float = 6.0) -> dict[str, Any] | None:
        """While turns are parked (waiting on a person, no lease), SIGKILL a worker, the
        sweeper, or both, and start them again: nothing may recover (fail) a parked turn.
        Waits up to `wait` seconds for a parked turn."""
        deadline = time.monotonic() + wait
        parked: list[int] = []
        while True:
            with contextlib.suppress(Exception):
                parked = await sync_to_async(_parked_turns, thread_sensitive=True)()
            if parked or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        if not parked:
            return None
        worker = self.rng.choice(AppProcesses.WORKERS)
        targets = self.rng.choice([[worker], ["sweeper"], [worker, "sweeper"]])
        for name in targets:
            await asyncio.to_thread(self.apps.stop, name, signal.SIGKILL)
        self.parked_kills.append({"t": round(time.monotonic() - self.started, 2), "parked": parked,
                                  "killed": targets})  # fmt: skip
        await asyncio.sleep(self.rng.uniform(0.2, 2.0))
        for name in targets:
            self.apps.start(name)
        return {"parked": parked[:20], "parked_n": len(parked), "killed": targets}

    async def stop_worker_child(self, max_pause: float = 30.0) -> dict[str, Any] | None:
        """SIGSTOP a leased pool process past its lease, then SIGCONT it: a zombie that wakes up
        must not write (the checker proves it: chunks, texts and deltas all agree).

        It stays stopped at least LEASE_TIMEOUT + 2 s, and longer (up to `max_pause`) until its
        turn was taken over, so that waking up really tests the fence."""
        found = await self._leased_child()
        if found is None:
            return None
        turn_id, room_id, generation, pid, worker = found
        t0 = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        self._stopped_pids.add(pid)
        self.watch_recovery("stop_worker_child", turn_id, room_id, generation)
        state: tuple[str, int] | None = ("running", generation)
        sessions: list[dict[str, Any]] = []
        try:
            await asyncio.sleep(self.lease_timeout + 2 + self.rng.uniform(0.0, 1.5))
            with contextlib.suppress(Exception):  # evidence if nobody took the turn over yet
                if await sync_to_async(_turn_state, thread_sensitive=True)(turn_id) == state:
                    sessions = await asyncio.to_thread(self._sessions_with_owners)
            while time.monotonic() - t0 < max_pause:
                try:
                    state = await sync_to_async(_turn_state, thread_sensitive=True)(turn_id)
                except Exception:
                    state = ("running", generation)
                if state != ("running", generation):
                    break
                await asyncio.sleep(0.25)
            await asyncio.sleep(0.5)  # the new holder is writing now
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self._stopped_pids.discard(pid)
        return {
            "turn": turn_id,
            "room": room_id,
            "pid": pid,
            "worker": worker,
            "paused_s": round(time.monotonic() - t0, 2),
            "generation": generation,
            "after": state,
            "lease_taken_over": state != ("running", generation),
            # sessions of our database when the lease had expired but nobody had taken it over:
            # "idle in transaction" ones (the stopped process) and those waiting on their locks
            "busy_sessions_at_expiry": sessions,
        }

    async def stop_worker_in_txn(self) -> dict[str, Any] | None:
        """SIGSTOP a leased pool process while its database session is inside a transaction
        (so it holds a row lock: the turn's, between the lease renewal and the chunk INSERT, or
        the room's, while it takes or ends a turn), for LEASE_TIMEOUT + 2..4 s: a worker frozen at
        the worst moment (GC pause, VM freeze). Records how the rest of the system fares
        meanwhile: frames and pongs per second reaching all clients, sessions waiting on locks."""
        found = await self._leased_child()
        if found is None:
            return None
        pid, worker = found[3], found[4]
        before = self._frame_counts()
        await asyncio.sleep(3.0)
        rate_before = self._rates(before, 3.0)
        caught = await asyncio.to_thread(self._stop_inside_transaction, pid)
        if caught is None:
            return None  # never caught it inside a transaction (it is running again)
        t0 = time.monotonic()
        start = self._frame_counts()
        self._stopped_pids.add(pid)
        held = await self._turn_leased_by(pid)  # the turn it leases now (it may have moved on)
        if held is not None:
            self.watch_recovery("stop_worker_in_txn", *held)
        sessions: list[dict[str, Any]] = []
        try:
            await asyncio.sleep(self.lease_timeout + 2)
            with contextlib.suppress(Exception):
                sessions = await asyncio.to_thread(self._sessions_with_owners)
            await asyncio.sleep(self.rng.uniform(0.0, 2.0))
            during = self._rates(start, time.monotonic() - t0)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            self._stopped_pids.discard(pid)
        return {
            "turn": held[0] if held else None,
            "room": held[1] if held else None,
            "pid": pid,
            "worker": worker,
            "caught_in": caught,
            "paused_s": round(time.monotonic() - t0, 2),
            "per_s_before": rate_before,
            "per_s_during": during,
            "sessions_waiting_on_locks": sum(1 for x in sessions if x["waits_for"] == "Lock"),
            "busy_sessions_at_expiry": sessions,
        }

    def _sessions_with_owners(self) -> list[dict[str, Any]]:
        """`db.sessions()`, each named by the process of ours that holds it (web-a, worker-1...)."""
        import psutil

        pg_port = urlsplit(self.db.server_url).port or 5432
        owner: dict[int, str] = {}
        for name in self.apps.names():
            root = self.apps.pid(name)
            if root is None:
                continue
            with contextlib.suppress(psutil.Error):
                tree = psutil.Process(root)
                for proc in [tree, *tree.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        for conn in proc.net_connections(kind="tcp"):
                            if conn.raddr and conn.raddr.port == pg_port:
                                owner[conn.laddr.port] = f"{name}:{proc.pid}"
        sessions = self.db.sessions()
        for x in sessions:
            x["process"] = owner.get(int(x.pop("client_port") or 0), "?")
        return sessions

    def _frame_counts(self) -> list[int]:
        """Per client, how many frames it has received so far (their lists only grow)."""
        return [len(c.rc.frames) for c in self.clients]

    def _rates(self, start: list[int], seconds: float) -> dict[str, float]:
        """Frames, acks, and pongs per ASGI port, per second, received by all clients since
        `start` (a pong and an ack each need the ASGI process's database thread)."""
        counts: Counter[str] = Counter()
        for c, n in zip(self.clients, start, strict=True):
            new = c.rc.frames[n:]
            port = c.rc.ws_url.rsplit(":", 1)[-1]
            counts["frames"] += len(new)
            counts["acks"] += sum(1 for f in new if f.get("type") == "ack")
            counts[f"pongs@{port}"] += sum(1 for f in new if f.get("type") == "pong")
        per = max(seconds, 0.001)
        return {k: round(v / per, 1) for k, v in sorted(counts.items())}

    async def _turn_leased_by(self, pid: int) -> tuple[int, int, int] | None:
        """(turn, room, generation) of the running turn `pid` holds the lease of, if any."""
        try:
            turns = await sync_to_async(_running_turns, thread_sensitive=True)()
        except Exception:
            return None
        owner = f"{socket.gethostname()}:{pid}"
        for turn_id, room_id, lease_owner, generation in turns:
            if lease_owner == owner:
                return turn_id, room_id, generation
        return None

    def _stop_inside_transaction(self, pid: int, attempts: int = 300) -> str | None:
        """Stop `pid` at a moment its Postgres session is 'idle in transaction'; the query it
        last ran, or None (then it is left running)."""
        try:
            import psutil
        except ImportError:
            return None
        pg_port = urlsplit(self.db.server_url).port or 5432
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            return None
        ports = [c.laddr.port for c in conns if c.raddr and c.raddr.port == pg_port]
        if not ports:
            return None
        with self.db.admin() as conn:
            for _ in range(attempts):
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    return None
                row = conn.execute(
                    "SELECT state, left(query, 90) FROM pg_stat_activity WHERE datname = %s "
                    "AND client_port = ANY(%s) AND state = 'idle in transaction'",
                    [self.db.name, ports],
                ).fetchone()
                if row is not None:
                    return str(row[1])
                os.kill(pid, signal.SIGCONT)
                time.sleep(self.rng.uniform(0.002, 0.02))
        return None

    def watch_recovery(self, kind: str, turn_id: int, room_id: int, generation: int) -> None:
        """Measure how long the turn of a lost worker stays `running` under the lost lease."""
        task = asyncio.get_running_loop().create_task(self._watch(kind, turn_id, room_id, generation))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(
        self, kind: str, turn_id: int, room_id: int, generation: int, limit: float = 180
    ) -> None:
        t0 = time.monotonic()
        record: dict[str, Any] = {
            "kind": kind,
            "turn": turn_id,
            "room": room_id,
            "generation": generation,
            "t": round(t0 - self.started, 2),
            "latency_s": None,
            "after": None,
        }
        self.recoveries.append(record)
        while time.monotonic() - t0 < limit:
            try:
                state = await sync_to_async(_turn_state, thread_sensitive=True)(turn_id)
            except Exception:
                state = ("running", generation)  # the database is refusing us: ask again
            if state is None or state != ("running", generation):
                record["latency_s"] = round(time.monotonic() - t0, 2)
                record["after"] = state
                return
            await asyncio.sleep(0.2)

    async def wait_watchers(self, timeout: float) -> None:
        """Let the recovery watchers finish (they end once the turn moved on)."""
        if self._watchers:
            await asyncio.wait(set(self._watchers), timeout=timeout)
        for task in list(self._watchers):
            task.cancel()

    # --- service faults ---------------------------------------------------------------------

    async def restart_redis(self) -> dict[str, Any] | None:
        """SIGTERM our redis-server, leave it down a moment, start it again on the same port."""
        assert self.redis is not None
        await asyncio.to_thread(self.redis.stop, signal.SIGTERM)
        down = self.rng.uniform(0.3, 2.0)
        await asyncio.sleep(down)
        await self._start_redis()
        return {"port": self.redis.port, "down_s": round(down, 2)}

    async def _start_redis(self) -> None:
        assert self.redis is not None
        self.redis.start()  # main thread; returns once it answers PING (tens of ms)

    async def restart_asgi(self) -> dict[str, Any] | None:
        """Restart one Daphne: usually SIGTERM (sockets closed with 1012), sometimes SIGKILL."""
        name = self.rng.choice(AppProcesses.WEBS)
        sig = signal.SIGTERM if self.rng.random() < 0.7 else signal.SIGKILL
        await asyncio.to_thread(self.apps.stop, name, sig)
        down = self.rng.uniform(0.2, 1.5)
        await asyncio.sleep(down)
        self.apps.start(name, wait=False)
        await self._wait_port(self.apps.web_ports[name])
        return {"web": name, "signal": signal.Signals(sig).name, "down_s": round(down, 2)}

    async def _wait_port(self, port: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(port_open, port):
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {port} did not open")
            await asyncio.sleep(0.1)

    async def pg_refuse(self) -> dict[str, Any] | None:
        """Refuse connections to our database and end its sessions for 1-2 s."""
        hold = self.rng.uniform(1.0, 2.0)
        self._refusing = True
        try:
            ended = await asyncio.to_thread(self.db.refuse_connections)
            await asyncio.sleep(hold)
        finally:
            await asyncio.to_thread(self.db.allow_connections)
            self._refusing = False
        return {"sessions_ended": ended, "hold_s": round(hold, 2)}

    # --- client faults ----------------------------------------------------------------------

    async def drop_client(self) -> dict[str, Any] | None:
        live = [c for c in self.clients if c.connected]
        if not live:
            return None
        client = self.rng.choice(live)
        pause = self.rng.uniform(0.0, 3.0)
        await client.drop(pause)
        return {"client": client.spec.name, "reconnect_after_s": round(pause, 2)}

    async def pause_reads(self) -> dict[str, Any] | None:
        live = [c for c in self.clients if c.connected]
        if not live:
            return None
        client = self.rng.choice(live)
        seconds = self.rng.uniform(1.0, 5.0)
        if not client.pause_reads(seconds):
            return None
        return {"client": client.spec.name, "seconds": round(seconds, 2)}

    # --- settling ---------------------------------------------------------------------------

    async def restore(self) -> list[str]:
        """Undo whatever a fault left behind and make sure every process runs; what was fixed."""
        fixed = []
        for pid in list(self._stopped_pids):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            fixed.append(f"SIGCONT {pid}")
        self._stopped_pids.clear()
        await asyncio.to_thread(self.db.allow_connections)
        if self.redis is not None and not self.redis.running:
            await self._start_redis()
            fixed.append("redis")
        for name in self.apps.not_running():
            self.apps.start(name, wait=False)
            fixed.append(name)
        for port in self.apps.web_ports.values():
            await self._wait_port(port)
        return fixed

    def restore_sync(self) -> None:
        """Best effort on the way out (Ctrl-C): nothing stays stopped, the database opens."""
        for pid in list(self._stopped_pids):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self._stopped_pids.clear()
        if self._refusing:
            try:
                self.db.allow_connections()
            except Exception:
                pass
