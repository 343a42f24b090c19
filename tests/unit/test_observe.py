"""OpenTelemetry spans made from a run's trace: a `turn` span with a child per step and call."""

from __future__ import annotations

from datetime import UTC, datetime

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents import observe
from agents.lease import TakenTurn


def test_a_traced_run_becomes_a_turn_span_with_its_steps_and_calls(monkeypatch):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(observe, "_tracer", lambda: provider.get_tracer("test"))
    taken = TakenTurn(turn_id=7, room_id=3, generation=1, message_id=9, trigger_message_id=8, attempt=1,
                      next_index=0)  # fmt: skip
    tracer = observe.TurnTracer(taken)
    tracer.started_at = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    tracer.spans = [
        {"name": "step 0: model", "kind": "model", "start": 0.0, "duration": 0.5, "attrs": {"step": 0}},
        {"name": "step 0: calculator", "kind": "tool", "start": 0.5, "duration": 0.1,
         "attrs": {"tool": "calculator", "state": "done"}},
        {"name": "step 1: model", "kind": "model", "start": 0.6, "duration": 0.4, "attrs": {"step": 1}},
    ]  # fmt: skip
    observe.otel_export(tracer, status="done", duration=1.0)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"turn", "step 0: model", "step 0: calculator", "step 1: model"}
    root = spans["turn"]
    assert root.attributes["roomchat.turn_id"] == 7 and root.attributes["roomchat.status"] == "done"
    assert (root.end_time - root.start_time) == 1_000_000_000
    for name in ("step 0: model", "step 0: calculator", "step 1: model"):
        assert spans[name].parent.span_id == root.context.span_id
    call = spans["step 0: calculator"]
    assert call.attributes["roomchat.tool"] == "calculator"
    assert call.start_time - root.start_time == 500_000_000
