"""Observing turns: a per-run trace (steps, model calls, tool calls), the metrics it feeds,
optional OpenTelemetry spans made from it, and the /metrics view.

A `TurnTracer` lives for one run of a turn in the worker. It notes times in memory only (a
clock read per streamed delta); at the run's end it observes the run's histograms, adds the
tool calls that settled during the run (their rows hold their times), writes one `TurnTrace`
row (shown on the turn's admin page) and, if OpenTelemetry is configured, exports the same
spans. Nothing it does can fail a turn: an error here is logged and dropped.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agents.lease import TakenTurn
from agents.models import ToolCall, Turn, TurnTrace
from rooms import metrics

log = logging.getLogger(__name__)


class TurnTracer:
    """The timings of one run of a turn, kept in memory until `finish`."""

    def __init__(self, taken: TakenTurn) -> None:
        self.taken = taken
        self.t0 = time.perf_counter()
        self.started_at = timezone.now()
        self.first_text: float | None = None
        self.last_text = 0.0
        self.deltas = 0
        self.spans: list[dict[str, Any]] = []
        self._step: dict[str, Any] | None = None

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    def text(self) -> None:
        """A streamed text delta arrived."""
        now = self._now()
        if self.first_text is None:
            self.first_text = now
        self.last_text = now
        self.deltas += 1
        if self._step is not None:
            self._step["attrs"]["deltas"] += 1
            self._step["attrs"].setdefault("first_text", round(now - self._step["start"], 4))

    def step_start(self, step: int) -> None:
        """A model call (step `step`) starts."""
        self._step = {"name": f"step {step}: model", "kind": "model", "start": self._now(), "duration": None,
                      "attrs": {"step": step, "deltas": 0}}  # fmt: skip
        self.spans.append(self._step)

    def step_end(self, *, tool_calls: int, finish_reason: str) -> None:
        """The model call ended (with `tool_calls` calls asked for)."""
        if self._step is not None:
            self._step["duration"] = self._now() - self._step["start"]
            self._step["attrs"] |= {"tool_calls": tool_calls, "finish_reason": finish_reason}
            self._step = None

    def finish(self, status: str) -> None:
        """The run ended with `status`: observe, record, export (never raises)."""
        try:
            self._finish(status)
        except Exception as exc:  # e.g. the database is away: the turn's own end matters, not this
            log.warning("turn %s: its trace was not recorded: %s", self.taken.turn_id, exc)

    def _finish(self, status: str) -> None:
        duration = self._now()
        if self._step is not None:  # the run ended inside a model call (a fault, a cancel)
            self._step["duration"] = duration - self._step["start"]
        metrics.TURN_DURATION.observe(duration)
        if self.first_text is not None:
            metrics.TURN_FIRST_TOKEN.observe(self.first_text)
            if self.deltas > 1 and self.last_text > self.first_text:
                metrics.TURN_TOKENS_PER_SECOND.observe((self.deltas - 1) / (self.last_text - self.first_text))
        if self.taken.attempt == 1 and self.taken.next_index == 0:  # the turn's first start
            created = Turn.objects.values_list("created_at", flat=True).get(pk=self.taken.turn_id)
            metrics.TURN_QUEUE_WAIT.observe(max(0.0, (self.started_at - created).total_seconds()))
        self.spans += list(self._call_spans())
        TurnTrace.objects.create(
            turn_id=self.taken.turn_id, attempt=self.taken.attempt, status=status[:16],
            started_at=self.started_at, duration=duration, spans=self.spans,
        )  # fmt: skip
        connection.close()  # a threads worker gives the connection back between turns
        if settings.OTEL_ENABLED:
            otel_export(self, status=status, duration=duration)

    def _call_spans(self) -> Iterator[dict[str, Any]]:
        """The calls of this turn that settled during this run, as spans; their metrics too."""
        calls = ToolCall.objects.filter(turn_id=self.taken.turn_id, finished_at__gte=self.started_at)
        for call in calls.order_by("step", "index"):
            began = call.started_at or call.created_at
            assert call.finished_at is not None  # filtered on it
            seconds = (call.finished_at - began).total_seconds()
            if call.kind == ToolCall.Kind.SERVER and call.started_at is not None:
                metrics.TOOL_SECONDS.labels(tool=call.name).observe(seconds)
            metrics.TOOL_CALLS.labels(tool=call.name, outcome=call.state).inc()
            yield {
                "name": f"step {call.step}: {call.name}", "kind": "tool",
                "start": (began - self.started_at).total_seconds(), "duration": seconds,
                "attrs": {"step": call.step, "tool": call.name, "tool_kind": call.kind, "state": call.state,
                          "waited_for_person": call.requires_approval or call.kind == ToolCall.Kind.CLIENT},
            }  # fmt: skip


# --- OpenTelemetry (optional) ------------------------------------------------------------------


@functools.cache
def _tracer() -> Any:
    """The process's tracer: an SDK provider with the configured exporter (set up once)."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "roomchat")})
    )
    exporter: SpanExporter
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # reads the standard OTEL_EXPORTER_OTLP_* variables
    else:
        exporter = ConsoleSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return trace.get_tracer("roomchat.agents")


def otel_export(tracer: TurnTracer, *, status: str, duration: float) -> None:
    """The run's trace as OpenTelemetry spans: a turn span with one child per step and call."""
    from opentelemetry import trace

    def ns(offset: float) -> int:
        return int((tracer.started_at.timestamp() + offset) * 1e9)

    otel = _tracer()
    root = otel.start_span("turn", start_time=ns(0), attributes={
        "roomchat.turn_id": tracer.taken.turn_id, "roomchat.room_id": tracer.taken.room_id,
        "roomchat.attempt": tracer.taken.attempt, "roomchat.status": status,
    })  # fmt: skip
    context = trace.set_span_in_context(root)
    for span in tracer.spans:
        attrs = {
            f"roomchat.{k}": v for k, v in span["attrs"].items() if isinstance(v, str | int | float | bool)
        }
        child = otel.start_span(span["name"], context=context, start_time=ns(span["start"]), attributes=attrs)
        child.end(end_time=ns(span["start"] + (span["duration"] or 0.0)))
    root.end(end_time=ns(duration))


# --- /metrics ----------------------------------------------------------------------------------


class DatabaseCollector(Collector):
    """Gauges read from the database at scrape time (the same for every process)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        waiting = ToolCall.objects.filter(state=ToolCall.State.AWAITING_APPROVAL).count()
        yield GaugeMetricFamily("roomchat_approvals_waiting", "Tool calls waiting for a person's approval",
                                value=waiting)  # fmt: skip
        turns = GaugeMetricFamily(
            "roomchat_turns_now", "Turns queued, running or parked now", labels=["status"]
        )
        counts = dict(
            Turn.objects.filter(status__in=("queued", "running", "parked"))
            .order_by()
            .values_list("status")
            .annotate(n=Count("id"))
        )
        for status in ("queued", "running", "parked"):
            turns.add_metric([status], counts.get(status, 0))
        yield turns


_LIVE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")


def _forget_dead_processes(directory: Path) -> None:
    """A process that died without saying so (SIGKILL) leaves its live gauges' files: drop them,
    or its sockets would be counted as connected for ever."""
    for path in directory.glob("gauge_live*.db"):
        found = _LIVE_FILE.match(path.name)
        if found is None:
            continue
        pid = int(found[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, str(directory))
        except PermissionError:
            pass


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Every process's metrics added up, and the database's gauges, in Prometheus's format."""
    if not settings.METRICS_TOKEN:
        if not settings.DEBUG:  # open only in development: a deployment names its scraper's token
            return HttpResponse("set METRICS_TOKEN to read /metrics\n", status=403, content_type="text/plain")
    elif not hmac.compare_digest(
        request.headers.get("Authorization", "").encode(), f"Bearer {settings.METRICS_TOKEN}".encode()
    ):
        return HttpResponse("a bearer token is needed\n", status=401, content_type="text/plain")
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    _forget_dead_processes(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    registry.register(DatabaseCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def trace_rows(trace: TurnTrace) -> list[dict[str, Any]]:
    """A trace's spans for a table: offsets and durations in ms, and a bar's place in percent."""
    total = max(
        trace.duration, max((s["start"] + (s["duration"] or 0) for s in trace.spans), default=0), 1e-6
    )
    rows = []
    for span in sorted(trace.spans, key=lambda s: s["start"]):
        length = span["duration"] or 0.0
        rows.append({
            "name": span["name"], "kind": span["kind"], "start_ms": round(span["start"] * 1000),
            "duration_ms": round(length * 1000), "left": round(100 * max(0.0, span["start"]) / total, 1),
            "width": max(0.5, round(100 * length / total, 1)),
            "attrs": ", ".join(f"{k}={v}" for k, v in span["attrs"].items()),
        })  # fmt: skip
    return rows
