"""Load benchmark of ONE Daphne process: N idle heartbeating sockets, then streamed answers.

    python -m bench.load [--sockets 1000] [--active 100] [--duration 60]     (or: make load)

Phases (all against a fresh database ``load_<pid>``, dropped at exit):

setup   users + API tokens + rooms (``--per-room`` sockets each, distinct users), Daphne, one
        Celery worker (threads, 16 turns at once, as `make run`), the sweeper, beat, the fake LLM.
idle    Daphne's RSS before; open every socket (``rooms.client.RoomClient``, a capped number of
        handshakes in flight so Twisted's listen backlog of 50 is never overrun) until ``ready``;
        every socket pings every ~10 s (jittered); hold; RSS after. Reported: sockets held (open,
        ready, answered a ping lately), connect-and-join rate, KiB per idle socket.
active  ``--active`` sockets (``--talkers-per-room`` per room, the others of those rooms listen)
        send ``--messages`` messages each at random times in the first half of ``--duration``;
        the fake LLM streams ``!tokens=60 !delay=20`` answers; everyone keeps heartbeating.
        Then: wait until every turn is finished in the database and the clients caught up.
verify  every socket's RoomState (built only from frames, synced by RoomClient on gaps) is
        compared with the database (Message.content/status of its room, Room.last_seq).
        ``gaps`` = frames found missing (a seq jump, a delta index jump, a pong ahead of the
        client), ``recoveries`` = `sync` frames sent. Deltas are also checked one by one against
        StreamChunk rows. Then every socket must still be open.

Prints one table; writes bench/results/load-<timestamp>.json. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import secrets
import signal
import statistics
import sys
import time
import traceback
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import psutil

from bench.load.clients import ProbeClient
from bench.load.stack import (
    NOFILE,
    ROOT,
    FreshDatabase,
    Processes,
    free_port,
    make_logdir,
    raise_nofile,
    service_urls,
)

RESULTS = ROOT / "bench" / "results"
KIB = 1024


# --- small helpers ----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def dist(values: list[float], scale: float = 1000.0) -> dict[str, Any]:
    """count, p50/p90/p99/max (in ms by default)."""
    out: dict[str, Any] = {"count": len(values)}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
        v = pct(values, q)
        out[name] = None if v is None else round(v * scale, 2)
    return out


def log(msg: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def find_postmaster(port: int) -> psutil.Process | None:
    """The PostgreSQL server process listening on `port` (root sees every process)."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return psutil.Process(conn.pid)
    return None


def postgres_cpu(postmaster: psutil.Process | None) -> float:
    """CPU seconds of the whole PostgreSQL server: postmaster, live backends, and the backends
    it already reaped (children_user/system): one backend per new connection."""
    if postmaster is None:
        return 0.0
    try:
        t = postmaster.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
    except psutil.Error:
        return 0.0
    for child in postmaster.children():
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return total


def calibrate_db_calls(n: int = 200) -> dict[str, Any]:
    """ms per Django query the way Channels' database_sync_to_async runs it (close_old_connections
    around the call), with this settings' CONN_MAX_AGE and with a persistent connection."""
    from django.db import close_old_connections, connection, connections

    from rooms.models import Room

    def one() -> None:
        close_old_connections()
        try:
            Room.objects.filter(pk=1).values_list("last_seq", flat=True).first()
        finally:
            close_old_connections()

    out: dict[str, Any] = {"conn_max_age": connection.settings_dict.get("CONN_MAX_AGE")}
    saved = connection.settings_dict.get("CONN_MAX_AGE")
    try:
        for label, age in (("as_configured", saved), ("persistent", None)):
            connection.settings_dict["CONN_MAX_AGE"] = age
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                one()
                times.append(time.perf_counter() - t0)
            mean = statistics.mean(times)
            out[label] = {"ms_mean": round(mean * 1000, 2), "ms_p99": round(pct(times, 0.99) * 1000, 2),
                          "calls_per_s_one_thread": round(1 / mean)}  # fmt: skip
    finally:
        connection.settings_dict["CONN_MAX_AGE"] = saved
        connections.close_all()
    return out


def process_tree_cpu(proc: psutil.Process | None) -> float:
    """CPU seconds (user+system) of a process and its children, 0 if it is gone."""
    if proc is None:
        return 0.0
    total = 0.0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


@dataclass
class Sock:
    """One planned socket: its room and user, then its client and outcomes."""

    idx: int
    room_idx: int
    room_id: int
    slug: str
    user_id: int
    token: str
    talker: bool = False
    client: ProbeClient | None = None
    connect_s: float | None = None
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Plan:
    sockets: list[Sock]
    warmup: list[Sock]
    rooms: dict[int, str]  # room id -> slug
    active_room_ids: list[int]


# --- setup (sync, Django) -------------------------------------------------------------------


def build_env(args: argparse.Namespace, urls: dict[str, str], db: FreshDatabase,
              llm_port: int) -> dict[str, str]:  # fmt: skip
    run = uuid.uuid4().hex[:8]
    env = {
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DATABASE_URL": db.url,
        "REDIS_URL": urls["REDIS_URL"],
        "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL") or urls["REDIS_URL"],
        "CELERY_QUEUE": f"load-{run}",
        "CHANNEL_PREFIX": f"load{run}",
        "LLM_PROVIDER": "openai",
        "LLM_BASE_URL": f"http://127.0.0.1:{llm_port}/v1",
        "LLM_API_KEY": "load-key",
        "LLM_MODEL": "fake-model",
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
        # as tests/stack.py: generous limits, this is a capacity test, not a limits test
        "RATE_FRAMES_PER_SECOND": "200",
        "RATE_MESSAGES_PER_MINUTE": "600",
        "RATE_QUEUED_TURNS_PER_ROOM": str(max(8, args.talkers_per_room * args.messages + 4)),
        "RATE_SYNCS_PER_MINUTE": "0",
        "SOCKETS_PER_USER": "0",  # a few users hold the thousand sockets
    }
    for item in args.server_env:  # experiments: e.g. --server-env CONN_MAX_AGE=60
        key, _, value = item.partition("=")
        env[key] = value
    if not args.debug:
        # production-like: DEBUG keeps every SQL query of a connection in memory (9000 max),
        # which would be counted as socket memory
        env["DEBUG"] = "false"
        env["SECRET_KEY"] = os.environ.get("SECRET_KEY") or "load-" + secrets.token_hex(24)
    return env


def create_data(args: argparse.Namespace) -> Plan:
    """Users (one per socket), a token each, rooms of `per_room` members (+ a warm-up room)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    from rooms.models import Membership
    from rooms.services import room_create, token_create

    User = get_user_model()
    n_rooms = math.ceil(args.sockets / args.per_room)
    n_users = args.sockets + args.warmup
    unusable = make_password(None)
    users = User.objects.bulk_create(
        [User(username=f"load-{i}", first_name=f"Load{i}", password=unusable) for i in range(n_users)]
    )
    tokens = [token_create(user=u, name="load")[1] for u in users]

    plan = Plan(sockets=[], warmup=[], rooms={}, active_room_ids=[])
    members = []
    for r in range(n_rooms + 1):  # the last room is the warm-up room
        idxs = (
            list(range(r * args.per_room, min(args.sockets, (r + 1) * args.per_room)))
            if r < n_rooms
            else list(range(args.sockets, n_users))
        )
        if not idxs:
            continue
        room = room_create(owner=users[idxs[0]], title=f"Load {'warmup' if r == n_rooms else r}")
        plan.rooms[room.pk] = room.slug
        members += [Membership(room=room, user=users[i]) for i in idxs[1:]]
        for i in idxs:
            sock = Sock(i, r, room.pk, room.slug, users[i].pk, tokens[i])
            (plan.warmup if r == n_rooms else plan.sockets).append(sock)
    Membership.objects.bulk_create(members)

    # talkers: `talkers_per_room` in each of the chosen rooms, the chosen rooms spread out
    n_active_rooms = math.ceil(args.active / args.talkers_per_room) if args.active else 0
    step = max(1, n_rooms // max(1, n_active_rooms))
    chosen = [r * step for r in range(n_active_rooms)]
    by_room: dict[int, list[Sock]] = defaultdict(list)
    for s in plan.sockets:
        by_room[s.room_idx].append(s)
    left = args.active
    for r in chosen:
        for s in by_room[r][: min(args.talkers_per_room, left)]:
            s.talker = True
            left -= 1
        plan.active_room_ids.append(by_room[r][0].room_id)
    return plan


def db_state(room_ids: list[int], active_ids: list[int]) -> dict[str, Any]:
    """The truth: per room last_seq, messages {id: (status, content)}, chunk keys; and the
    message counts and turns of the active rooms."""
    from django.db import connections

    from agents.models import Turn
    from rooms.models import Message, Room, StreamChunk

    try:
        active = set(active_ids)
        last_seq = dict(Room.objects.filter(pk__in=room_ids).values_list("pk", "last_seq"))
        messages: dict[int, dict[int, tuple[str, str]]] = defaultdict(dict)
        roles: Counter = Counter()
        statuses: Counter = Counter()
        for mid, rid, role, status, content in Message.objects.filter(room_id__in=room_ids).values_list(
            "pk", "room_id", "role", "status", "content"
        ):
            messages[rid][mid] = (status, content)
            if rid in active:
                roles[role] += 1
                statuses[f"{role}:{status}"] += 1
        chunks: dict[int, set[tuple[int, int]]] = defaultdict(set)
        for mid, rid, index in StreamChunk.objects.filter(message__room_id__in=room_ids).values_list(
            "message_id", "message__room_id", "index"
        ):
            chunks[rid].add((mid, index))
        turns = list(
            Turn.objects.filter(room_id__in=active_ids).values(
                "status", "created_at", "started_at", "finished_at", "attempt", "error"
            )
        )
        return {"last_seq": last_seq, "messages": messages, "chunks": chunks, "turns": turns,
                "roles": roles, "statuses": statuses}  # fmt: skip
    finally:
        connections.close_all()


def turns_pending(room_ids: list[int]) -> int:
    from django.db import connections

    from agents.models import Turn

    try:
        return Turn.objects.filter(room_id__in=room_ids, status__in=["queued", "running"]).count()
    finally:
        connections.close_all()


def wait_worker_ready(path: Any, proc: Any, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            if " ready." in path.read_text(errors="replace"):
                return True
        time.sleep(0.2)
    return False


def log_summary(path: Any) -> dict[str, Any]:
    """Tracebacks / errors / warnings in a process log, with the last few such lines."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    flagged = [
        ln for ln in lines
        if "Traceback" in ln or "ERROR" in ln or "WARNING" in ln or "Exception" in ln
    ]  # fmt: skip
    return {
        "lines": len(lines),
        "tracebacks": sum("Traceback" in ln for ln in lines),
        "errors": sum("ERROR" in ln for ln in lines),
        "warnings": sum("WARNING" in ln for ln in lines),
        "last_flagged": flagged[-8:],
    }


# --- the benchmark --------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.result: dict[str, Any] = {"args": vars(args).copy()}
        self.db: FreshDatabase | None = None
        self.procs: Processes | None = None
        self.fake: Any = None
        self.plan: Plan | None = None
        self.phase = ["setup"]
        self.marks: dict[str, dict[str, float]] = {}
        self.samples: list[dict[str, Any]] = []
        self.web: psutil.Process | None = None
        self.postmaster: psutil.Process | None = None
        self.worker: psutil.Process | None = None
        self.me = psutil.Process()
        self.base_url = ""
        self.env: dict[str, str] = {}

    # -- setup / teardown ---------------------------------------------------------------------

    def setup(self) -> None:
        a = self.args
        t0 = time.monotonic()
        self.result["nofile_driver"] = raise_nofile(NOFILE)
        urls = service_urls()
        self.db = FreshDatabase(urls["DATABASE_URL"])
        dropped = self.db.create()
        log(f"database {self.db.name} created (dropped leftovers: {dropped or 'none'})")
        llm_port = free_port()
        self.env = build_env(a, urls, self.db, llm_port)
        os.environ.update(self.env)

        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", interactive=False, verbosity=0)
        from django.db import connection, connections

        self.postmaster = find_postmaster(int(connection.settings_dict.get("PORT") or 5432))
        self.result["db_call_calibration"] = calibrate_db_calls()
        log(f"one DB call as Channels makes it: {self.result['db_call_calibration']}")

        self.plan = create_data(a)
        connections.close_all()
        log(f"{len(self.plan.sockets)} users/tokens in {len(self.plan.rooms) - 1} rooms "
            f"(+ warm-up room), {sum(s.talker for s in self.plan.sockets)} talkers in "
            f"{len(self.plan.active_room_ids)} rooms; {time.monotonic() - t0:.1f}s")  # fmt: skip

        # children before any thread of ours exists (preexec_fn is not thread-safe)
        self.procs = Processes(
            env={**os.environ, **self.env}, port=free_port(), logdir=make_logdir(),
            concurrency=a.concurrency,
        )  # fmt: skip
        self.result["logdir"] = str(self.procs.logdir)
        started = self.procs.start_all()
        web, worker = started["web"], started["worker"]
        self.web = psutil.Process(web.pid)
        self.worker = psutil.Process(worker.pid)
        self.base_url = f"http://127.0.0.1:{self.procs.port}"
        self.result["daphne"] = {
            "pid": web.pid,
            "nofile": list(self.web.rlimit(psutil.RLIMIT_NOFILE)),
            "listen_backlog": 1024,  # the supervisor's listening socket (stack.supervisor)
        }

        from tests.fakellm import FakeLLM

        self.fake = FakeLLM(port=llm_port, delay=a.token_delay_ms / 1000, tokens=a.tokens).start()
        if not wait_worker_ready(self.procs.log_path("worker"), worker):
            raise RuntimeError(f"the Celery worker did not start; see {self.procs.log_path('worker')}")
        log(f"stack up: daphne pid {web.pid} on {self.base_url}, worker pid {worker.pid}, "
            f"fake LLM {self.fake.base_url}; logs in {self.procs.logdir}")  # fmt: skip

    def teardown(self) -> None:
        if self.procs is not None:
            for name in ("web", "worker", "beat"):
                self.result.setdefault("logs", {})[name] = log_summary(self.procs.log_path(name))
            self.result["supervisor_exit_code"] = self.procs.stop_all()
            with contextlib.suppress(OSError):
                for p in self.procs.logdir.glob("beat-schedule*"):
                    p.unlink()
        if self.fake is not None:
            with contextlib.suppress(Exception):
                self.result["fake_llm"] = self.fake.stats()
            self.fake.stop()
        if self.env.get("CELERY_QUEUE"):
            with contextlib.suppress(Exception):
                import redis

                r = redis.Redis.from_url(self.env["REDIS_URL"])
                q = self.env["CELERY_QUEUE"]
                r.delete(q, f"_kombu.binding.{q}")
                r.close()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if self.db is not None:
            try:
                self.db.drop()
                log(f"database {self.db.name} dropped")
            except Exception as exc:
                log(f"could not drop {self.db.name}: {exc}")

    # -- measurements ----------------------------------------------------------------------

    def mark(self, name: str) -> None:
        sys_t = psutil.cpu_times()
        self.marks[name] = {
            "t": time.monotonic(),
            "web_cpu": process_tree_cpu(self.web),
            "worker_cpu": process_tree_cpu(self.worker),
            "driver_cpu": sum(self.me.cpu_times()[:2]),
            "postgres_cpu": postgres_cpu(self.postmaster),
            "machine_cpu": sum(sys_t) - sys_t.idle - getattr(sys_t, "iowait", 0.0),
            "load1": os.getloadavg()[0],
        }

    def cpu_between(self, a: str, b: str) -> dict[str, float]:
        """CPU % (100 = one core) of each process over a phase; `machine` is every process of
        the host (other work on the machine shows as machine - the rest)."""
        m0, m1 = self.marks[a], self.marks[b]
        wall = max(1e-9, m1["t"] - m0["t"])
        out = {
            "seconds": round(wall, 1),
            **{
                f"{k}_pct": round(100 * (m1[k] - m0[k]) / wall, 1)
                for k in ("web_cpu", "worker_cpu", "driver_cpu", "postgres_cpu", "machine_cpu")
            },
            "load1_end": round(m1["load1"], 2),
        }
        out["other_cpu_pct"] = round(
            out["machine_cpu_pct"] - out["web_cpu_pct"] - out["worker_cpu_pct"]
            - out["driver_cpu_pct"] - out["postgres_cpu_pct"], 1
        )  # fmt: skip
        return out

    def rss(self) -> int:
        assert self.web is not None
        return self.web.memory_info().rss

    def pong_timeline(self, socks: list[Sock], bucket: float = 10.0) -> list[dict[str, Any]]:
        """Pong latency per `bucket` seconds since the start: p50/p99 ms, count, phase."""
        t0 = self.marks["start"]["t"]
        by: dict[int, list[float]] = defaultdict(list)
        phase: dict[int, str] = {}
        for s in socks:
            if s.client is None:
                continue
            for ph, lat, at in s.client.pongs:
                b = int((at - t0) // bucket)
                by[b].append(lat)
                phase[b] = ph
        return [
            {"t": b * bucket, "phase": phase[b], "n": len(v),
             "p50_ms": round(pct(v, 0.5) * 1000, 1), "p99_ms": round(pct(v, 0.99) * 1000, 1)}
            for b, v in sorted(by.items())
        ]  # fmt: skip

    async def presence_entries(self) -> int | None:
        """Presence hash entries of our sockets (channel names carry our CHANNEL_PREFIX)."""
        assert self.plan is not None
        prefix = self.env["CHANNEL_PREFIX"].encode()
        room_ids = list(self.plan.rooms)

        def query() -> int:
            import redis

            r = redis.Redis.from_url(self.env["REDIS_URL"])
            try:
                pipe = r.pipeline()
                for rid in room_ids:
                    pipe.hkeys(f"chat:presence:{rid}")
                return sum(1 for keys in pipe.execute() for k in keys if k.startswith(prefix))
            finally:
                r.close()

        try:
            return await asyncio.to_thread(query)
        except Exception:
            return None

    async def rss_settled(self, n: int = 5, every: float = 0.4) -> dict[str, Any]:
        values = []
        for _ in range(n):
            values.append(self.rss())
            await asyncio.sleep(every)
        assert self.web is not None
        full = await asyncio.to_thread(self.web.memory_full_info)
        return {"rss": int(statistics.median(values)), "uss": full.uss,
                "threads": self.web.num_threads(), "fds": self.web.num_fds()}  # fmt: skip

    async def loop_lag(self) -> None:
        """The driver's own event-loop lag: if it stays small, latencies are the server's."""
        self.lags: list[float] = []
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(0.1)
            self.lags.append(time.monotonic() - t0 - 0.1)

    async def sampler(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                assert self.web is not None
                self.samples.append({
                    "t": round(time.monotonic() - self.marks["start"]["t"], 1),
                    "phase": self.phase[0], "rss": self.rss(), "fds": self.web.num_fds(),
                    "open": self.open_count(),
                })  # fmt: skip
            await asyncio.sleep(1.0)

    def open_count(self) -> int:
        assert self.plan is not None
        return sum(1 for s in self.plan.sockets if s.client is not None and s.client.is_open)

    async def pubsub_numbers(self) -> dict[str, Any]:
        def query() -> dict[str, Any]:
            import redis

            r = redis.Redis.from_url(self.env["REDIS_URL"])
            try:
                prefix = self.env["CHANNEL_PREFIX"]
                chans = r.pubsub_channels(f"{prefix}*")
                groups = sum(b"__group__" in c for c in chans)
                clients = r.info("clients")
                return {"channels": len(chans), "group_channels": groups,
                        "specific_channels": len(chans) - groups,
                        "redis_connected_clients": clients.get("connected_clients"),
                        "sample": sorted(c.decode() for c in chans)[:4]}  # fmt: skip
            finally:
                r.close()

        try:
            return await asyncio.to_thread(query)
        except Exception as exc:
            return {"error": str(exc)}

    # -- sockets -----------------------------------------------------------------------------

    async def connect_one(self, s: Sock, sem: asyncio.Semaphore, pacer: list[float],
                          heartbeats: list[asyncio.Task[None]]) -> None:  # fmt: skip
        a = self.args
        async with sem:
            for attempt in range(1, a.connect_retries + 2):
                if a.connect_rate > 0:  # at most connect_rate handshakes started per second
                    now = time.monotonic()
                    slot = max(now, pacer[0])
                    pacer[0] = slot + 1.0 / a.connect_rate
                    await asyncio.sleep(slot - now)
                client = ProbeClient(self.base_url, s.slug, s.token, self.phase)
                t0 = time.monotonic()
                s.attempts = attempt
                try:
                    await client.connect(timeout=a.connect_timeout)
                except Exception as exc:
                    s.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    with contextlib.suppress(Exception):
                        await client.drop()
                    await asyncio.sleep(0.5 * attempt)
                    continue
                s.connect_s = time.monotonic() - t0
                s.client = client
                heartbeats.append(asyncio.create_task(self.heartbeat(client)))
                return

    async def heartbeat(self, client: ProbeClient) -> None:
        a = self.args
        await asyncio.sleep(random.uniform(0, a.ping_interval))
        while client.is_open:
            await client.heartbeat()
            await asyncio.sleep(a.ping_interval * random.uniform(0.8, 1.2))

    async def close_race(self, n: int) -> None:
        """Leave right after a ping, `n` times (warm-up users): the server answers the ping on a
        closed socket. Afterwards no socket is open, so every subscription left is a leak."""
        assert self.plan is not None and self.procs is not None
        web_log = self.procs.log_path("web")
        marker = "Attempt to send on a closed protocol"
        exc_before = web_log.read_text(errors="replace").count(marker)
        before = await self.pubsub_numbers()
        done = 0
        for i in range(n):
            s = self.plan.warmup[i % len(self.plan.warmup)]
            c = ProbeClient(self.base_url, s.slug, s.token, self.phase)
            with contextlib.suppress(Exception):
                await c.connect(timeout=self.args.connect_timeout)
                await c.ping()
                await c.close()
                done += 1
        await asyncio.sleep(15.0)  # longer than Daphne's application_close_timeout (10 s)
        after = await self.pubsub_numbers()
        self.result["close_race"] = {
            "sockets": done,
            "server_exceptions": web_log.read_text(errors="replace").count(marker) - exc_before,
            "subscriptions_before": before.get("channels"),
            "subscriptions_after_15s": after.get("channels"),
            "group_subscriptions_after_15s": after.get("group_channels"),
            "sample": after.get("sample"),
        }
        log(f"close race: {self.result['close_race']}")

    async def warm_up(self) -> None:
        """Touch every code path once (imports, Redis and DB connections), then close."""
        assert self.plan is not None
        clients = []
        for s in self.plan.warmup:
            c = ProbeClient(self.base_url, s.slug, s.token, self.phase)
            with contextlib.suppress(Exception):
                await c.connect(timeout=self.args.connect_timeout)
                clients.append(c)
        for c in clients:
            await c.heartbeat()
        await asyncio.sleep(1.0)
        if clients:
            frame, _ = await clients[0].post("warm-up !tokens=3 !delay=1")
            self.result["warmup_ack"] = frame
            await asyncio.sleep(3.0)
        for c in clients:
            await c.close()
        self.result["warmup_sockets"] = len(clients)
        await asyncio.sleep(3.0)

    # -- phases ------------------------------------------------------------------------------

    async def drive(self) -> None:
        a, plan = self.args, self.plan
        assert plan is not None and self.db is not None
        self.mark("start")
        sampler = asyncio.create_task(self.sampler())
        lagger = asyncio.create_task(self.loop_lag())
        heartbeats: list[asyncio.Task[None]] = []
        try:
            await self.warm_up()
            before = await self.rss_settled()
            pg0 = await asyncio.to_thread(self.db.pg_stats)

            # ---- idle: connect every socket, hold them ----
            self.phase[0] = "connect"
            log(
                f"connecting {len(plan.sockets)} sockets ({a.connect_concurrency} in flight"
                + (f", <= {a.connect_rate}/s" if a.connect_rate else "")
                + ")"
            )
            sem = asyncio.Semaphore(a.connect_concurrency)
            pacer = [time.monotonic()]
            self.mark("connect")
            await asyncio.gather(*(self.connect_one(s, sem, pacer, heartbeats) for s in plan.sockets))
            self.mark("connected")
            connected = [s for s in plan.sockets if s.client is not None]
            wall = self.marks["connected"]["t"] - self.marks["connect"]["t"]
            log(f"{len(connected)}/{len(plan.sockets)} ready in {wall:.1f}s "
                f"({len(connected) / wall:.0f}/s); holding {a.hold:.0f}s")  # fmt: skip
            pg1 = await asyncio.to_thread(self.db.pg_stats)

            self.phase[0] = "idle"
            self.mark("idle")
            await asyncio.sleep(a.hold)
            after = await self.rss_settled()
            self.mark("idle_end")
            now = time.monotonic()
            fresh = 2.5 * a.ping_interval
            held = [
                s for s in connected
                if s.client and s.client.is_open and s.client.ready.is_set()
                and s.client.last_pong is not None and now - s.client.last_pong <= fresh
            ]  # fmt: skip
            pg2 = await asyncio.to_thread(self.db.pg_stats)
            pubsub = await self.pubsub_numbers()
            n = max(1, len(connected))
            connect_times = [s.connect_s for s in connected if s.connect_s is not None]
            self.result["idle"] = {
                "sockets_requested": len(plan.sockets),
                "sockets_ready": len(connected),
                "sockets_held": len(held),
                "connect_failures": sum(1 for s in plan.sockets if s.client is None),
                "connect_retries": sum(max(0, s.attempts - 1) for s in connected),
                "connect_errors": Counter(e.split(":")[0] for s in plan.sockets for e in s.errors),
                "connect_error_samples": [e for s in plan.sockets for e in s.errors][:5],
                "connect_wall_s": round(wall, 2),
                "connect_rate_per_s": round(len(connected) / wall, 1),
                "connect_to_ready_ms": dist(connect_times),
                "rss_before": before,
                "rss_after": after,
                "kib_per_idle_socket": round((after["rss"] - before["rss"]) / n / KIB, 1),
                "uss_kib_per_idle_socket": round((after["uss"] - before["uss"]) / n / KIB, 1),
                "fds_per_socket": round((after["fds"] - before["fds"]) / n, 2),
                "hold_s": a.hold,
                "pong_ms": dist([lat for s in connected for ph, lat, _ in s.client.pongs if ph == "idle"]),
                "cpu_connect": self.cpu_between("connect", "connected"),
                "cpu_idle": self.cpu_between("idle", "idle_end"),
                "pg_sessions_connect": _diff(pg0, pg1, "sessions"),
                "pg_sessions_idle_hold": _diff(pg1, pg2, "sessions"),
                "pg_backends_now": pg2.get("backends"),
                "pings_idle": sum(1 for s in connected for ph, _, _ in s.client.pongs if ph == "idle"),
                "pings_sent_idle_per_s": round(len(connected) / a.ping_interval, 1),
                "pg_sessions_per_s_idle": (
                    round(
                        _diff(pg1, pg2, "sessions")
                        / max(1e-9, self.marks["idle_end"]["t"] - self.marks["connected"]["t"]),
                        1,
                    )
                    if _diff(pg1, pg2, "sessions") is not None
                    else None
                ),  # fmt: skip
                "daphne_threads": after["threads"],
                "redis_pubsub": pubsub,
            }
            log(f"idle: held {len(held)}/{len(plan.sockets)}, RSS {before['rss'] / 2**20:.1f} -> "
                f"{after['rss'] / 2**20:.1f} MiB = "
                f"{self.result['idle']['kib_per_idle_socket']} KiB/socket")  # fmt: skip

            # ---- active: talkers post, answers stream, everyone heartbeats ----
            if a.active:
                await self.active_phase(plan)

            # ---- end: every socket still open? then close them all ----
            self.phase[0] = "end"
            still_open = self.open_count()
            closed = Counter(s.client.close_code for s in connected if s.client and not s.client.is_open)
            self.result["end"] = {"sockets_open": still_open, "sockets_expected": len(plan.sockets),
                                  "closed_codes": {str(k): v for k, v in closed.items()}}  # fmt: skip
            for t in heartbeats:
                t.cancel()
            log("closing every socket")
            self.mark("close")
            sem = asyncio.Semaphore(100)

            async def close(c: ProbeClient) -> None:
                async with sem:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(c.close(), 15)

            await asyncio.gather(*(close(s.client) for s in connected if s.client))
            self.mark("closed")
            await asyncio.sleep(5.0)
            self.result["end"]["rss_after_close"] = await self.rss_settled()
            self.result["end"]["close_wall_s"] = round(
                self.marks["closed"]["t"] - self.marks["close"]["t"], 2
            )
            pg3 = await asyncio.to_thread(self.db.pg_stats)
            self.result["end"]["pg_sessions_total"] = pg3.get("sessions")
            # every socket is closed: no subscription or presence entry of ours should be left
            settle: list[dict[str, Any]] = []
            t_closed = self.marks["closed"]["t"]
            while True:
                ps = await self.pubsub_numbers()
                entry = {"t": round(time.monotonic() - t_closed, 1), **ps,
                         "presence_entries": await self.presence_entries(),
                         "rss": self.rss()}  # fmt: skip
                settle.append(entry)
                done = not ps.get("channels") and not entry["presence_entries"]
                if done or time.monotonic() - t_closed > a.settle:
                    break
                await asyncio.sleep(5.0)
            self.result["end"]["after_close"] = settle
            self.result["end"]["redis_pubsub_after_close"] = settle[-1]
            if a.close_race:
                await self.close_race(a.close_race)
        finally:
            sampler.cancel()
            lagger.cancel()
            self.result["driver_loop_lag_ms"] = dist(getattr(self, "lags", []))
            for t in heartbeats:
                t.cancel()
            # on Ctrl-C / errors: drop whatever is still open (no handshake wait)
            for s in plan.sockets:
                if s.client is not None and s.client.is_open:
                    with contextlib.suppress(Exception):
                        s.client.ws.transport.abort()
            self.result["rss_timeline"] = _thin(self.samples, 240)

    async def active_phase(self, plan: Plan) -> None:
        a = self.args
        assert self.db is not None
        talkers = [s for s in plan.sockets if s.talker and s.client is not None]
        room_ids = list(plan.rooms)
        active_set = set(plan.active_room_ids)
        listeners = [s for s in plan.sockets if s.room_id in active_set and s.client is not None]
        self.phase[0] = "active"
        self.mark("active")
        pg0 = await asyncio.to_thread(self.db.pg_stats)
        window = a.duration / 2
        log(f"active: {len(talkers)} talkers x {a.messages} messages in {len(active_set)} rooms "
            f"over {window:.0f}s (phase >= {a.duration:.0f}s); "
            f"{len(listeners) - len(talkers)} listeners in those rooms")  # fmt: skip
        acks: list[float] = []
        send_errors: Counter = Counter()
        t_start = time.monotonic()

        async def talk(s: Sock) -> None:
            offsets = sorted(random.uniform(0, window) for _ in range(a.messages))
            for k, off in enumerate(offsets):
                await asyncio.sleep(max(0.0, t_start + off - time.monotonic()))
                assert s.client is not None
                if not s.client.is_open:
                    send_errors["socket_closed"] += 1
                    return
                content = (f"load question {k + 1} from socket {s.idx} "
                           f"!tokens={a.tokens} !delay={a.token_delay_ms}")  # fmt: skip
                frame, waited = await s.client.post(content, timeout=30)
                if frame is None:
                    send_errors["ack_timeout"] += 1
                elif frame["type"] == "ack":
                    acks.append(waited)
                else:
                    send_errors[frame.get("code", "error")] += 1

        await asyncio.gather(*(talk(s) for s in talkers))
        await asyncio.sleep(max(0.0, t_start + a.duration - time.monotonic()))
        sent_s = time.monotonic() - t_start

        # drain: every turn finished in the database
        drain_deadline = time.monotonic() + a.drain_timeout
        pending = await asyncio.to_thread(turns_pending, plan.active_room_ids)
        while pending and time.monotonic() < drain_deadline:
            await asyncio.sleep(1.0)
            pending = await asyncio.to_thread(turns_pending, plan.active_room_ids)
        drained_s = time.monotonic() - t_start
        log(f"active: sends done after {sent_s:.0f}s, turns drained after {drained_s:.0f}s "
            f"({pending} still pending)")  # fmt: skip
        self.mark("drained")

        # convergence: clients caught up with the database (RoomClient syncs by itself)
        truth = await asyncio.to_thread(db_state, room_ids, plan.active_room_ids)
        conv_deadline = time.monotonic() + a.converge_timeout
        while time.monotonic() < conv_deadline:
            if all(_caught_up(s, truth) for s in plan.sockets if s.client and s.client.is_open):
                break
            await asyncio.sleep(0.2)
        converged_s = time.monotonic() - t_start
        truth = await asyncio.to_thread(db_state, room_ids, plan.active_room_ids)

        checked = [s for s in plan.sockets if s.client is not None]
        divergent = [s for s in checked if _diverges(s, truth)]
        stale_first = [s for s in divergent if _stale(s, truth)]
        undetected = [s for s in divergent if s.client and s.client.syncs == 0]
        # one more chance: an explicit sync, as a reconnecting client would do
        for s in divergent:
            if s.client and s.client.is_open:
                await s.client.sync()
        forced_deadline = time.monotonic() + 10
        still = divergent
        while still and time.monotonic() < forced_deadline:
            await asyncio.sleep(0.2)
            still = [s for s in divergent if _diverges(s, truth)]
        self.mark("verified")
        stale = [s for s in still if _stale(s, truth)]

        # deltas: each StreamChunk of the room must have reached each socket of the room
        expected = delivered = missing = dups = frames = covered = 0
        missing_by_socket: dict[int, int] = {}
        for s in listeners:
            assert s.client is not None
            keys = truth["chunks"].get(s.room_id, set())
            got = s.client.delta_keys & keys
            lost = s.client.deltas_missing(keys)
            expected += len(keys)
            delivered += len(got)
            covered += len(keys) - len(got) - len(lost)
            frames += s.client.deltas
            dups += s.client.delta_dups
            if lost:
                missing_by_socket[s.idx] = len(lost)
            missing += len(lost)

        # frames still on their way? wait a little for the missing deltas (late, not lost)
        late_deadline = time.monotonic() + (a.late_wait if missing else 0)
        while time.monotonic() < late_deadline:
            await asyncio.sleep(1.0)
            if not any(s.client.deltas_missing(truth["chunks"].get(s.room_id, set()))
                       for s in listeners if s.client):  # fmt: skip
                break
        missing_after_wait = sum(
            len(s.client.deltas_missing(truth["chunks"].get(s.room_id, set())))
            for s in listeners if s.client
        )  # fmt: skip
        still_late = [s for s in still if _diverges(s, truth)]

        gaps: Counter = Counter()
        for s in checked:
            assert s.client is not None
            gaps.update(s.client.state.gaps)  # type: ignore[attr-defined]
        syncs = sum(s.client.syncs for s in checked if s.client)
        synced_sockets = sum(1 for s in checked if s.client and s.client.syncs)
        gap_samples = [
            {"socket": s.idx, **g}
            for s in checked if s.client
            for g in s.client.state.gap_log  # type: ignore[attr-defined]
        ][:12]  # fmt: skip
        turns = truth["turns"]
        tstat = Counter(t["status"] for t in turns)
        waits = [(t["started_at"] - t["created_at"]).total_seconds() for t in turns if t["started_at"]]
        runs = [
            (t["finished_at"] - t["started_at"]).total_seconds()
            for t in turns if t["started_at"] and t["finished_at"]
        ]  # fmt: skip
        e2e = [(t["finished_at"] - t["created_at"]).total_seconds() for t in turns if t["finished_at"]]
        span = None
        if turns and all(t["finished_at"] for t in turns):
            first = min(t["created_at"] for t in turns)
            span = (max(t["finished_at"] for t in turns) - first).total_seconds()
        pg1 = await asyncio.to_thread(self.db.pg_stats)
        pongs = [lat for s in checked if s.client for ph, lat, _ in s.client.pongs if ph == "active"]
        lost_pongs = sum(
            1 for s in checked if s.client and s.client.is_open
            for t0 in s.client.pings if time.monotonic() - t0 > 5
        )  # fmt: skip
        client_errors = Counter(e.get("code") for s in checked if s.client for e in s.client.errors)
        self.result["active"] = {
            "talkers": len(talkers),
            "active_rooms": len(active_set),
            "listeners_in_active_rooms": len(listeners) - len(talkers),
            "messages_sent": len(acks) + sum(send_errors.values()),
            "messages_acked": len(acks),
            "send_errors": dict(send_errors),
            "ack_ms": dist(acks),
            "db_messages": dict(truth["roles"]),
            "db_message_statuses": dict(truth["statuses"]),
            "turns": dict(tstat),
            "turn_attempts_gt1": sum(1 for t in turns if (t["attempt"] or 0) > 1),
            "turn_errors": Counter(t["error"] for t in turns if t["error"]).most_common(5),
            "turn_queue_wait_s": dist(waits, 1.0),
            "turn_run_s": dist(runs, 1.0),
            "turn_end_to_end_s": dist(e2e, 1.0),
            "turns_per_s": round(tstat.get("done", 0) / span, 2) if span else None,
            "turns_pending_at_drain_timeout": pending,
            "send_window_s": round(window, 1),
            "phase_s": {
                "sends_done": round(sent_s, 1),
                "drained": round(drained_s, 1),
                "converged": round(converged_s, 1),
            },  # fmt: skip
            "deltas_expected": expected,
            "deltas_delivered": delivered,
            "deltas_covered_by_snapshot": covered,
            "deltas_missing": missing,
            "deltas_missing_after_late_wait": missing_after_wait,
            "late_wait_s": a.late_wait if missing else 0,
            "delta_frames_received": frames,
            "delta_duplicates": dups,
            "missing_deltas_by_socket": dict(list(missing_by_socket.items())[:20]),
            "gaps_detected": dict(gaps),
            "gaps_total": sum(gaps.values()),
            "gap_samples": gap_samples,
            "recoveries_sync_sent": syncs,
            "sockets_that_synced": synced_sockets,
            "sockets_checked": len(checked),
            "sockets_divergent_before_forced_sync": len(divergent),
            "sockets_divergent_undetected": len(undetected),
            "sockets_divergent_after_convergence": len(still),
            "sockets_divergent_stale_first_check": len(stale_first),
            "sockets_divergent_stale": len(stale),
            "sockets_divergent_wrong": len(still) - len(stale),
            "sockets_divergent_after_late_wait": len(still_late),
            "divergent_samples": [_divergence(s, truth) for s in still[:5]],
            "pong_ms": dist(pongs),
            "pongs_lost": lost_pongs,
            "pong_timeline": self.pong_timeline(checked),
            "client_error_codes": dict(client_errors),
            "cpu": self.cpu_between("active", "drained"),
            "pg_sessions_active": _diff(pg0, pg1, "sessions"),
        }
        act = self.result["active"]
        log(f"active: {act['messages_acked']} acked, turns {dict(tstat)}, deltas "
            f"{delivered}/{expected}, gaps {dict(gaps)}, syncs {syncs}, divergent after "
            f"convergence {len(still)}, pong p99 {act['pong_ms']['p99']} ms")  # fmt: skip


def _diff(a: dict[str, Any], b: dict[str, Any], key: str) -> int | None:
    if a.get(key) is None or b.get(key) is None:
        return None
    return int(b[key]) - int(a[key])


def _thin(samples: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    if len(samples) <= keep:
        return samples
    step = len(samples) / keep
    return [samples[int(i * step)] for i in range(keep)] + [samples[-1]]


def _caught_up(s: Sock, truth: dict[str, Any]) -> bool:
    assert s.client is not None
    st = s.client.state
    return st.last_seq >= truth["last_seq"].get(s.room_id, 0) and not any(
        m.status == "streaming" for m in st.messages.values()
    )


def _stale(s: Sock, truth: dict[str, Any]) -> bool:
    """Behind (frames not arrived yet), as opposed to wrong: last_seq short of the room's, or
    a message still streaming."""
    return not _caught_up(s, truth)


def _diverges(s: Sock, truth: dict[str, Any]) -> bool:
    assert s.client is not None
    st = s.client.state
    mine = {mid: (m.status, m.content) for mid, m in st.messages.items()}
    return mine != truth["messages"].get(s.room_id, {}) or st.last_seq != truth["last_seq"].get(s.room_id, 0)


def _divergence(s: Sock, truth: dict[str, Any]) -> dict[str, Any]:
    assert s.client is not None
    st = s.client.state
    mine = {mid: (m.status, m.content) for mid, m in st.messages.items()}
    theirs = truth["messages"].get(s.room_id, {})
    diff = [
        {"message_id": mid, "client": mine.get(mid), "db": theirs.get(mid)}
        for mid in sorted(set(mine) | set(theirs)) if mine.get(mid) != theirs.get(mid)
    ]  # fmt: skip
    return {"socket": s.idx, "room_id": s.room_id, "open": s.client.is_open,
            "client_last_seq": st.last_seq, "db_last_seq": truth["last_seq"].get(s.room_id),
            "messages": diff[:3]}  # fmt: skip


# --- report -------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    return "-" if v is None else str(v)


def table(r: dict[str, Any]) -> str:
    idle, act, end = r.get("idle", {}), r.get("active", {}), r.get("end", {})
    mib = 2**20
    rows: list[tuple[str, str]] = []

    def add(k: str, v: Any) -> None:
        rows.append((k, _fmt(v)))

    if idle:
        add("sockets requested / held", f"{idle['sockets_requested']} / {idle['sockets_held']}"
            f"  (ready {idle['sockets_ready']}, failed {idle['connect_failures']}, "
            f"retried {idle['connect_retries']})")  # fmt: skip
        ct = idle["connect_to_ready_ms"]
        add(
            "connect+join rate",
            f"{idle['connect_rate_per_s']} sockets/s to ready "
            f"(p50 {ct['p50']} ms, p99 {ct['p99']} ms, {r['args']['connect_concurrency']} in flight)",
        )
        b, a_ = idle["rss_before"], idle["rss_after"]
        add("Daphne RSS before / after", f"{b['rss'] / mib:.1f} MiB / {a_['rss'] / mib:.1f} MiB "
            f"(USS {b['uss'] / mib:.1f} / {a_['uss'] / mib:.1f})")  # fmt: skip
        add(
            "KiB per idle socket",
            f"{idle['kib_per_idle_socket']} RSS "
            f"({idle['uss_kib_per_idle_socket']} USS), {idle['fds_per_socket']} fds",
        )
        add(
            "pong latency idle",
            f"p50 {idle['pong_ms']['p50']} ms, p99 {idle['pong_ms']['p99']} ms "
            f"(n={idle['pong_ms']['count']})",
        )
        add(
            "Daphne CPU connect / idle",
            f"{idle['cpu_connect']['web_cpu_pct']}% / "
            f"{idle['cpu_idle']['web_cpu_pct']}% (threads {idle.get('daphne_threads')}); "
            f"other work on the host {idle['cpu_idle']['other_cpu_pct']}%",
        )
        add(
            "DB connections idle",
            f"{idle.get('pg_sessions_per_s_idle')} new PG sessions/s for "
            f"{idle.get('pings_sent_idle_per_s')} pings/s",
        )
    if act:
        add(
            "active sockets (rooms)",
            f"{act['talkers']} talkers + {act['listeners_in_active_rooms']} "
            f"listeners in {act['active_rooms']} rooms",
        )
        add(
            "messages",
            f"{act['messages_acked']} acked of {act['messages_sent']} sent "
            f"(errors {act['send_errors'] or 0}); turns {act['turns']}",
        )
        add(
            "turn queue wait / run",
            f"p50 {act['turn_queue_wait_s']['p50']} s, p99 "
            f"{act['turn_queue_wait_s']['p99']} s / p50 {act['turn_run_s']['p50']} s; "
            f"{act['turns_per_s']} turns/s",
        )
        add(
            "deltas delivered",
            f"{act['deltas_delivered']} / {act['deltas_expected']} expected "
            f"(+{act['deltas_covered_by_snapshot']} in snapshots; missing {act['deltas_missing']}, "
            f"after {act['late_wait_s']}s more: "
            f"{act['deltas_missing_after_late_wait']}, dup {act['delta_duplicates']})",
        )
        add(
            "gaps (frames lost)",
            f"{act['gaps_total']} {act['gaps_detected'] or ''}; recovered by "
            f"{act['recoveries_sync_sent']} sync on {act['sockets_that_synced']} sockets",
        )
        add(
            "divergent clients",
            f"{act['sockets_divergent_after_convergence']} after convergence "
            f"of {act['sockets_checked']} (stale {act['sockets_divergent_stale']}, wrong "
            f"{act['sockets_divergent_wrong']}; before forced sync "
            f"{act['sockets_divergent_before_forced_sync']}, never synced "
            f"{act['sockets_divergent_undetected']}; after late wait "
            f"{act['sockets_divergent_after_late_wait']})",
        )
        add(
            "pong latency under load",
            f"p50 {act['pong_ms']['p50']} ms, p99 {act['pong_ms']['p99']} ms,"
            f" max {act['pong_ms']['max']} ms (n={act['pong_ms']['count']}, lost {act['pongs_lost']})",
        )
        c = act["cpu"]
        add(
            "CPU active daphne/worker/pg/driver/other",
            f"{c['web_cpu_pct']}% / {c['worker_cpu_pct']}% / "
            f"{c['postgres_cpu_pct']}% / {c['driver_cpu_pct']}% / {c['other_cpu_pct']}% "
            f"(load1 {c['load1_end']})",
        )
    if r.get("driver_loop_lag_ms"):
        lag = r["driver_loop_lag_ms"]
        add("driver event-loop lag", f"p50 {lag['p50']} ms, p99 {lag['p99']} ms, max {lag['max']} ms")
    if end:
        add(
            "sockets open at end",
            f"{end['sockets_open']} / {end['sockets_expected']}"
            + (f" closed: {end['closed_codes']}" if end["closed_codes"] else ""),
        )
        if "rss_after_close" in end:
            ps = end.get("redis_pubsub_after_close") or {}
            add(
                "after closing all",
                f"Daphne RSS {end['rss_after_close']['rss'] / mib:.1f} MiB; after "
                f"{ps.get('t')}s: Redis subscriptions left {ps.get('channels')} "
                f"({ps.get('group_channels')} groups), presence entries {ps.get('presence_entries')}",
            )
    if r.get("close_race"):
        cr = r["close_race"]
        add(
            "close right after ping",
            f"{cr['sockets']} sockets: {cr['server_exceptions']} server "
            f"exceptions, {cr['subscriptions_after_15s']} subscriptions left after 15s "
            f"(were {cr['subscriptions_before']})",
        )
    if r.get("error"):
        add("ERROR", r["error"])
    if r.get("interrupted"):
        add("INTERRUPTED", "yes")
    width = max(len(k) for k, _ in rows) if rows else 10
    line = "-" * (width + 3 + max((len(v) for _, v in rows), default=10))
    out = [line] + [f"{k:<{width}} | {v}" for k, v in rows] + [line]
    return "\n".join(out)


# --- entry point --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--sockets", type=int, default=1000, help="sockets to open (default 1000)")
    p.add_argument("--active", type=int, default=100, help="sockets that post messages (default 100)")
    p.add_argument(
        "--duration",
        type=float,
        default=60.0,
        help="active phase length in s; messages go out in its first half (default 60)",
    )
    p.add_argument("--per-room", type=int, default=5, help="sockets per room (default 5)")
    p.add_argument(
        "--talkers-per-room",
        type=int,
        default=4,
        help="talkers per active room; the rest of the room listens (default 4)",
    )
    p.add_argument("--messages", type=int, default=2, help="messages per talker (default 2)")
    p.add_argument("--tokens", type=int, default=60, help="words per answer (!tokens, default 60)")
    p.add_argument("--token-delay-ms", type=int, default=20, help="ms per word (!delay, default 20)")
    p.add_argument(
        "--hold",
        type=float,
        default=25.0,
        help="idle hold in s before RSS after (default 25, at least 1.25 ping periods)",
    )
    p.add_argument("--ping-interval", type=float, default=10.0, help="heartbeat period in s (default 10)")
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=25,
        help="handshakes in flight (default 25; Daphne's listen backlog is 50)",
    )
    p.add_argument("--connect-rate", type=float, default=0.0, help="max handshakes started per s (0: no cap)")
    p.add_argument("--connect-timeout", type=float, default=20.0)
    p.add_argument("--connect-retries", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5, help="sockets of the warm-up room (default 5)")
    p.add_argument("--concurrency", type=int, default=16, help="Celery worker threads (default 16)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=300.0,
        help="max s to wait for queued answers after the sends (default 300)",
    )
    p.add_argument("--converge-timeout", type=float, default=30.0)
    p.add_argument(
        "--close-race",
        type=int,
        default=0,
        metavar="N",
        help="at the end, N times: connect, ping, close at once; count leaked subscriptions",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=60.0,
        help="max s to wait after closing every socket for the server to forget them",
    )
    p.add_argument(
        "--late-wait",
        type=float,
        default=30.0,
        help="extra s to wait for deltas missing at verification (late vs lost)",
    )
    p.add_argument("--timeout", type=float, default=0.0, help="hard limit of the run in s (0: computed)")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the stack (repeatable), e.g. CONN_MAX_AGE=60",
    )
    p.add_argument("--debug", action="store_true", help="run the stack with DEBUG=true (default false)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", type=str, default="", help="results path (default bench/results/load-<ts>.json)")
    args = p.parse_args(argv)
    if args.sockets < 1 or args.per_room < 1 or args.talkers_per_room < 1:
        p.error("--sockets, --per-room and --talkers-per-room must be >= 1")
    if not 0 <= args.active <= args.sockets:
        p.error("--active must be between 0 and --sockets")
    if args.talkers_per_room > args.per_room:
        p.error("--talkers-per-room must be <= --per-room")
    n_rooms = math.ceil(args.sockets / args.per_room)
    if math.ceil(args.active / args.talkers_per_room) > n_rooms:
        p.error("not enough rooms for --active talkers; raise --talkers-per-room")
    # "held" needs a pong from every socket: hold at least one (jittered) ping period
    args.hold = max(args.hold, 1.25 * args.ping_interval + 2)
    if not args.timeout:
        args.timeout = args.hold + args.duration + args.drain_timeout + args.sockets / 10 + 240
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.seed is not None:
        random.seed(args.seed)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    bench = Bench(args)
    r = bench.result
    r.update(started=stamp, host={"cpus": os.cpu_count(), "python": platform.python_version(),
                                  "mem_total_mib": psutil.virtual_memory().total // 2**20})  # fmt: skip
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    # Ctrl-C must stop the run even when started from a shell that ignores SIGINT for its
    # background jobs (asyncio.run only handles SIGINT when the default handler is installed)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 0
    try:
        bench.setup()
        asyncio.run(_run_bounded(bench, args.timeout))
    except KeyboardInterrupt:
        r["interrupted"] = True
        code = 130
        log("interrupted: stopping everything")
    except Exception as exc:
        r["error"] = f"{type(exc).__name__}: {exc}"
        r["traceback"] = traceback.format_exc()
        code = 1
        log(r["traceback"])
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let cleanup finish
        try:
            bench.teardown()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous_term)
    path = args.json or str(RESULTS / f"load-{stamp}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(r, f, indent=2, default=str)
    print(table(r))
    print(f"results: {path}\nlogs: {r.get('logdir')}")
    act, end = r.get("active") or {}, r.get("end") or {}
    lost_sockets = end.get("sockets_open", 0) < end.get("sockets_expected", 0)
    if code == 0 and (act.get("sockets_divergent_after_convergence") or lost_sockets):
        code = 2  # a correctness failure: reported, and visible in the exit code
    return code


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


async def _run_bounded(bench: Bench, timeout: float) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await asyncio.wait_for(bench.drive(), timeout)
    except TimeoutError:
        bench.result["error"] = f"run exceeded --timeout {timeout:.0f}s"
        raise RuntimeError(bench.result["error"]) from None
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
