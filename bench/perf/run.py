"""`python -m bench.perf [--quick]`: floors first, then the project, in the same run; one table.

See docs/performance.md for what each figure means and how it is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.perf import stack
from bench.perf.report import Row, markdown_table, pct, text_table
from bench.perf.stack import PY, ROOT, FreshDatabase, Procs, cpu_seconds, free_port, rss
from bench.perf.wsclient import WSClient, connect, connect_many
from stack.processes import ASGI_SERVERS, DEFAULT_CONCURRENCY, asgi_argv, default_workers

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "performance.md"
READY = b'"type":"ready"'
DELTA = b'{"type":"delta"'
KIB = 1024.0
INDEX = re.compile(rb'"index":(\d+)')


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ms(ns: float | None) -> float | None:
    return None if ns is None else ns / 1e6


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Sizes:
    """How much of everything; --quick trades precision for about a minute or two of runtime."""

    def __init__(self, quick: bool) -> None:
        q = quick
        self.quick = q
        self.clients = 50
        self.relay_frames = 1000 if q else 4000  # x 50 deliveries (the relay is fast)
        self.fanout_frames = 400 if q else 2000  # Channels floor and project, x 50 deliveries
        self.paced_frames = 75 if q else 250  # at 50/s
        self.idle = 150 if q else 600
        self.stamp_tokens = 60 if q else 250  # project latency turns, at 50 tokens/s
        self.multi_rooms = 10 if q else 100
        self.capacity_rooms = 40 if q else 160  # seeded for the largest-rooms search
        self.capacity_start = 10
        self.capacity_step = 5 if q else 10
        self.capacity_tokens = 60 if q else 150
        self.producer_tokens = 5000 if q else 20000
        self.resume_chunks = 10000
        self.resume_pairs = 500 if q else 2500  # 2 messages each
        self.resume_repeats = 3 if q else 7
        self.first_load_pairs = 500
        self.first_load_repeats = 8 if q else 20
        self.overload_tokens = 500 if q else 20000
        self.lag_chunks = 60 if q else 200
        self.rows_writers = 8 if q else 16
        self.rows_seconds = 2.0 if q else 4.0
        self.sd_repeats = 5 if q else 15
        self.turn_seconds = 2.0 if q else 6.0
        self.turn_senders = 32
        self.pg_rows = 20000


# --- generic measurements (any server) ------------------------------------------------------


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, int]:
    """An HTTP/1.1 response's status and Content-Length (keep-alive clients)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    length = next(
        (int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"), 0
    )
    return int(lines[0].split()[1]), length


async def inject(
    cmd: list[str], env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, Callable[[], Awaitable[dict]]]:
    """Start the injector; returns (process, go) where `go()` starts sending and returns its report."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdin is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if not line.startswith(b"ready"):
        raise RuntimeError(f"injector did not start: {line!r}")

    async def go() -> dict:
        proc.stdin.write(b"go\n")  # type: ignore[union-attr]
        await proc.stdin.drain()  # type: ignore[union-attr]
        out = await proc.stdout.readline()  # type: ignore[union-attr]
        await proc.wait()
        return json.loads(out) if out.strip() else {}

    return proc, go


def reset(clients: list[WSClient]) -> None:
    for c in clients:
        c.count = c.bytes = c.first_ns = c.last_ns = c.matched = 0
        c.latencies = []


async def wait_counts(
    clients: list[WSClient], expected: int, stall: float = 4.0, limit: float = 300.0
) -> bool:
    """Until every client has `expected` frames; False on a stall or the time limit."""
    last_total, last_change = -1, time.monotonic()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        total = sum(min(c.count, expected) for c in clients)
        if total >= expected * len(clients):
            return True
        if total != last_total:
            last_total, last_change = total, time.monotonic()
        elif time.monotonic() - last_change > stall:
            return False
        await asyncio.sleep(0.02)
    return False


async def fanout(server_pid: int, clients: list[WSClient], inject_cmd: list[str], n: int) -> dict[str, Any]:
    """Unpaced: n frames injected, each to every client. Deliveries/s from the first delivery to
    the last; server CPU (psutil, the one server process) per delivery over the same run."""
    await asyncio.sleep(0.5)  # settle (presence frames of the joins)
    reset(clients)
    _, go = await inject(inject_cmd)
    cpu0 = cpu_seconds(server_pid)
    report_task = asyncio.create_task(go())
    complete = await wait_counts(clients, n)
    cpu1 = cpu_seconds(server_pid)
    injector = await report_task
    deliveries = sum(c.count for c in clients)
    first = min((c.first_ns for c in clients if c.first_ns), default=0)
    last = max((c.last_ns for c in clients), default=0)
    seconds = max((last - first) / 1e9, 1e-9)
    return {
        "deliveries": deliveries,
        "expected": n * len(clients),
        "lost": n * len(clients) - deliveries,
        "complete": complete,
        "seconds": seconds,
        "per_s": deliveries / seconds,
        "cpu_us": (cpu1 - cpu0) * 1e6 / max(deliveries, 1),
        "injector": injector,
    }


async def paced(clients: list[WSClient], inject_cmd: list[str], n: int) -> dict[str, Any]:
    """n stamped frames at 50/s; latency = client receive minus the injector's stamp."""
    await asyncio.sleep(0.3)
    reset(clients)
    _, go = await inject(inject_cmd)
    injector = await go()
    await wait_counts(clients, n, stall=2.0, limit=60)
    lat = [x for c in clients for x in c.latencies]
    return {
        "p50_ms": ms(pct(lat, 0.5)),
        "p99_ms": ms(pct(lat, 0.99)),
        "max_ms": ms(max(lat) if lat else None),
        "samples": len(lat),
        "lost": n * len(clients) - sum(c.count for c in clients),
        "injector": injector,
    }


async def idle_sockets(
    server_pid: int,
    port: int,
    paths: list[str],
    headers: list[dict[str, str] | None] | None,
    ready: bytes | None,
) -> dict[str, Any]:
    """RSS growth of the server per idle socket, and how fast they connect (and join).

    The memory figure is marginal: RSS is read again once the first sixth of the sockets (at
    least 40, the handshakes in flight) are open and held, so what a server allocates once
    under load (the database pool's connections and threads, Redis connections, the heap's
    first arenas) is not divided among the sockets; `kib_per_socket_cold` counts it too."""
    await asyncio.sleep(0.5)
    before = rss(server_pid)
    cpu0 = cpu_seconds(server_pid)
    t0 = time.monotonic()
    warm = min(max(40, len(paths) // 6), len(paths) // 2)
    clients = await connect_many(
        port, paths[:warm], headers[:warm] if headers else None, ready=ready, in_flight=40, timeout=120
    )
    elapsed = time.monotonic() - t0
    await asyncio.sleep(0.5)  # the warm-up's deferred work (joins' presence broadcasts)
    warmed = rss(server_pid)
    t0 = time.monotonic()
    clients += await connect_many(
        port, paths[warm:], headers[warm:] if headers else None, ready=ready, in_flight=40, timeout=120
    )
    elapsed += time.monotonic() - t0
    cpu = cpu_seconds(server_pid) - cpu0
    await asyncio.sleep(1.5)  # joins' presence broadcasts, deferred work
    after = rss(server_pid)
    measured = max(len(clients) - warm, 1)
    out = {
        "sockets": len(clients),
        "kib_per_socket": (after - warmed) / KIB / measured,
        "kib_per_socket_cold": (after - before) / KIB / max(len(clients), 1),
        "connect_per_s": len(clients) / elapsed,
        # the server's CPU per connect-and-join (handshake to ready): portable across loads
        "cpu_ms_per_connect": cpu * 1000 / max(len(clients), 1),
        "rss_before_mib": before / KIB / KIB,
        "rss_warm_mib": warmed / KIB / KIB,
        "rss_after_mib": after / KIB / KIB,
    }
    for c in clients:
        c.close()
    await asyncio.sleep(1.0)
    return out


# --- the benchmark --------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.s = Sizes(args.quick)
        self.run = stack.run_id()
        self.procs = Procs()
        self.rows: list[Row] = []
        self.raw: dict[str, Any] = {}
        self.floor: dict[str, float] = {}
        self.db: FreshDatabase | None = None
        self.env: dict[str, str] = {}
        self.errors: list[str] = []
        self.profiles: list[str] = []

    # --- helpers ---------------------------------------------------------------------------
    def add(self, row: Row) -> None:
        self.rows.append(row)

    def wanted(self, group: str) -> bool:
        return not self.args.only or group in self.args.only.split(",")

    async def section(self, name: str, fn: Callable[[], Awaitable[None]], profile: str = "") -> None:
        log(f"--- {name} (load {loadavg()})")
        t0 = time.monotonic()
        if profile in ("rows", "lag", "overload", "multi"):
            profile = ""  # the producer process (see produce()) or p_multi's own worker instead
        try:
            if profile:
                # the worker (and its pool processes) for the producer-side figures, else the ASGI server
                on_worker = profile in ("producer", "sendfirst")
                pid = self.procs.pid("worker") if on_worker else self.web_pid
                await self.py_spy(pid, profile, subprocesses=on_worker)
            await fn()
        except Exception as exc:  # a failed figure is reported, the rest still runs
            self.errors.append(f"{name}: {exc!r}")
            log(f"!!! {name} failed: {exc!r}")
            traceback.print_exc()
        finally:
            if profile:
                await self.py_spy_stop()
        log(f"    {name}: {time.monotonic() - t0:.1f}s")

    async def py_spy(self, pid: int, name: str, subprocesses: bool = False) -> None:
        """With --profile: py-spy `pid` until `py_spy_stop()` (collapsed stacks, summarised by
        `python -m bench.perf.profile FILE`). Sampling pauses the process: figures measured while
        profiling are slower than the table's; the profile is for finding where time goes."""
        spy = shutil.which("py-spy", path=f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        if not self.args.profile or not spy:
            return
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = RESULTS / f"profile-{stamp}-{name}.txt"
        self._spy = await asyncio.create_subprocess_exec(
            spy,
            "record",
            "-p",
            str(pid),
            "-d",
            "600",
            "-r",
            "200",
            "--gil",  # only the thread holding the GIL: where the process's CPU goes
            "-f",
            "raw",
            "-o",
            str(out),
            *(["--subprocesses"] if subprocesses else []),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(1.0)  # attached
        self.profiles.append(str(out))

    async def py_spy_stop(self) -> None:
        proc = getattr(self, "_spy", None)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 30)
            self._spy = None

    # --- floors ----------------------------------------------------------------------------
    async def floor_relay(self) -> None:
        port = free_port()
        self.procs.start("relay", [PY, "-m", "bench.perf.relay", "--port", str(port)], dict(os.environ), port)
        pid = self.procs.pid("relay")
        s = self.s
        try:
            clients = await connect_many(port, ["/sub"] * s.clients, stamps=True)
            cmd = [PY, "-m", "bench.perf.inject", "relay", "--port", str(port), "--n", str(s.relay_frames)]
            f = await fanout(pid, clients, cmd, s.relay_frames)
            lat50 = await paced(
                clients, cmd[:-2] + ["--n", str(s.paced_frames), "--rate", "50"], s.paced_frames
            )
            for c in clients[1:]:
                c.close()
            lat1 = await paced(
                clients[:1], cmd[:-2] + ["--n", str(s.paced_frames), "--rate", "50"], s.paced_frames
            )
            clients[0].close()
            idle = await idle_sockets(pid, port, ["/sub"] * s.idle, None, None)
        finally:
            self.procs.stop("relay")
        self.raw["floor_relay"] = {"fanout": f, "paced50": lat50, "paced1": lat1, "idle": idle}
        self.floor.update(
            relay_per_s=f["per_s"],
            relay_cpu_us=f["cpu_us"],
            relay_p50_50=lat50["p50_ms"],
            relay_p99_50=lat50["p99_ms"],
            relay_p50_1=lat1["p50_ms"],
            relay_p99_1=lat1["p99_ms"],
            relay_kib=idle["kib_per_socket"],
            relay_connect=idle["connect_per_s"],
            relay_connect_cpu_ms=idle["cpu_ms_per_connect"],
        )
        log(
            f"relay: {f['per_s']:,.0f} deliveries/s, {f['cpu_us']:.1f} us/delivery, lost {f['lost']}; "
            f"p50/p99 50 clients {lat50['p50_ms']:.2f}/{lat50['p99_ms']:.2f} ms, 1 client "
            f"{lat1['p50_ms']:.2f}/{lat1['p99_ms']:.2f} ms; idle {idle['kib_per_socket']:.1f} KiB, "
            f"{idle['connect_per_s']:,.0f} connects/s ({idle['cpu_ms_per_connect']:.2f} ms server CPU each)"
        )

    async def floor_channels(self) -> None:
        port = free_port()
        prefix = f"benchmini{self.run}"
        env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="bench.perf.mini_settings",
            REDIS_URL=self.redis_url,
            CHANNEL_PREFIX=prefix,
            PYTHONUNBUFFERED="1",
        )
        env.pop("DATABASE_URL", None)
        mini = asgi_argv("bench.perf.mini_asgi:application", server=self.args.server, port=port)
        self.procs.start("mini", mini, env, port)
        pid = self.procs.pid("mini")
        s = self.s
        try:
            clients = await connect_many(port, ["/sub"] * s.clients, stamps=True)
            base = [
                PY,
                "-m",
                "bench.perf.inject",
                "layer",
                "--redis",
                self.redis_url,
                "--prefix",
                prefix,
                "--group",
                "bench",
                "--kind",
                "floor",
            ]
            f = await fanout(pid, clients, base + ["--n", str(s.fanout_frames)], s.fanout_frames)
            lat50 = await paced(clients, base + ["--n", str(s.paced_frames), "--rate", "50"], s.paced_frames)
            for c in clients:
                c.close()
            idle = await idle_sockets(pid, port, ["/sub"] * s.idle, None, None)
        finally:
            self.procs.stop("mini")
        self.raw["floor_channels"] = {"fanout": f, "paced50": lat50, "idle": idle}
        self.floor.update(
            ch_per_s=f["per_s"],
            ch_cpu_us=f["cpu_us"],
            ch_p99_50=lat50["p99_ms"],
            ch_p50_50=lat50["p50_ms"],
            ch_kib=idle["kib_per_socket"],
            ch_connect=idle["connect_per_s"],
            ch_connect_cpu_ms=idle["cpu_ms_per_connect"],
        )
        log(
            f"channels: {f['per_s']:,.0f} deliveries/s, {f['cpu_us']:.1f} us/delivery, lost {f['lost']}; "
            f"p50/p99 50 clients {lat50['p50_ms']:.2f}/{lat50['p99_ms']:.2f} ms; idle "
            f"{idle['kib_per_socket']:.1f} KiB, {idle['connect_per_s']:,.0f} connects/s "
            f"({idle['cpu_ms_per_connect']:.2f} ms server CPU each)"
        )

    def _floor_postgres(self) -> dict[str, Any]:
        import psycopg

        assert self.db is not None
        n = self.s.pg_rows
        rows = [(1, i, f"tok{i:05d}") for i in range(n)]
        out: dict[str, Any] = {}
        with psycopg.connect(self.db.url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS bench_floor_chunk")
            conn.execute(
                "CREATE TABLE bench_floor_chunk (room_id int, seq int, text text, UNIQUE (room_id, seq))"
            )

            def batches(size: int, method: str) -> dict[str, Any]:
                conn.execute("TRUNCATE bench_floor_chunk")
                commits = []
                t0 = time.perf_counter()
                for k in range(0, n, size):
                    part = rows[k : k + size]
                    with conn.transaction():
                        with conn.cursor() as cur:
                            if method == "copy":
                                with cur.copy("COPY bench_floor_chunk (room_id, seq, text) FROM STDIN") as cp:
                                    for r in part:
                                        cp.write_row(r)
                            else:
                                cur.executemany("INSERT INTO bench_floor_chunk VALUES (%s, %s, %s)", part)
                        c0 = time.perf_counter()
                    commits.append(time.perf_counter() - c0)
                total = time.perf_counter() - t0
                return {
                    "rows_per_s": n / total,
                    "commit_p50_ms": pct(commits, 0.5) * 1e3,
                    "commit_p99_ms": pct(commits, 0.99) * 1e3,
                }

            out["copy50"] = batches(50, "copy")
            out["insert50"] = batches(50, "insert")
            out["copy_all"] = batches(n, "copy")
            conn.execute("DROP TABLE bench_floor_chunk")
        return out

    def _floor_turns(self, seconds: float, clients: int) -> dict[str, Any]:
        """pgbench's shape, 32 connections on one hot room: UPDATE room ... RETURNING, INSERT turn."""
        import psycopg

        assert self.db is not None
        with psycopg.connect(self.db.url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS bench_floor_room, bench_floor_turn")
            conn.execute("CREATE TABLE bench_floor_room (id int PRIMARY KEY, last_seq bigint NOT NULL)")
            conn.execute("CREATE TABLE bench_floor_turn (id bigserial PRIMARY KEY, room_id int, seq bigint)")
            conn.execute("INSERT INTO bench_floor_room VALUES (1, 0)")
        lat: list[float] = []
        stop = time.monotonic() + seconds

        def worker() -> None:
            with psycopg.connect(self.db.url) as c:  # type: ignore[union-attr]
                while time.monotonic() < stop:
                    t = time.perf_counter()
                    with c.transaction():
                        seq = c.execute(
                            "UPDATE bench_floor_room SET last_seq = last_seq + 1 WHERE id = 1 "
                            "RETURNING last_seq"
                        ).fetchone()[0]
                        c.execute("INSERT INTO bench_floor_turn (room_id, seq) VALUES (1, %s)", [seq])
                    lat.append(time.perf_counter() - t)

        threads = [threading.Thread(target=worker) for _ in range(clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        with psycopg.connect(self.db.url, autocommit=True) as conn:
            conn.execute("DROP TABLE bench_floor_room, bench_floor_turn")
        return {"tps": len(lat) / wall, "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}

    async def floor_postgres(self) -> None:
        pg = await asyncio.to_thread(self._floor_postgres)
        turns = await asyncio.to_thread(self._floor_turns, 3.0 if self.s.quick else 5.0, 32)
        self.raw["floor_postgres"] = {**pg, "turns32": turns}
        self.floor.update(
            pg_copy50=pg["copy50"]["rows_per_s"],
            pg_insert50=pg["insert50"]["rows_per_s"],
            pg_copy_all=pg["copy_all"]["rows_per_s"],
            pg_copy50_p99=pg["copy50"]["commit_p99_ms"],
            turn_tps=turns["tps"],
            turn_p99=turns["p99_ms"],
        )
        log(
            f"postgres: COPY/50 {pg['copy50']['rows_per_s']:,.0f} rows/s (commit p99 "
            f"{pg['copy50']['commit_p99_ms']:.2f} ms), INSERT/50 {pg['insert50']['rows_per_s']:,.0f}, "
            f"one COPY {pg['copy_all']['rows_per_s']:,.0f}; hot-room turns x32 {turns['tps']:,.0f} tps "
            f"p99 {turns['p99_ms']:.1f} ms"
        )

    # --- the project: setup ------------------------------------------------------------------
    def _django(self) -> None:
        os.environ.update(self.env)
        import django

        django.setup()

    def _seed(self) -> dict[str, Any]:
        from bench.perf import seed

        s = self.s
        people = seed.users(max(64, s.clients, s.turn_senders), f"b{self.run}")
        users = [u for u, _ in people]
        owner = users[0]
        R: dict[str, Any] = {"tokens": [t for _, t in people], "user_ids": [u.pk for u in users]}

        def mk(name: str, members: int, **kw: Any) -> dict[str, Any]:
            r = seed.room(owner, f"bench {name}", users[:members], **kw)
            return {"id": r.pk, "slug": r.slug}

        R["warm"] = mk("warm", 1)
        R["fanout"] = mk("fanout", s.clients)
        R["lat50"] = mk("lat50", s.clients)
        R["lat1"] = mk("lat1", 1)
        R["multi"] = [mk(f"multi{i}", 5) for i in range(s.multi_rooms)]
        R["capacity"] = [mk(f"capacity{i}", 2) for i in range(s.capacity_rooms)]
        R["producer"] = mk("producer", 1)
        R["sd"] = mk("sd", 1)
        R["lag"] = mk("lag", s.clients)
        R["overload"] = mk("overload", s.clients)
        R["rows"] = [mk(f"rows{i}", 1) for i in range(s.rows_writers)]
        R["turns"] = mk("turns", s.turn_senders)
        R["idle"] = [mk(f"idle{i}", 10) for i in range((s.idle + 9) // 10)]
        from rooms.models import Room

        r10k = seed.room(owner, "bench resume10k", users[:1])
        R["resume10k_msg"] = seed.streaming_message(r10k, owner, s.resume_chunks)
        R["resume10k"] = {"id": r10k.pk, "slug": r10k.slug}
        r5k = seed.room(owner, "bench resume5k", users[:1])
        R["resume5k_events"] = seed.history(r5k, owner, s.resume_pairs)
        R["resume5k"] = {"id": r5k.pk, "slug": r5k.slug}
        fl = seed.room(owner, "bench firstload", users[:1])
        seed.history(fl, owner, s.first_load_pairs)
        R["firstload"] = {"id": fl.pk, "slug": fl.slug}
        R["session"] = seed.session_cookie(owner)
        R["rooms_total"] = Room.objects.count()
        from django.db import connections

        connections.close_all()
        return R

    async def setup_project(self) -> None:
        assert self.db is not None
        self.fake_port = free_port()
        self.web_port = free_port()
        self.env = {
            "DJANGO_SETTINGS_MODULE": "chatproject.settings",
            "DATABASE_URL": self.db.url,
            "REDIS_URL": self.redis_url,
            "CELERY_BROKER_URL": self.redis_url,
            "CELERY_QUEUE": f"bench-{self.run}",
            "CHANNEL_PREFIX": f"bench{self.run}",
            "LLM_PROVIDER": "bench.perf.provider.StampingProvider",
            "LLM_BASE_URL": f"http://127.0.0.1:{self.fake_port}/v1",
            "LLM_API_KEY": "bench",
            "LLM_MODEL": "fake-model",
            "DEBUG": "false",
            # production settings, served over plain HTTP on loopback as behind a TLS proxy
            "SECURE_SSL_REDIRECT": "false",
            "SECURE_COOKIES": "false",
            "SECRET_KEY": f"bench-{self.run}-not-secret",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "RATE_FRAMES_PER_SECOND": "0",
            "RATE_MESSAGES_PER_MINUTE": "0",
            "RATE_QUEUED_TURNS_PER_ROOM": "0",
            "RATE_SYNCS_PER_MINUTE": "0",
            "SOCKETS_PER_USER": "0",
            # the resume figure replays a room's 15,000 events from 0 (the product's own cap
            # would tell that client to reload the page instead)
            "CHAT_REPLAY_MAX_EVENTS": "100000",
            "CHAT_REPLAY_MAX_BYTES": str(256 * 1024 * 1024),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        for item in self.args.env:  # experiments: --env CONN_MAX_AGE=60
            key, _, value = item.partition("=")
            self.env[key] = value
        penv = dict(os.environ, **self.env)
        t0 = time.monotonic()
        subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=penv, check=True)
        log(f"migrated {self.db.name} in {time.monotonic() - t0:.1f}s")
        self._django()
        t0 = time.monotonic()
        self.R = await asyncio.to_thread(self._seed)
        log(f"seeded in {time.monotonic() - t0:.1f}s")
        self.penv = penv
        self.procs.start(
            "fakellm",
            [PY, "tests/fakellm.py", "--port", str(self.fake_port), "--delay", "0"],
            penv,
            self.fake_port,
        )
        self.start_web()
        self.start_worker()
        # warm up: imports, the provider's HTTP pool, the first connections
        c = await self.viewer(self.R["warm"], 0)
        for _ in range(2):
            await self.turn(c, "warm-up !tokens=3")
        c.close()

    def start_web(self) -> None:
        """The measured ASGI process (started again for the idle figure)."""
        argv = asgi_argv(self.args.asgi, server=self.args.server, port=self.web_port)
        self.procs.start("web", argv, self.penv, self.web_port)
        self.web_pid = self.procs.pid("web")

    def start_worker(self, pool: str = "threads", concurrency: int = 16, workers: int = 1) -> None:
        """`workers` Celery worker processes (`worker`, `worker2`, ...) on the run's queue."""
        for i in range(workers):
            name = "worker" if i == 0 else f"worker{i + 1}"
            self.procs.start(
                name,
                [
                    PY, "-m", "celery", "-A", "chatproject", "worker", "-l", "warning",
                    "-P", pool, "--concurrency", str(concurrency),
                    "-n", f"bench-{self.run}-{pool}-{i}@%h",
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                ],
                self.penv,
            )  # fmt: skip

    def worker_names(self) -> list[str]:
        return [n for n in self.procs.procs if n == "worker" or n.startswith("worker") and n[6:].isdigit()]

    def stop_workers(self) -> None:
        for name in self.worker_names():
            self.procs.stop(name)

    def headers(self, user: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.R['tokens'][user]}"}

    def path(self, room: dict[str, Any], since: int = 0) -> str:
        return f"/ws/rooms/{room['slug']}/?since={since}"

    async def viewer(self, room: dict[str, Any], user: int, **kw: Any) -> WSClient:
        return await connect(self.web_port, self.path(room), self.headers(user), ready=READY, **kw)

    async def viewers(self, room: dict[str, Any], n: int, **kw: Any) -> list[WSClient]:
        return await connect_many(
            self.web_port, [self.path(room)] * n, [self.headers(i) for i in range(n)], ready=READY, **kw
        )

    async def turn(self, sender: WSClient, content: str, timeout: float = 120.0) -> tuple[int, int | None]:
        """Send a message and wait for its turn to be done: (send wall ns, first delta wall ns)."""
        cid = str(uuid.uuid4())
        done = sender.watch(b'"status":"done"')
        first = sender.watch(DELTA)
        t = time.time_ns()
        sender.send_text(json.dumps({"type": "send", "client_id": cid, "content": content}))
        await asyncio.wait_for(done, timeout)
        first_ns = first.result()[0] if first.done() else None
        if not first.done():
            first.cancel()
        return t, first_ns

    def _chunks_of_room(self, room_id: int) -> dict[int, int]:
        from django.db.models import Count

        from rooms.models import Message

        return dict(
            Message.objects.filter(room_id=room_id, role="assistant")
            .annotate(n=Count("chunks"))
            .values_list("pk", "n")
        )

    # --- the project: figures ----------------------------------------------------------------
    async def p_fanout(self) -> None:
        s, R = self.s, self.R
        clients = await self.viewers(R["fanout"], s.clients)
        cmd = [
            PY,
            "-m",
            "bench.perf.inject",
            "layer",
            "--redis",
            self.redis_url,
            "--prefix",
            self.env["CHANNEL_PREFIX"],
            "--group",
            f"room.{R['fanout']['id']}",
            "--kind",
            "delta",
            "--message-id",
            "999999999",
            "--n",
            str(s.fanout_frames),
        ]
        await self.py_spy(self.web_pid, "fanout")
        f = await fanout(self.web_pid, clients, cmd, s.fanout_frames)
        await self.py_spy_stop()
        for c in clients:
            c.close()
        self.raw["fanout"] = f
        log(
            f"project fan-out: {f['per_s']:,.0f} deliveries/s, {f['cpu_us']:.1f} us/delivery, "
            f"lost {f['lost']}"
        )
        fl = self.floor
        self.add(
            Row(
                "fanout_rate",
                "Fan-out, 50 viewers, unpaced (deliveries/s per process)",
                f["per_s"],
                "/s",
                fl.get("relay_per_s"),
                "relay",
                ">= 0.5x relay (>= 50,000/s)",
                passed=bool(fl.get("relay_per_s")) and f["per_s"] >= 0.5 * fl["relay_per_s"],
                extra={"channels_floor": fl.get("ch_per_s"), "lost": f["lost"]},
            )
        )
        self.add(
            Row(
                "fanout_cpu",
                "Fan-out: server CPU per delivery",
                f["cpu_us"],
                "us",
                fl.get("relay_cpu_us"),
                "relay",
                "<= 20 us",
                better="lower",
                passed=f["cpu_us"] <= 20.0,
                extra={"channels_floor": fl.get("ch_cpu_us")},
            )
        )
        self.add(
            Row(
                "fanout_lost",
                "Fan-out: deliveries lost",
                f["lost"],
                "",
                None,
                "",
                "0",
                better="lower",
                passed=f["lost"] == 0,
            )
        )

    async def _stamped_turns(
        self, rooms: list[dict[str, Any]], per_room: int, tokens: int | None = None
    ) -> dict[str, Any]:
        """One stamped turn per room at 50 tokens/s, all at once; latency provider yield -> client."""
        groups = [await self.viewers(r, per_room, stamps=DELTA, in_flight=40) for r in rooms]
        await asyncio.sleep(0.5)
        for g in groups:
            reset(g)
        before = [await asyncio.to_thread(self._chunks_of_room, r["id"]) for r in rooms]
        content = f"!stamp !tokens={tokens or self.s.stamp_tokens} !delay=20"
        await asyncio.gather(*(self.turn(g[0], content, timeout=180) for g in groups))
        await asyncio.sleep(0.5)
        lat = [x for g in groups for c in g for x in c.latencies]
        lost = 0
        for r, g, old in zip(rooms, groups, before, strict=True):
            now = await asyncio.to_thread(self._chunks_of_room, r["id"])
            chunks = sum(n for mid, n in now.items() if mid not in old)  # this run's answers only
            lost += sum(max(0, chunks - c.matched) for c in g)
        for g in groups:
            for c in g:
                c.close()
        await asyncio.sleep(0.5)
        return {
            "p50_ms": ms(pct(lat, 0.5)),
            "p99_ms": ms(pct(lat, 0.99)),
            "max_ms": ms(max(lat) if lat else None),
            "samples": len(lat),
            "lost": lost,
        }

    async def p_latency(self) -> None:
        R, fl = self.R, self.floor
        flush_ms = 30.0
        for key, rooms, per_room, floor_key, label in (
            ("lat50", [R["lat50"]], self.s.clients, "relay_p99_50", "1 room x 50 viewers"),
            ("lat1", [R["lat1"]], 1, "relay_p99_1", "1 room x 1 viewer"),
        ):
            r = await self._stamped_turns(rooms, per_room)
            self.raw[key] = r
            log(f"token latency {label}: p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms lost {r['lost']}")
            self._latency_rows(key, label, r, fl.get(floor_key), flush_ms)

    def _latency_rows(
        self, key: str, label: str, r: dict[str, Any], floor_p99: float | None, flush_ms: float
    ) -> None:
        limit = flush_ms + 3 * floor_p99 if floor_p99 else None
        self.add(
            Row(
                f"{key}_p50",
                f"Token latency p50, {label} (50 tok/s)",
                r["p50_ms"],
                "ms",
                self.floor.get("relay_p50_50" if "1 viewer" not in label else "relay_p50_1"),
                "relay p50",
                "-",
                better="lower",
            )
        )
        self.add(
            Row(
                f"{key}_p99",
                f"Token latency p99, {label} (50 tok/s)",
                r["p99_ms"],
                "ms",
                floor_p99,
                "relay p99",
                f"<= flush {flush_ms:.0f} + 3x relay p99" + (f" = {limit:.1f} ms" if limit else ""),
                better="lower",
                passed=None if limit is None or r["p99_ms"] is None else r["p99_ms"] <= limit,
                extra={"lost": r["lost"], "samples": r["samples"]},
            )
        )

    async def _with_workers(
        self, workers: int, concurrency: int, fn: Callable[[], Awaitable[Any]]
    ) -> tuple[Any, dict[str, float]]:
        """Run `fn` on `workers` threads-pool worker processes of `concurrency` turns each
        instead of the usual one; returns its result and the CPU seconds each process used."""
        self.stop_workers()
        self.start_worker("threads", concurrency, workers)
        await asyncio.sleep(3.0)
        pids = {n: self.procs.pid(n) for n in [*self.worker_names(), "web", "fakellm"]}
        before = {n: cpu_seconds(p) for n, p in pids.items()}
        await self.py_spy(self.procs.pid("worker"), f"multi-worker-{workers}")  # with --profile
        try:
            result = await fn()
        finally:
            await self.py_spy_stop()
            cpu = {n: round(cpu_seconds(p) - before[n], 2) for n, p in pids.items()}
            self.stop_workers()
            self.start_worker()
            await asyncio.sleep(2.0)
        return result, cpu

    async def p_multi(self) -> None:
        """100 rooms x 5 viewers streaming at once, on `make run`'s worker processes and pool."""
        rooms, workers = self.R["multi"][: self.args.multi_rooms or None], self.args.workers
        concurrency = max(DEFAULT_CONCURRENCY, -(-len(rooms) // workers))  # every turn at once
        t0 = time.monotonic()
        r, cpu = await self._with_workers(workers, concurrency, lambda: self._stamped_turns(rooms, 5))
        r.update(workers=workers, concurrency=concurrency, cpu_seconds=cpu, seconds=time.monotonic() - t0)
        tokens = len(rooms) * self.s.stamp_tokens
        r["worker_cpu_us_per_token"] = 1e6 * sum(v for k, v in cpu.items() if k.startswith("worker")) / tokens
        self.raw["multi"] = r
        label = f"{len(rooms)} rooms x 5 viewers, {workers} worker process{'es' if workers > 1 else ''}"
        log(
            f"token latency {label}: p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms lost {r['lost']}; "
            f"CPU s: {cpu}; workers {r['worker_cpu_us_per_token']:.0f} us per token (with starts and ends)"
        )
        self._latency_rows("multi", label, r, self.floor.get("relay_p99_50"), 30.0)
        p50_1 = self.raw.get("lat50", {}).get("p50_ms")
        self.add(
            Row(
                "multi_p50_vs_1room",
                f"Token latency p50, {label}, vs 1 room x 50",
                r["p50_ms"],
                "ms",
                p50_1,
                "1-room p50",
                "<= 2x the 1-room p50" + (f" = {2 * p50_1:.1f} ms" if p50_1 else ""),
                better="lower",
                passed=None if not p50_1 or r["p50_ms"] is None else r["p50_ms"] <= 2 * p50_1,
            )
        )
        self.add(
            Row(
                "multi_lost",
                f"Frames lost, {label}",
                r["lost"],
                "",
                None,
                "",
                "0",
                better="lower",
                passed=r["lost"] == 0,
            )
        )

    async def _largest(self, workers: int, limit_ms: float) -> dict[str, Any]:
        """The most rooms (2 viewers each, 50 tokens/s) streaming at once whose p99 stays under
        `limit_ms` on `workers` worker processes: doubling, then halving the gap."""
        rooms, tokens = self.R["capacity"], self.s.capacity_tokens
        trials: dict[int, dict[str, Any]] = {}

        async def search() -> tuple[int, int | None]:
            async def trial(n: int) -> bool:
                r = trials[n] = await self._stamped_turns(rooms[:n], 2, tokens)
                ok = r["p99_ms"] is not None and r["p99_ms"] < limit_ms and r["lost"] == 0
                log(f"  {workers} worker(s), {n} rooms: p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} ms, "
                    f"lost {r['lost']} -> {'under' if ok else 'over'}")  # fmt: skip
                return ok

            good, n = 0, self.s.capacity_start
            while n <= len(rooms) and await trial(n):
                good, n = n, n * 2
            bad = n if n <= len(rooms) else None
            step = self.s.capacity_step
            while bad is not None and bad - good > step:
                mid = (good + bad) // 2 // step * step
                if mid <= good:
                    break
                if await trial(mid):
                    good = mid
                else:
                    bad = mid
            return good, bad

        concurrency = -(-len(rooms) // workers) + 4  # a thread for every turn it may get
        (good, bad), cpu = await self._with_workers(workers, concurrency, search)
        return {"rooms": good, "first_over": bad, "trials": trials, "capped": bad is None, "cpu_seconds": cpu}

    async def p_capacity(self) -> None:
        """The scaling line: the largest rooms-at-once under 250 ms p99 on 1 and on 2 workers."""
        limit = 250.0
        found = {}
        for workers in (1, 2):
            found[workers] = r = await self._largest(workers, limit)
            log(f"largest under {limit:.0f} ms p99, {workers} worker process(es): {r['rooms']} rooms")
            self.add(
                Row(
                    f"capacity_{workers}",
                    f"Rooms streaming at once (2 viewers, 50 tok/s) with p99 < {limit:.0f} ms, "
                    f"{workers} worker process{'es' if workers > 1 else ''}",
                    r["rooms"],
                    "rooms" + (" (all seeded)" if r["capped"] else ""),
                    None,
                    "",
                    "-",
                    extra={"first_over": r["first_over"], "trials": r["trials"]},
                )
            )
        one, two = found[1]["rooms"], found[2]["rooms"]
        self.raw["capacity"] = {"limit_ms": limit, "by_workers": {k: v["rooms"] for k, v in found.items()}}
        self.add(
            Row(
                "capacity_scaling",
                "Scaling 1 -> 2 worker processes (rooms under 250 ms p99)",
                two / one if one else None,
                "x",
                None,
                "",
                "-",
            )
        )

    def _turn_times(self, room_id: int) -> list[tuple[float, int, int]]:
        from agents.models import Turn
        from rooms.models import Message

        out = []
        for t in Turn.objects.filter(room_id=room_id, status="done").order_by("pk"):
            msg = Message.objects.get(pk=t.assistant_message_id)
            from tests.fakellm import split_words

            out.append(
                (
                    (t.finished_at - t.started_at).total_seconds(),
                    len(split_words(msg.content)),
                    msg.chunks.count(),
                )
            )
        return out

    async def p_producer(self) -> None:
        R, s = self.R, self.s
        assert self.db is not None
        c = await self.viewer(R["producer"], 0)
        # a first turn in a room and on a fresh worker costs more transactions than the next
        # (rows made on first use): not counted, or the small turn would weigh more than the big.
        # Postgres reports a backend's commits when it goes idle, at most once a second, and an
        # idle backend's late ones 10 s after (the pool's and the chunk writer's connections stay
        # open): each window waits for that, or its commits land in the next one.
        settle = 11.0
        await self.turn(c, "warm-up !tokens=1")
        await asyncio.sleep(settle)
        x0 = await asyncio.to_thread(self.db.xact_commit)
        await self.turn(c, "small !tokens=1")
        await asyncio.sleep(settle)
        x1 = await asyncio.to_thread(self.db.xact_commit)
        await self.turn(c, f"big !tokens={s.producer_tokens}", timeout=300)
        await asyncio.sleep(settle)
        x2 = await asyncio.to_thread(self.db.xact_commit)
        c.close()
        (t_small, _, ch_small), (t_big, tokens, ch_big) = (
            await asyncio.to_thread(self._turn_times, R["producer"]["id"])
        )[-2:]
        small, big = x1 - x0, x2 - x1
        per_flush = (big - small) / max(ch_big - ch_small, 1)
        rate = tokens / t_big
        self.raw["producer"] = {
            "tokens": tokens,
            "seconds": t_big,
            "chunks": ch_big,
            "tokens_per_s": rate,
            "xact_small_turn": x1 - x0,
            "xact_big_turn": x2 - x1,
            "tx_per_flush": per_flush,
            "tokens_per_flush": tokens / max(ch_big, 1),
        }
        log(
            f"producer: {rate:,.0f} tokens/s ({tokens} tokens, {ch_big} chunks, "
            f"{tokens / max(ch_big, 1):.0f} "
            f"tokens/flush), {per_flush:.2f} transactions per flush"
        )
        self.add(
            Row(
                "producer_rate",
                "Producer: tokens/s, one turn, instant fake model",
                rate,
                "/s",
                None,
                "",
                ">= 10,000/s",
                passed=rate >= 10000,
                extra=self.raw["producer"],
            )
        )
        self.add(
            Row(
                "producer_txflush",
                "Producer: transactions per flush (marginal)",
                per_flush,
                "",
                None,
                "",
                "<= 1 per flush, never per token",
                better="lower",
                # below 0 the windows were disturbed (another process's commits): not a pass
                passed=0 <= per_flush <= 1.05 and tokens / max(ch_big, 1) > 1,
            )
        )

    async def p_send_first_delta(self) -> None:
        """Send -> first delta in an idle room, with where the time goes (as the client sees it):
        send -> ack (message_post), ack -> `turn running` (kick, Celery, lease), running -> first
        delta (context, model request, first token, first chunk write and its broadcast)."""
        c = await self.viewer(self.R["sd"], 0)
        lat, parts = [], {"ack": [], "running": [], "first_delta": []}
        for _ in range(self.s.sd_repeats):
            ack = c.watch(b'{"type":"ack"')
            running = c.watch(b'"status":"running"')
            t, first = await self.turn(c, "hello !tokens=5")
            if first and ack.done() and running.done():
                lat.append(first - t)
                parts["ack"].append(ack.result()[0] - t)
                parts["running"].append(running.result()[0] - ack.result()[0])
                parts["first_delta"].append(first - running.result()[0])
            await asyncio.sleep(0.1)
        c.close()
        p50 = ms(pct(lat, 0.5))
        breakdown = {k: ms(pct(v, 0.5)) for k, v in parts.items()}
        self.raw["send_first_delta"] = {
            "p50_ms": p50,
            "p90_ms": ms(pct(lat, 0.9)),
            "samples": len(lat),
            "p50_breakdown_ms": breakdown,
        }
        log(
            f"send -> first delta p50 {p50:.1f} ms (p50 of send->ack {breakdown['ack']:.1f}, ack->running "
            f"{breakdown['running']:.1f}, running->first delta {breakdown['first_delta']:.1f})"
        )
        self.add(
            Row(
                "send_first_delta",
                "Send -> first delta p50 (instant model)",
                p50,
                "ms",
                None,
                "",
                "<= 30 ms",
                better="lower",
                passed=p50 is not None and p50 <= 30,
                extra=breakdown,
            )
        )

    async def p_resume(self) -> None:
        R, s = self.R, self.s
        out = {}
        for key, room in (("resume10k", R["resume10k"]), ("resume5k", R["resume5k"])):
            times, frames = [], 0
            for _ in range(s.resume_repeats):
                t0 = time.time_ns()
                c = await connect(
                    self.web_port, self.path(room), self.headers(0), ready=READY, timeout=60, keep=True
                )
                assert c.ready is not None
                times.append(c.ready.result()[0] - t0)
                frames = c.count
                c.close()
                await asyncio.sleep(0.2)
            out[key] = {"p50_ms": ms(pct(times, 0.5)), "min_ms": ms(min(times)), "frames": frames}
        out["snapshot_sql_ms"] = await asyncio.to_thread(self._snapshot_sql_ms, R["resume10k"]["id"])
        self.raw["resume"] = out
        log(
            f"resume: 10k chunks {out['resume10k']['p50_ms']:.1f} ms; {2 * s.resume_pairs} messages "
            f"{out['resume5k']['p50_ms']:.0f} ms ({out['resume5k']['frames']} frames)"
        )
        r10 = out["resume10k"]["p50_ms"]
        self.add(
            Row(
                "resume10k",
                "Resume: connect -> ready, message of 10,000 chunks (p50)",
                r10,
                "ms",
                out["snapshot_sql_ms"],
                "snapshot SQL",
                "<= 30 ms",
                better="lower",
                passed=r10 <= 30,
            )
        )
        r5 = out["resume5k"]["p50_ms"]
        self.add(
            Row(
                "resume5k",
                f"Resume: connect -> ready, room of {2 * s.resume_pairs:,} messages, since=0 (p50)",
                r5,
                "ms",
                None,
                "",
                "<= 500 ms",
                better="lower",
                passed=r5 <= 500,
                extra={"frames": out["resume5k"]["frames"]},
            )
        )

    def _snapshot_sql_ms(self, room_id: int) -> float:
        from rooms.selectors import snapshots_streaming

        times = []
        for _ in range(5):
            t = time.perf_counter()
            snapshots_streaming(room_id=room_id)
            times.append((time.perf_counter() - t) * 1e3)
        return min(times)

    def _get_page(self, slug: str) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=30)
        t = time.perf_counter()
        conn.request(
            "GET", f"/r/{slug}/", headers={"Cookie": f"sessionid={self.R['session']}", "Host": "127.0.0.1"}
        )
        resp = conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - t
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"GET /r/{slug}/ -> {resp.status}: {body[:200]!r}")
        return elapsed * 1e3

    async def p_first_load(self) -> None:
        slug = self.R["firstload"]["slug"]
        await asyncio.to_thread(self._get_page, slug)  # warm (templates)
        times = [await asyncio.to_thread(self._get_page, slug) for _ in range(self.s.first_load_repeats)]
        p50 = pct(times, 0.5)
        self.raw["first_load"] = {"p50_ms": p50, "p90_ms": pct(times, 0.9), "samples": len(times)}
        log(f"first load p50 {p50:.1f} ms")
        self.add(
            Row(
                "first_load",
                f"First load, room page of {2 * self.s.first_load_pairs:,} messages (p50)",
                p50,
                "ms",
                None,
                "",
                "<= 150 ms",
                better="lower",
                passed=p50 <= 150,
            )
        )

    async def p_idle(self) -> None:
        s, R = self.s, self.R
        # A fresh server: RSS does not shrink when the figures before free their memory, so
        # sockets opened after them reuse it and the growth per socket reads low (or below 0).
        self.procs.stop("web")
        self.start_web()
        (await self.viewer(R["warm"], 0)).close()  # imports and first connections
        paths = [self.path(R["idle"][i // 10]) for i in range(s.idle)]
        headers = [self.headers(i % 10) for i in range(s.idle)]
        await self.py_spy(self.web_pid, "idle")
        try:
            r = await idle_sockets(self.web_pid, self.web_port, paths, headers, READY)
        finally:
            await self.py_spy_stop()
        self.raw["idle"] = r
        log(
            f"idle: {r['kib_per_socket']:.1f} KiB/socket ({r['kib_per_socket_cold']:.1f} counting the "
            f"warm-up), {r['connect_per_s']:,.0f} connect+join/s, "
            f"{r['cpu_ms_per_connect']:.2f} ms server CPU per connect"
        )
        fl = self.floor
        self.add(
            Row(
                "idle_kib",
                "Idle socket memory (rooms of 10)",
                r["kib_per_socket"],
                "KiB",
                fl.get("relay_kib"),
                "relay",
                "<= 1.5x relay (<= 20 KiB)",
                better="lower",
                passed=r["kib_per_socket"] <= 20.0,
                extra={"channels_floor": fl.get("ch_kib")},
            )
        )
        self.add(
            Row(
                "connect_rate",
                "Connect-and-join (to ready) per second",
                r["connect_per_s"],
                "/s",
                fl.get("relay_connect"),
                "relay",
                ">= 1,200/s",
                passed=r["connect_per_s"] >= 1200,
                extra={"channels_floor": fl.get("ch_connect")},
            )
        )

    async def produce(
        self, rooms: list[int], extra: list[str]
    ) -> tuple[list[int], Callable[[], Awaitable[dict]]]:
        out = Path(self.procs.logdir) / f"produce-{uuid.uuid4().hex[:6]}.json"
        cmd = [
            PY,
            "-m",
            "bench.perf.produce",
            "--user",
            str(self.R["user_ids"][0]),
            "--rooms",
            ",".join(map(str, rooms)),
            "--out",
            str(out),
            *extra,
        ]
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=ROOT, env=self.penv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        line = await asyncio.wait_for(proc.stdout.readline(), 120)  # type: ignore[union-attr]
        if not line.startswith(b"ready "):
            raise RuntimeError(f"producer did not start: {line!r}")
        ids = json.loads(line[6:])
        profile = self.args.profile and getattr(self, "_spy", None) is None
        if profile:  # the producer is the process measured in rows/lag/overload
            await self.py_spy(proc.pid, "producer-process")

        async def go() -> dict:
            proc.stdin.write(b"go\n")  # type: ignore[union-attr]
            await proc.stdin.drain()  # type: ignore[union-attr]
            await proc.wait()
            if profile:
                await self.py_spy_stop()
            return json.loads(out.read_text())

        return ids, go

    async def p_rows(self) -> None:
        s = self.s
        _, go = await self.produce([r["id"] for r in self.R["rows"]], ["--seconds", str(s.rows_seconds)])
        r = await go()
        r.pop("commit_end_ns", None)
        self.raw["rows"] = r
        log(
            f"chunk rows: {r['rows_per_s']:,.0f} rows/s with {s.rows_writers} writers, commit p99 "
            f"{r['commit_p99_ms']:.2f} ms, chunk_write p99 {r['call_p99_ms']:.2f} ms"
        )
        fl = self.floor
        self.add(
            Row(
                "rows_rate",
                f"Chunk rows/s, {s.rows_writers} turns writing at once (group commit)",
                r["rows_per_s"],
                "/s",
                fl.get("pg_copy50"),
                "COPY/50",
                ">= 0.6x COPY/50 (>= 30,000/s)",
                passed=bool(fl.get("pg_copy50")) and r["rows_per_s"] >= 0.6 * fl["pg_copy50"],
            )
        )
        self.add(
            Row(
                "rows_commit_p99",
                "Chunk write: COMMIT p99 under that load",
                r["commit_p99_ms"],
                "ms",
                fl.get("pg_copy50_p99"),
                "COPY/50 commit p99",
                "<= 5 ms",
                better="lower",
                passed=r["commit_p99_ms"] <= 5.0,
                extra={"chunk_write_p99_ms": r["call_p99_ms"]},
            )
        )

    async def p_lag(self) -> None:
        s, R = self.s, self.R
        clients = await self.viewers(R["lag"], s.clients)
        recv: list[dict[int, int]] = [{} for _ in clients]
        for k, c in enumerate(clients):

            def on(payload: bytes, now: int, d: dict[int, int] = recv[k]) -> None:
                if payload.startswith(DELTA):
                    m = INDEX.search(payload)
                    if m:
                        d[int(m.group(1))] = now

            c.on_frame = on
        _, go = await self.produce([R["lag"]["id"]], ["--chunks", str(s.lag_chunks), "--rate", "33", "--lag"])
        r = await go()
        await asyncio.sleep(0.5)
        commit = {int(k): v for k, v in r["commit_end_ns"].items()}
        lags = [d[i] - commit[i] for d in recv for i in d if i in commit]
        lost = s.lag_chunks * len(clients) - len(lags)
        for c in clients:
            c.close()
        p50, p99 = ms(pct(lags, 0.5)), ms(pct(lags, 0.99))
        self.raw["lag"] = {"p50_ms": p50, "p99_ms": p99, "samples": len(lags), "lost": lost}
        log(f"commit -> fan-out lag: p50 {p50:.2f} ms, p99 {p99:.2f} ms, lost {lost}")
        self.add(
            Row(
                "lag_p99",
                "Commit -> client receive lag p99 (50 viewers, 33 flushes/s)",
                p99,
                "ms",
                self.floor.get("relay_p99_50"),
                "relay p99",
                "<= 25 ms",
                better="lower",
                passed=p99 is not None and p99 <= 25,
                extra={"p50_ms": p50, "lost": lost},
            )
        )

    async def p_overload(self) -> None:
        from rooms.client import RoomState

        s, R = self.s, self.R
        clients = await self.viewers(R["overload"], s.clients)
        states = [RoomState() for _ in clients]
        streamed: list[dict[int, str]] = [{} for _ in clients]
        syncs = [0] * len(clients)
        target: dict[str, int] = {}
        done = [asyncio.get_running_loop().create_future() for _ in clients]
        for k, c in enumerate(clients):

            def on(payload: bytes, now: int, k: int = k, c: WSClient = c) -> None:
                frame = json.loads(payload)
                st = states[k]
                if frame.get("type") == "message_update":
                    m = frame["message"]
                    mine = st.messages.get(m["id"])
                    if mine is not None and mine.status == "streaming" and m["status"] != "streaming":
                        streamed[k][m["id"]] = mine.content  # the text built from deltas alone
                        if m["id"] == target.get("id") and not done[k].done():
                            done[k].set_result(None)
                if st.apply(frame):
                    syncs[k] += 1
                    c.send_text(json.dumps({"type": "sync", "since": st.last_seq}))

            c.on_frame = on
        # the replay before `on_frame` was set is re-read: sync from 0 gives every client the same start
        for c in clients:
            c.send_text(json.dumps({"type": "sync", "since": 0}))
        await asyncio.sleep(1.0)
        ids, go = await self.produce([R["overload"]["id"]], ["--chunks", str(s.overload_tokens)])
        target["id"] = ids[0]
        t0 = time.monotonic()
        cpu0 = cpu_seconds(self.web_pid)
        r = await go()
        produced = time.monotonic() - t0
        finished = await asyncio.wait(done, timeout=max(60.0, 10 * produced))
        drained = time.monotonic() - t0
        cpu1 = cpu_seconds(self.web_pid)
        db_text = await asyncio.to_thread(self._message_text, ids[0])
        # streamed: the text built from deltas (and snapshots after a sync) when the final
        # message_update arrived; final: what the client shows at the end
        equal_streamed = sum(1 for k in range(len(clients)) if streamed[k].get(ids[0]) == db_text)
        finals = [st.messages.get(ids[0]) for st in states]
        equal = sum(1 for m in finals if m is not None and m.content == db_text and m.status == "complete")
        dups = sum(st.duplicate_deltas for st in states)
        deliveries = sum(c.count for c in clients)
        for c in clients:
            c.close()
        res = {
            "tokens": s.overload_tokens,
            "clients": len(clients),
            "equal": equal,
            "equal_streamed": equal_streamed,
            "finished": len(finished[0]),
            "duplicates_ignored": dups,
            "syncs": sum(syncs),
            "produce_s": produced,
            "drain_s": drained,
            "deliveries": deliveries,
            "per_s": deliveries / drained,
            "cpu_us": (cpu1 - cpu0) * 1e6 / max(deliveries, 1),
            "producer": {k: v for k, v in r.items() if k != "commit_end_ns"},
        }
        self.raw["overload"] = res
        log(
            f"overload: {equal}/{len(clients)} clients equal to the DB after {s.overload_tokens} tokens "
            f"(produced in {produced:.1f}s, drained in {drained:.1f}s, {sum(syncs)} syncs)"
        )
        self.add(
            Row(
                "overload",
                f"Overload: {s.overload_tokens:,} tokens x 50 viewers, clients equal to DB",
                equal,
                f"/{len(clients)}",
                None,
                "",
                "all equal, no loss/dup/reorder",
                passed=equal == equal_streamed == len(clients),
                extra=res,
            )
        )

    def _message_text(self, message_id: int) -> str:
        from agents.turns import message_text_from_chunks

        return message_text_from_chunks(message_id)

    async def p_turns(self) -> None:
        """Turn starts: senders that do not watch the room (the API), then the busy room."""
        await self._turns_posted()
        await self._turns_busy_room()

    async def _turns_posted(self) -> None:
        """32 senders post into one room over the HTTP API (keep-alive, one request at a time
        each) and watch nothing: every post is a message, its events and a queued turn, as on
        the socket, without the room's fan-out to the senders themselves."""
        s, R = self.s, self.R
        lat: list[int] = []
        stop = time.monotonic() + s.turn_seconds
        path = f"/api/rooms/{R['turns']['slug']}/messages"
        errors: list[str] = []

        async def sender(user: int, until: Callable[[], bool]) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.web_port)
            token = self.R["tokens"][user]
            try:
                while until():
                    body = json.dumps({"content": f"turn please {uuid.uuid4().hex[:8]}"}).encode()
                    head = (
                        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    ).encode()
                    t = time.time_ns()
                    writer.write(head + body)
                    status, length = await _read_head(reader)
                    answer = await reader.readexactly(length)
                    if status != 201:
                        errors.append(f"{status} {answer[:200]!r}")
                        return
                    lat.append(time.time_ns() - t)
            finally:
                writer.close()

        warm = iter(range(3))  # the API's first request imports its URLs: not measured
        await sender(0, lambda: next(warm, None) is not None)
        lat.clear()
        stop = time.monotonic() + s.turn_seconds
        await self.py_spy(self.web_pid, "turns-posted")
        t0 = time.monotonic()
        await asyncio.gather(*(sender(i, lambda: time.monotonic() < stop) for i in range(s.turn_senders)))
        wall = time.monotonic() - t0
        await self.py_spy_stop()
        rate = len(lat) / wall
        p99 = ms(pct(lat, 0.99))
        self.raw["turns_posted"] = {"per_s": rate, "p50_ms": ms(pct(lat, 0.5)), "p99_ms": p99,
                                    "samples": len(lat), "errors": errors[:5]}  # fmt: skip
        log(f"turn starts, senders not watching: {rate:,.0f}/s, p99 {p99 or 0:.1f} ms, errors {errors[:3]}")
        fl = self.floor
        self.add(
            Row(
                "turn_rate",
                "Turn starts/s, 32 senders posting (API), not watching the room",
                rate,
                "/s",
                fl.get("turn_tps"),
                "SQL floor",
                ">= 0.5x floor",
                passed=not errors and bool(fl.get("turn_tps")) and rate >= 0.5 * fl["turn_tps"],
            )
        )
        self.add(
            Row(
                "turn_p99",
                "Turn start p99 (post -> 201), 32 senders not watching",
                p99,
                "ms",
                fl.get("turn_p99"),
                "SQL floor p99",
                "<= 50 ms",
                better="lower",
                passed=p99 is not None and p99 <= 50,
            )
        )

    async def _turns_busy_room(self) -> None:
        s, R = self.s, self.R
        clients = await self.viewers(R["turns"], s.turn_senders)
        await asyncio.sleep(1.0)
        lat: list[int] = []
        stop = time.monotonic() + s.turn_seconds

        async def sender(c: WSClient) -> None:
            while time.monotonic() < stop:
                cid = str(uuid.uuid4())
                fut = c.watch(b'{"type":"ack","client_id":"' + cid.encode())
                t = time.time_ns()
                c.send_text(
                    json.dumps({"type": "send", "client_id": cid, "content": f"turn please {cid[:8]}"})
                )
                now, _ = await asyncio.wait_for(fut, 60)
                lat.append(now - t)

        await self.py_spy(self.web_pid, "turns")
        t0 = time.monotonic()
        await asyncio.gather(*(sender(c) for c in clients))
        wall = time.monotonic() - t0
        await self.py_spy_stop()
        for c in clients:
            c.close()
        rate = len(lat) / wall
        p99 = ms(pct(lat, 0.99))
        self.raw["turns_busy"] = {
            "per_s": rate,
            "p50_ms": ms(pct(lat, 0.5)),
            "p99_ms": p99,
            "samples": len(lat),
        }
        log(f"turn starts, busy room: {rate:,.0f}/s, p50 {ms(pct(lat, 0.5)):.1f} ms, p99 {p99:.1f} ms")
        fl = self.floor
        self.add(
            Row(
                "busy_turn_rate",
                "Busy room: turn starts/s, 32 senders each watching it (send -> ack)",
                rate,
                "/s",
                fl.get("turn_tps"),
                "SQL floor",
                "- (each start is also ~256 deliveries)",
            )
        )
        self.add(
            Row(
                "busy_turn_p99",
                "Busy room: turn start p99 (send -> ack)",
                p99,
                "ms",
                fl.get("turn_p99"),
                "SQL floor p99",
                "-",
                better="lower",
            )
        )

    # --- run ---------------------------------------------------------------------------------
    async def main(self) -> int:
        stack.raise_nofile()
        started = datetime.now(UTC)
        self.meta: dict[str, Any] = {
            "started": started.isoformat(),
            "quick": self.s.quick,
            "load_before": loadavg(),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "server": self.args.server,
        }
        log(
            f"bench.perf {'quick' if self.s.quick else 'full'} run {self.run} on {self.args.server}; "
            f"load average {loadavg()}"
        )
        if os.getloadavg()[0] > 1.5:
            log("note: the machine is busy (load average > 1.5); ratios are still from this run's floors")
        urls = stack.service_urls()
        self.redis_url = urls["REDIS_URL"]
        self.db = FreshDatabase(urls["DATABASE_URL"])
        try:
            self.db.create()
            if self.args.floors:
                await self.section("floor: bare websockets relay", self.floor_relay)
                await self.section(
                    f"floor: minimal Channels consumer ({self.args.server} + pubsub layer)",
                    self.floor_channels,
                )
                await self.section("floor: Postgres", self.floor_postgres)
                self._floor_rows()
            await self.section("project: setup", self.setup_project)
            plan = [
                ("fanout", "project: fan-out", self.p_fanout),
                ("latency", "project: token latency", self.p_latency),
                ("resume", "project: resume", self.p_resume),
                ("firstload", "project: first load", self.p_first_load),
                ("idle", "project: idle sockets", self.p_idle),
                ("overload", "project: overload without loss", self.p_overload),
                ("producer", "project: producer", self.p_producer),
                ("sendfirst", "project: send -> first delta", self.p_send_first_delta),
                ("lag", "project: commit -> fan-out lag", self.p_lag),
                ("rows", "project: chunk rows/s", self.p_rows),
                ("multi", "project: many rooms streaming", self.p_multi),
                ("capacity", "project: the most rooms under 250 ms p99, 1 and 2 workers", self.p_capacity),
                ("turns", "project: turn starts", self.p_turns),
            ]
            if hasattr(self, "R"):
                for group, name, fn in plan:
                    if self.wanted(group):
                        # profiled around the measurement only (idle: on its fresh server)
                        own = group in ("fanout", "turns", "multi", "capacity", "idle")
                        await self.section(name, fn, "" if own else group)
        finally:
            self.procs.stop_all()
            with contextlib.suppress(Exception):
                from django.db import connections

                connections.close_all()
            self.db.drop()
        self.meta["load_after"] = loadavg()
        self.meta["seconds"] = (datetime.now(UTC) - started).total_seconds()
        return self.finish()

    def _floor_rows(self) -> None:
        fl = self.floor
        self.add(
            Row(
                "floor_relay_rate",
                "FLOOR relay fan-out, 50 clients (deliveries/s)",
                fl.get("relay_per_s"),
                "/s",
            )
        )
        self.add(
            Row(
                "floor_relay_cpu",
                "FLOOR relay CPU per delivery",
                fl.get("relay_cpu_us"),
                "us",
                better="lower",
            )
        )
        self.add(
            Row(
                "floor_relay_p99",
                "FLOOR relay p99, 50 clients @50/s",
                fl.get("relay_p99_50"),
                "ms",
                better="lower",
                note=f"p50 {fl.get('relay_p50_50') or 0:.2f} ms",
            )
        )
        self.add(
            Row(
                "floor_relay_p99_1",
                "FLOOR relay p99, 1 client @50/s",
                fl.get("relay_p99_1"),
                "ms",
                better="lower",
            )
        )
        self.add(
            Row(
                "floor_relay_kib",
                "FLOOR relay idle socket memory",
                fl.get("relay_kib"),
                "KiB",
                better="lower",
            )
        )
        self.add(
            Row(
                "floor_ch_rate",
                "FLOOR minimal Channels fan-out, 50 clients (deliveries/s)",
                fl.get("ch_per_s"),
                "/s",
                fl.get("relay_per_s"),
                "relay",
            )
        )
        self.add(
            Row(
                "floor_ch_cpu",
                "FLOOR minimal Channels CPU per delivery",
                fl.get("ch_cpu_us"),
                "us",
                fl.get("relay_cpu_us"),
                "relay",
                better="lower",
            )
        )
        self.add(
            Row(
                "floor_ch_p99",
                "FLOOR minimal Channels p99, 50 clients @50/s",
                fl.get("ch_p99_50"),
                "ms",
                fl.get("relay_p99_50"),
                "relay",
                better="lower",
            )
        )
        self.add(
            Row(
                "floor_ch_kib",
                "FLOOR minimal Channels idle socket memory",
                fl.get("ch_kib"),
                "KiB",
                fl.get("relay_kib"),
                "relay",
                better="lower",
            )
        )
        self.add(
            Row("floor_pg_copy50", "FLOOR Postgres COPY, batches of 50 (rows/s)", fl.get("pg_copy50"), "/s")
        )
        self.add(
            Row(
                "floor_pg_insert50",
                "FLOOR Postgres INSERT, batches of 50 (rows/s)",
                fl.get("pg_insert50"),
                "/s",
                fl.get("pg_copy50"),
                "COPY/50",
            )
        )
        self.add(
            Row("floor_turn", "FLOOR SQL turn start, 32 conns, one room (tps)", fl.get("turn_tps"), "/s")
        )

    def finish(self) -> int:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        table = text_table(self.rows)
        print()
        print(table)
        if self.errors:
            print("\nerrors:\n  " + "\n  ".join(self.errors))
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"bench-{stamp}.json"
        doc = {
            "meta": self.meta,
            "rows": [r.as_dict() for r in self.rows],
            "floors": self.floor,
            "raw": self.raw,
            "errors": self.errors,
            "profiles": self.profiles,
        }
        path.write_text(json.dumps(doc, indent=1, default=str))
        print(f"\nwritten {path.relative_to(ROOT)}")
        default = (
            not self.args.env
            and self.args.asgi == "chatproject.asgi:application"
            and self.args.server == "daphne"
        )
        if self.args.docs and not self.args.only and self.args.floors and default:
            update_doc(self.rows, self.meta, path.relative_to(ROOT))
            print(f"updated {DOC.relative_to(ROOT)}")
        judged = [r for r in self.rows if r.passed is not None]
        failed = [r.key for r in judged if not r.passed]
        print(
            f"{len(judged) - len(failed)} of {len(judged)} targets met"
            + (f"; missed: {', '.join(failed)}" if failed else "")
        )
        return 1 if self.errors else 0


START, END = "<!-- bench:table:start -->", "<!-- bench:table:end -->"


def update_doc(rows: list[Row], meta: dict[str, Any], json_path: Path) -> None:
    if not DOC.exists():
        return
    text = DOC.read_text()
    if START not in text or END not in text:
        return
    mode = "quick" if meta["quick"] else "full"
    block = (
        f"{START}\n_Latest {mode} run: {meta['started'][:19]} UTC, load average {meta['load_before']} -> "
        f"{meta.get('load_after')}, {meta['seconds']:.0f} s; raw figures in `{json_path}`._\n\n"
        f"{markdown_table(rows)}\n{END}"
    )
    head, rest = text.split(START, 1)
    DOC.write_text(head + block + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, about a minute")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated project groups (floors always run): "
        "fanout,latency,resume,firstload,idle,overload,producer,sendfirst,lag,rows,multi,capacity,turns",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy each project figure (the ASGI server, or the worker for producer figures)",
    )
    parser.add_argument(
        "--no-docs",
        dest="docs",
        action="store_false",
        help="do not rewrite the table in docs/performance.md (full runs do by default)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="experiments: extra environment of the project's processes (the docs table is not updated)",
    )
    parser.add_argument(
        "--asgi",
        default="chatproject.asgi:application",
        help="experiments: the ASGI application the server runs (the docs table is not updated)",
    )
    parser.add_argument(
        "--server",
        choices=ASGI_SERVERS,
        default="daphne",
        help="the ASGI server of the project and of the minimal Channels floor (the docs table "
        "is only updated for daphne, the default; `make run` takes ASGI_SERVER=uvicorn)",
    )
    parser.add_argument(
        "--no-floors",
        dest="floors",
        action="store_false",
        help="skip the floors (development only: the table then has no ratios)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="worker processes for the 100-rooms figure (default as `make run`: half the cores)",
    )
    parser.add_argument(
        "--multi-rooms", type=int, default=0, help="experiments: fewer rooms for the 100-rooms figure"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.docs = False
    bench = Bench(args)
    try:
        return asyncio.run(bench.main())
    except KeyboardInterrupt:
        bench.procs.stop_all()
        if bench.db is not None:
            bench.db.drop()
        return 130


if __name__ == "__main__":
    sys.exit(main())
