"""`python -m bench.chaos [--duration 180] [--rooms 20] [--clients 4] [--seed N] [--keep]`

Set up a private stack, drive it under faults for `--duration` seconds, settle, check every
client against the database, print one table (and every violation), write the result as JSON
to bench/results/chaos-<timestamp>.json. Exit code 0 iff there is no violation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.chaos.faults import CLIENT_FAULTS, SYSTEM_FAULTS
from bench.chaos.stack import (
    ROOT,
    AppProcesses,
    ChaosDatabase,
    ChaosRedis,
    app_env,
    base_database_url,
    migrate,
)

log = logging.getLogger("bench.chaos")
RESULTS = ROOT / "bench" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=180.0, help="seconds of traffic under faults")
    p.add_argument("--rooms", type=int, default=20)
    p.add_argument("--clients", type=int, default=4, help="clients per room")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--keep", action="store_true", help="keep the database and the logs")
    p.add_argument("--lease-timeout", type=float, default=4.0)
    p.add_argument("--settle", type=float, default=120.0, help="seconds for every turn to end")
    p.add_argument(
        "--recovery-slack",
        type=float,
        default=3.0,
        help="check k: a lost worker's turn must move on within lease + one sweep + this",
    )
    p.add_argument("--no-faults", action="store_true", help="traffic only (a baseline)")
    p.add_argument(
        "--faults",
        default="",
        help="comma-separated fault kinds to inject (default: all): "
        + ", ".join([*SYSTEM_FAULTS, *CLIENT_FAULTS]),
    )
    p.add_argument("--redis-volatile", action="store_true", help="our Redis keeps nothing across restarts")
    p.add_argument("-v", "--verbose", action="store_true", help="log every fault as it happens")
    args = p.parse_args(argv)
    unknown = {k.strip() for k in args.faults.split(",") if k.strip()} - {*SYSTEM_FAULTS, *CLIENT_FAULTS}
    if unknown:
        p.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    return args


class ChaosRun:
    """One run: setup, drive under faults, settle, check, report, clean up."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
        self.rng = random.Random(self.seed)
        self.run_id = uuid.uuid4().hex[:8]
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"chaos-{self.run_id}-"))
        self.db: ChaosDatabase | None = None
        self.redis: ChaosRedis | None = None
        self.apps: AppProcesses | None = None
        self.fake: Any = None
        self.injector: Any = None
        self.clients: list[Any] = []
        self.counts: Counter[str] = Counter()
        self.notes: list[str] = []
        self.timings: dict[str, float] = {}
        self.redis_url = ""
        self.queue_name = ""
        self.queue_samples: list[tuple[float, int]] = []
        self.probes: list[dict[str, Any]] = []
        self.answers_done = asyncio.Event()
        self.answerers: list[asyncio.Task[None]] = []
        self.agent_room_ids: list[int] = []

    # --- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        t0 = time.monotonic()
        server_url, source = base_database_url(ROOT / ".devdata")
        self.db = ChaosDatabase(server_url)
        self.db.create()
        self.notes.append(f"database {self.db.name} on {source}")
        self.timings["setup_db_s"] = round(time.monotonic() - t0, 1)
        if os.environ.get("REDIS_URL"):
            redis_url = os.environ["REDIS_URL"]
            self.notes.append("REDIS_URL given: the Redis restart fault is skipped")
        else:
            self.redis = ChaosRedis(self.run_dir / "redis", persist=not self.args.redis_volatile)
            self.redis.start()
            redis_url = self.redis.url
            self.notes.append(
                f"own redis-server on port {self.redis.port}"
                f" ({'volatile' if self.args.redis_volatile else 'AOF'})"
            )
        from tests.fakellm import FakeLLM

        self.fake = FakeLLM(delay=0.02).start()
        env = app_env(
            database_url=self.db.url,
            redis_url=redis_url,
            llm_url=self.fake.base_url,
            lease_timeout=self.args.lease_timeout,
            run_id=self.run_id,
        )
        logdir = self.run_dir / "logs"
        logdir.mkdir()
        self.redis_url, self.queue_name = redis_url, env["CELERY_QUEUE"]
        t1 = time.monotonic()
        migrate(env, logdir)
        self.timings["setup_migrate_s"] = round(time.monotonic() - t1, 1)
        for key in (
            "DATABASE_URL",
            "REDIS_URL",
            "CELERY_BROKER_URL",
            "CELERY_QUEUE",
            "CHANNEL_PREFIX",
            "LEASE_TIMEOUT",
            "DJANGO_SETTINGS_MODULE",
        ):
            os.environ[key] = env[key]
        import django

        django.setup()  # its LOGGING resets levels: ours again
        logging.getLogger("bench.chaos").setLevel(logging.INFO if self.args.verbose else logging.WARNING)
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # our own queries during pg_refuse
        specs = self._make_rooms()
        self.apps = AppProcesses(env, logdir)
        t1 = time.monotonic()
        self.apps.start_all()
        self.timings["setup_processes_s"] = round(time.monotonic() - t1, 1)
        self._make_clients(specs)
        self.timings["setup_s"] = round(time.monotonic() - t0, 1)

    def _make_rooms(self) -> list[Any]:
        """Users with tokens, and rooms (half continue a lost answer, half mark it interrupted)."""
        from django.contrib.auth import get_user_model

        from bench.chaos.driver import ClientSpec
        from rooms.models import Room
        from rooms.services import room_create, token_create

        users = get_user_model().objects
        specs = []
        for r in range(self.args.rooms):
            owner = None
            recovery = Room.Recovery.CONTINUE if r % 2 == 0 else Room.Recovery.INTERRUPT
            room = None
            for c in range(self.args.clients):
                name = f"r{r:02d}c{c}"
                # no password (tokens only): hashing 80 of them costs a minute on 2 busy cores
                user = users.create_user(username=f"{name}-{self.run_id}", password=None, first_name=name)
                _, token = token_create(user=user, name="chaos")
                if room is None:
                    owner = user
                    room = room_create(owner=owner, title=f"chaos {r:02d}")
                    Room.objects.filter(pk=room.pk).update(recovery=recovery)
                specs.append(ClientSpec(name, room.pk, room.slug, user.pk, token, user == owner))
        self.agent_room_ids = self._make_agents([s.room_id for s in specs])
        return specs

    def _make_agents(self, room_ids: list[int]) -> list[int]:
        """Two public rooms set up as agents (no client in them), which every room may call."""
        from django.contrib.auth import get_user_model

        from agents.models import Agent, RoomAgent
        from rooms.services import room_create

        owner = get_user_model().objects.create_user(username=f"agents-{self.run_id}", password=None)
        agents = []
        for name in ("researcher", "analyst"):
            room = room_create(owner=owner, title=f"chaos {name}", system_prompt=f"You are the {name}.")
            agents.append(Agent.objects.create(room=room, name=name, description=f"The {name}."))
        RoomAgent.objects.bulk_create(
            [RoomAgent(room_id=r, agent=a) for r in sorted(set(room_ids)) for a in agents]
        )
        return [a.room_id for a in agents]

    def _make_clients(self, specs: list[Any]) -> None:
        from bench.chaos.driver import ChaosClient

        assert self.apps is not None
        apps = self.apps

        def ports() -> list[int]:
            return list(apps.web_ports.values())

        self.clients = [ChaosClient(s, ports, random.Random(self.rng.random()), self.counts) for s in specs]

    # --- drive and settle ---------------------------------------------------------------------

    async def drive_and_settle(self) -> None:
        from bench.chaos.faults import FaultInjector

        assert self.apps is not None and self.db is not None
        self.injector = FaultInjector(
            self.apps,
            self.db,
            self.redis,
            self.clients,
            random.Random(self.rng.random()),
            self.args.lease_timeout,
            only=frozenset(k.strip() for k in self.args.faults.split(",") if k.strip()) or None,
        )
        stop, done = asyncio.Event(), asyncio.Event()
        sampler = asyncio.create_task(self._sample_queue(done))
        tasks = [asyncio.create_task(c.run(stop)) for c in self.clients]
        # the clients' tool results and approvals go on through the settle phase
        self.answerers = [asyncio.create_task(c.answer_loop(stop, self.answers_done)) for c in self.clients]
        if not self.args.no_faults:
            tasks += [
                asyncio.create_task(self.injector.run_system(stop)),
                asyncio.create_task(self.injector.run_clients(stop)),
            ]
        t0 = time.monotonic()
        print(
            f"chaos: driving {len(self.clients)} clients in {self.args.rooms} rooms for "
            f"{self.args.duration:.0f}s (seed {self.seed}, logs {self.run_dir})",
            flush=True,
        )
        await asyncio.sleep(self.args.duration)
        stop.set()
        await asyncio.gather(*tasks)
        self.timings["drive_s"] = round(time.monotonic() - t0, 1)
        try:
            await self._settle()
        finally:
            done.set()
            await sampler

    async def _settle(self) -> None:
        """Nothing broken stays broken, every send is answered, every turn ends, a probe message
        reaches every open socket live, and every client reconnects for its last word."""
        assert self.injector is not None
        t1 = time.monotonic()
        fixed = await self.injector.restore()
        if fixed:
            self.notes.append("restored after the drive: " + ", ".join(fixed))
        deadline = time.monotonic() + 60
        await asyncio.gather(*(c.settle(deadline) for c in self.clients))
        self.timings["answers_s"] = round(time.monotonic() - t1, 1)
        t2 = time.monotonic()
        open_turns = await self._wait_turns_terminal(self.args.settle + self.args.lease_timeout)
        self.timings["turns_terminal_s"] = round(time.monotonic() - t2, 1)
        if open_turns:
            self.notes.append(f"{open_turns} turns not terminal after {self.args.settle:.0f}s + lease")
            self.notes += self._wedged_workers()
        else:
            t3 = time.monotonic()
            self.probes = await self._probe()
            self.timings["probe_s"] = round(time.monotonic() - t3, 1)
            await self._wait_turns_terminal(30)
        self.answers_done.set()
        await asyncio.gather(*self.answerers)
        pending = sum(c.answers_pending for c in self.clients)
        if pending:
            self.notes.append(f"{pending} tool answers still pending after the settle phase")
        await self.injector.wait_watchers(5)
        await asyncio.sleep(1.0)  # the last broadcasts after commit
        deadline = time.monotonic() + 60
        results = await asyncio.gather(*(c.final_sync(deadline) for c in self.clients))
        if not all(results):
            self.notes.append(f"{results.count(False)} clients could not reconnect for the final sync")
        self.timings["settle_s"] = round(time.monotonic() - t1, 1)

    async def _probe(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """One short message per room once the faults are over: every socket still open must see
        its turn end without asking (no pings now): the broadcast path recovered."""
        from bench.chaos.driver import TERMINAL

        async def one(room_clients: list[Any]) -> dict[str, Any]:
            live = [c for c in room_clients if c.connected]
            result: dict[str, Any] = {"room": room_clients[0].spec.slug, "ok": True, "missing": []}
            if not live:
                return result | {"skipped": "no client connected"}
            sockets = {c.spec.name: c.rc.ws for c in live}
            sender = live[0]
            content = f"{sender.spec.name} probe !tokens=3 !delay=5"
            t0 = time.monotonic()
            client_id = await sender.rc.send(content)
            sender.sent[client_id] = content
            try:
                ack = await sender.rc.wait_ack(client_id, timeout=timeout)
            except Exception as exc:
                return result | {"ok": False, "detail": f"no ack: {exc!r}"}

            def seen(c: Any) -> bool:
                return any(
                    t["trigger_message_id"] == ack["message_id"] and t["status"] in TERMINAL
                    for t in c.rc.state.turns.values()
                )

            def watching() -> list[Any]:
                return [c for c in live if c.rc.ws is sockets[c.spec.name] and c.connected]

            while time.monotonic() - t0 < timeout and not all(seen(c) for c in watching()):
                await asyncio.sleep(0.05)
            missing = [f"{c.spec.name} ({c.rc.ws_url})" for c in watching() if not seen(c)]
            return result | {
                "ok": not missing,
                "missing": missing,
                "latency_s": round(time.monotonic() - t0, 2),
                "sockets": len(watching()),
            }

        by_room: dict[int, list[Any]] = {}
        for c in self.clients:
            by_room.setdefault(c.spec.room_id, []).append(c)
        return list(await asyncio.gather(*(one(cs) for cs in by_room.values())))

    async def _sample_queue(self, done: asyncio.Event) -> None:
        """The length of the Celery queue, every second (kicks and sweeps waiting for a slot)."""
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1)
        t0 = time.monotonic()
        while not done.is_set():
            try:
                n = await asyncio.to_thread(client.llen, self.queue_name)
                self.queue_samples.append((round(time.monotonic() - t0, 1), int(n)))
            except redis.RedisError:
                pass
            try:
                await asyncio.wait_for(done.wait(), 1.0)
            except TimeoutError:
                pass
        client.close()

    async def _wait_turns_terminal(self, timeout: float) -> int:
        from asgiref.sync import sync_to_async

        def open_turns() -> int:
            from agents.models import Turn

            # parked too: the clients answer every call that waits on them, even now
            return Turn.objects.filter(status__in=("queued", "running", "parked")).count()

        deadline = time.monotonic() + timeout
        left = -1
        while time.monotonic() < deadline:
            try:
                left = await sync_to_async(open_turns, thread_sensitive=True)()
            except Exception:
                from django.db import close_old_connections

                await sync_to_async(close_old_connections, thread_sensitive=True)()
            if left == 0:
                return 0
            await asyncio.sleep(0.5)
        return left

    # --- check and report ---------------------------------------------------------------------

    def check(self) -> dict[str, Any]:
        from django.db import close_old_connections

        from bench.chaos.checker import Checker, ClientRecord, load_rooms

        close_old_connections()
        records = [
            ClientRecord(
                c.spec.name,
                c.spec.room_id,
                c.spec.user_id,
                c.rc.frames,
                c.rc.state,
                c.rc.acks,
                c.sent,
                c.rejected,
                c.unanswered,
                c.answers_refused,
            )
            for c in self.clients
        ]
        rooms = load_rooms(sorted({c.spec.room_id for c in self.clients}))
        agent_rooms = load_rooms(self.agent_room_ids)
        assert self.injector is not None
        bound = self.args.lease_timeout + 1.0 + self.args.recovery_slack  # SWEEP_INTERVAL is 1 s
        report = Checker(
            records,
            rooms,
            probes=self.probes,
            recoveries=self.injector.recoveries,
            recovery_bound=bound,
            db_outages=[(e["t"], e["hold_s"]) for e in self.injector.timeline if e["kind"] == "pg_refuse"],
            tool_kills=self.injector.tool_kills,
            parked_kills=self.injector.parked_kills,
            agent_rooms=agent_rooms,
        ).run()
        queue = [n for _, n in self.queue_samples]
        lease_lost = self._count_in_logs(r"lease lost")
        return {
            "run_id": self.run_id,
            "seed": self.seed,
            "args": vars(self.args),
            "faults": dict(sorted(self.injector.counts.items())),
            "faults_skipped": dict(sorted(self.injector.skipped.items())),
            "client_actions": dict(sorted(self.counts.items())),
            "zombie_fences": lease_lost,
            "celery_queue_max": max(queue, default=0),
            "celery_queue_mean": round(sum(queue) / len(queue), 1) if queue else 0,
            "sweeps_kicked_max": self._max_kicked(),
            "recoveries": self.injector.recoveries,
            "tool_kills": self.injector.tool_kills,
            "parked_kills": self.injector.parked_kills,
            "agent_kills": self.injector.agent_kills,
            "probes": self.probes,
            **report.stats,
            "timings": self.timings,
            "notes": self.notes,
            "violation_list": [vars(v) | {"text": str(v)} for v in report.violations],
            "timeline": sorted(self.injector.timeline, key=lambda e: e["t"]),
            "queue_samples": self.queue_samples,
            "logs": str(self.run_dir),
        }

    def _wedged_workers(self) -> list[str]:
        """Workers that are alive but whose consumer died (they take no task any more)."""
        assert self.apps is not None
        notes = []
        for name in AppProcesses.WORKERS:
            path = self.apps.logdir / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            # the log of every start of it (so a note, not a verdict)
            found = re.search(r"Unrecoverable error: .*", text)
            if found and self.apps.running(name):
                notes.append(f"{name} is alive but its consumer died: {found.group(0)[:160]} ({path})")
        return notes

    def _max_kicked(self) -> int:
        """The most rooms one sweep kicked (from the workers' task results)."""
        assert self.apps is not None
        found = [0]
        for path in self.apps.logdir.glob("worker-*.log"):
            found += [int(n) for n in re.findall(r"'kicked': (\d+)", path.read_text(errors="replace"))]
        return max(found)

    def _count_in_logs(self, pattern: str) -> int:
        assert self.apps is not None
        rx = re.compile(pattern)
        n = 0
        for path in self.apps.logdir.glob("worker-*.log"):
            n += sum(1 for line in path.read_text(errors="replace").splitlines() if rx.search(line))
        return n

    # --- clean up -----------------------------------------------------------------------------

    def cleanup(self, ok: bool) -> None:
        """Stop every process and drop the database (unless --keep); logs stay on failure."""
        if self.injector is not None:
            self.injector.restore_sync()
        if self.apps is not None:
            self.apps.stop_all()
        if self.redis is not None:
            self.redis.stop()
        if self.fake is not None:
            self.fake.stop()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        if self.db is not None and not self.args.keep:
            try:
                self.db.drop()
            except Exception as exc:
                print(f"chaos: could not drop {self.db.name}: {exc}", file=sys.stderr)
        if ok and not self.args.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        elif self.db is not None:
            print(
                f"chaos: logs kept in {self.run_dir}"
                + (f"; database {self.db.name} kept" if self.args.keep else "")
            )


def render_table(result: dict[str, Any]) -> str:
    """The one table of a run."""
    rows: list[tuple[str, str]] = []
    for kind, n in result["faults"].items():
        rows.append((f"fault: {kind}", str(n)))
    rows.append(("faults total", str(sum(result["faults"].values()))))
    rows.append(("zombie writes fenced (lease lost)", str(result["zombie_fences"])))
    lat = sorted(r["latency_s"] for r in result["recoveries"] if r["latency_s"] is not None)
    if result["recoveries"]:
        rows.append(
            (
                "lost-lease recovery s (median / max)",
                f"{lat[len(lat) // 2] if lat else '-'} / {lat[-1] if lat else '-'}",
            )
        )
    rows.append(
        ("celery queue length (mean / max)", f"{result['celery_queue_mean']} / {result['celery_queue_max']}")
    )
    rows.append(("most rooms kicked by one sweep", str(result["sweeps_kicked_max"])))
    probes = [p for p in result["probes"] if "skipped" not in p]
    rows.append(("live probe after faults (ok / rooms)", f"{sum(p['ok'] for p in probes)} / {len(probes)}"))
    actions = result["client_actions"]
    keys = ["sends", "sends_while_streaming", "sends_rejected"]
    keys += sorted(k for k in actions if k.startswith("sends_rejected_"))
    keys += [
        "cancel_running",
        "cancel_queued",
        "cancel_recovering",
        "recovering_seen",
        "pings",
        "connects",
        "connect_failures",
        "cancel_parked",
    ]
    keys += sorted(k for k in actions if k.startswith(("tool_sends_", "answers_")))
    keys += sorted(k for k in actions if k.startswith("errors_"))
    for key in keys:
        rows.append((f"client: {key}", str(actions.get(key, 0))))
    rows.append(("rooms", str(result["rooms"])))
    rows.append(("clients", str(result["clients"])))
    for status, n in result["turns"].items():
        rows.append((f"turns: {status}", str(n)))
    rows.append(("turns total", str(sum(result["turns"].values()))))
    rows.append(
        ("turn attempts (n: turns)", ", ".join(f"{k}: {v}" for k, v in result["turn_attempts"].items()))
    )
    for role, n in result["messages"].items():
        rows.append((f"messages: {role}", str(n)))
    rows.append(("room events / chunks", f"{result['events']} / {result['chunks']}"))
    tools = result["tools"]
    for name, states in tools["calls"].items():
        rows.append((f"calls: {name}", ", ".join(f"{k} {v}" for k, v in states.items())))
    rows.append(("calls total", str(tools["calls_total"])))
    rows.append(("notes written (launch / note)", f"{tools['notes_launch']} / {tools['notes_note']}"))
    rows.append(
        (
            "kills during a tool (launch / slow_lookup)",
            f"{tools['kills_launch']} / {tools['kills_slow_lookup']}",
        )
    )
    rows.append(
        (
            "killed launches: interrupted / done just before / notes",
            f"{tools['killed_launches_interrupted']} / {tools['killed_launches_done_first']} / "
            f"{tools['killed_launches_noted']}",
        )
    )
    rows.append(("killed reads run again (done)", str(tools["killed_reads_done"])))
    rows.append(
        ("kills while parked (turns parked then)", f"{tools['parked_kills']} ({tools['parked_at_kills']})")
    )
    rows.append(
        (
            "turns ever parked: how they ended",
            ", ".join(f"{k} {v}" for k, v in tools["parked_endings"].items()),
        )
    )
    agents = f"{tools['agent_calls']} / {tools['agent_child_runs']} / {len(result['agent_kills'])}"
    rows.append(("agent calls / child runs / kills during a child run", agents))
    rows.append(
        ("agent calls by state", ", ".join(f"{k} {v}" for k, v in tools["agent_calls_by_state"].items()))
    )
    rows.append(("calls compared client = db", str(tools["calls_compared"])))
    rows.append(("frames received / checked", f"{result['frames_received']} / {result['frames_checked']}"))
    for check, n in result["violations_by_check"].items():
        if n:
            rows.append((f"violations: {check}", str(n)))
    rows.append(("VIOLATIONS", str(result["violations"])))
    width = max(len(k) for k, _ in rows)
    vwidth = max(len(v) for _, v in rows)
    line = f"+-{'-' * width}-+-{'-' * vwidth}-+"
    out = [
        f"chaos run {result['run_id']}  seed={result['seed']}  duration={result['args']['duration']:.0f}s  "
        f"timings={result['timings']}",
        line,
    ]
    out += [f"| {k:<{width}} | {v:>{vwidth}} |" for k, v in rows]
    out.append(line)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("websockets").setLevel(logging.ERROR)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    run = ChaosRun(args)
    ok = False
    try:
        run.setup()
        asyncio.run(run.drive_and_settle())
        result = run.check()
        ok = result["violations"] == 0
        for v in result["violation_list"][:200]:
            print(v["text"])
        if len(result["violation_list"]) > 200:
            print(f"... and {len(result['violation_list']) - 200} more (see the JSON)")
        for note in result["notes"]:
            print(f"note: {note}")
        print(render_table(result))
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}-{run.run_id}.json"
        path.write_text(json.dumps(result, indent=1, default=str))
        print(f"result: {path.relative_to(ROOT)}")
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("chaos: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        run.cleanup(ok)


if __name__ == "__main__":
    sys.exit(main())
