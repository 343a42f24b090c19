"""A turn's traces on its admin page: each run's steps and calls on one time line."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from agents.models import TurnTrace
from agents.observe import trace_rows


class TurnTraceInline(admin.StackedInline):
    model = TurnTrace
    extra = 0
    can_delete = False
    fields = ["attempt", "status", "started_at", "seconds", "timeline"]
    readonly_fields = ["attempt", "status", "started_at", "seconds", "timeline"]
    verbose_name = "trace of a run"
    verbose_name_plural = "traces of its runs (steps and calls, timed)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="duration")
    def seconds(self, trace: TurnTrace) -> str:
        return f"{trace.duration:.3f} s"

    @admin.display(description="steps and calls")
    def timeline(self, trace: TurnTrace) -> str:
        rows = format_html_join(
            "",
            '<tr class="span-{}"><td>{}</td><td style="text-align:right">{} ms</td>'
            '<td style="text-align:right">{} ms</td><td style="width:40%"><div style="margin-left:{}%;'
            'width:{}%;height:0.8em;background:#79aec8"></div></td><td>{}</td></tr>',
            (
                (r["kind"], r["name"], r["start_ms"], r["duration_ms"], r["left"], r["width"], r["attrs"])
                for r in trace_rows(trace)
            ),
        )
        return format_html(
            '<table class="turn-trace"><thead><tr><th>span</th><th>starts at</th><th>takes</th><th></th>'
            "<th>details</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )
