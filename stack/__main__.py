"""``python -m stack run|services|supervise``: the command line of ``make run`` and friends.

``run`` (``make run``):

1. starts the embedded PostgreSQL/Redis (``stack.services``) unless DATABASE_URL/REDIS_URL are
   set (in the environment or in .env), and hands their URLs to every process;
2. ``manage.py migrate`` and ``collectstatic``;
3. runs the stack's processes (``stack.processes``) under the supervisor (``stack.supervisor``),
   their output prefixed with their name; a crashed one is restarted after a back-off;
4. Ctrl-C / SIGTERM: stops the processes (SIGKILL after a grace period), then the embedded
   servers this run started (servers that were already running are left alone).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from stack import services
from stack.export import FORMATS, export
from stack.processes import DEFAULT_CONCURRENCY, StackConfig, default_workers, served_origins, stack_processes
from stack.supervisor import ROOT, Plan, pids_of, run, say, wait_http


def _manage(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    if result.returncode != 0:
        for line in lines:
            say(f"{args[0]}: {line}")
        raise SystemExit(f"[stack] manage.py {' '.join(args)} failed ({result.returncode})")
    applied = [line.strip() for line in lines if line.strip().startswith("Applying ")]
    for line in applied:
        say(f"{args[0]}: {line}")
    if args[0] == "migrate":
        say("migrate: " + (f"{len(applied)} migration(s) applied" if applied else "up to date"))


def _announce_when_up(host: str, port: int) -> None:
    probe = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url_host = f"[{host}]" if ":" in host else host
    try:
        wait_http(port, probe, timeout=60)
    except TimeoutError:
        say(f"web server still not answering on {host}:{port}")
        return
    say(f"\n\n    Chat is running at http://{url_host}:{port}/ (Ctrl-C to stop)\n")


def cmd_run(args: argparse.Namespace) -> int:
    services.ensure_dotenv()
    env = dict(os.environ)
    started: list[str] = []
    data_dir = services.DEFAULT_DATA_DIR
    code = 0
    try:
        if not env.get("DATABASE_URL") or not env.get("REDIS_URL"):
            t0 = time.monotonic()
            result = services.start_missing(data_dir)
            started = result.started
            env.update(result.env)
            what = ", ".join(started) or "none (already running)"
            say(f"embedded services ready in {time.monotonic() - t0:.1f}s; started: {what}")
        env.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
        env.setdefault("ALLOWED_ORIGINS", ",".join(served_origins(args.host, args.port)))
        env["PYTHONUNBUFFERED"] = "1"
        say(f"DATABASE_URL={env['DATABASE_URL']}  REDIS_URL={env['REDIS_URL']}")
        _manage(["migrate", "--noinput"], env)
        _manage(["collectstatic", "--noinput", "--verbosity", "0"], env)

        data_dir.mkdir(parents=True, exist_ok=True)
        # /metrics adds up the files every process writes here: a new run starts from zero
        metrics_dir = Path(env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(data_dir / "metrics")))
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        config = StackConfig(
            host=args.host, port=args.port, asgi=args.asgi, workers=args.workers,
            concurrency=args.concurrency, pool=args.pool, beat=bool(args.beat),
            queue=env.get("CELERY_QUEUE") or "celery", schedule=data_dir / "celerybeat-schedule",
        )  # fmt: skip
        control = args.control or tempfile.mkdtemp(prefix="stack-run-")
        plan = Plan(stack_processes(config), env, control, host=args.host, port=args.port)

        def on_started(arbiter: Any) -> None:
            pids = pids_of(arbiter)
            say("started " + ", ".join(f"{n} (pid {', '.join(map(str, p))})" for n, p in pids.items()))
            say(f"control socket in {control} (circusctl --endpoint ipc://{control}/control status)")
            if args.asgi:
                threading.Thread(target=_announce_when_up, args=(args.host, args.port), daemon=True).start()
            else:
                say("running without a web server (Ctrl-C to stop)")

        code = run(plan, on_started)
    except KeyboardInterrupt:
        code = 130
    except SystemExit as exc:
        if isinstance(exc.code, str):
            with contextlib.suppress(OSError):
                print(exc.code, file=sys.stderr, flush=True)
        code = exc.code if isinstance(exc.code, int) else 1
    except services.ServiceError as exc:
        print(f"[stack] {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        if started:
            say("stopping embedded " + ", ".join(started))
            services.stop(data_dir, postgres="postgres" in started, redis="redis" in started)
    say("stopped" + (" (gave up on a process)" if code == 1 else ""))
    return code


def cmd_services(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    try:
        if args.action == "start":
            t0 = time.monotonic()
            result = services.start(data_dir)
            for key, value in result.env.items():
                print(f"{key}={value}")
            verb = "started " + ", ".join(result.started) if result.started else "already running"
            print(f"# {verb} ({time.monotonic() - t0:.2f}s)")
        elif args.action == "env":
            for key, value in services.start(data_dir).env.items():
                print(f"export {key}={shlex.quote(value)}")
        elif args.action == "stop":
            stopped = services.stop(data_dir)
            print("stopped " + ", ".join(stopped) if stopped else "nothing was running")
        else:
            ok = True
            for name, info in services.status(data_dir).items():
                ok &= info["running"]
                state = f"running (pid {info['pid']})" if info["running"] else "stopped"
                print(f"{name:9} {state:22} {info['url']}  data={info['data']}")
            return 0 if ok else 3
    except services.ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="the embedded services, Daphne, Celery worker, sweeper and beat")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--asgi", type=int, default=1, help="Daphne processes sharing the port (default 1)")
    p.add_argument(
        "--workers", type=int, default=default_workers(),
        help=f"Celery worker processes (default: half the cores, here {default_workers()})",
    )  # fmt: skip
    p.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY,
        help=f"turns at once per worker (default {DEFAULT_CONCURRENCY})",
    )  # fmt: skip
    p.add_argument(
        "--pool", choices=["threads", "prefork"], default="threads", help="Celery pool (default threads)"
    )
    p.add_argument("--beat", type=int, choices=[0, 1], default=1, help="run the sweeper and Celery beat")
    p.add_argument("--control", default="", help="directory of the supervisor's control socket")
    s = sub.add_parser("services", help="the embedded PostgreSQL and Redis")
    s.add_argument("action", choices=["start", "stop", "status", "env"])
    s.add_argument("--data-dir", type=Path, default=services.DEFAULT_DATA_DIR)
    e = sub.add_parser("export", help="the processes for a production process manager (docs/deploy.md)")
    e.add_argument("format", choices=FORMATS)
    e.add_argument("--host", default="0.0.0.0")
    e.add_argument("--port", type=int, default=8000, help="of the first ASGI process (then +1, +2...)")
    e.add_argument("--asgi", type=int, default=2)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    e.add_argument("--schedule", default="/var/lib/chat/celerybeat-schedule")
    b = sub.add_parser("supervise", help="run a supervisor plan file (stack.supervisor.Supervisor)")
    b.add_argument("plan", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        if args.asgi < 0 or args.workers < 0 or args.concurrency < 1:
            parser.error("--asgi/--workers must be >= 0 and --concurrency >= 1")
        return cmd_run(args)
    if args.command == "services":
        return cmd_services(args)
    if args.command == "export":
        config = StackConfig(
            host=args.host, port=args.port, asgi=args.asgi, workers=args.workers,
            concurrency=args.concurrency, schedule=Path(args.schedule),
        )  # fmt: skip
        print(export(args.format, config, workdir=ROOT), end="")
        return 0
    return run(Plan.load(args.plan))


if __name__ == "__main__":
    sys.exit(main())
