"""The table: rows of (figure, value, floor, ratio, target, pass/fail), printed, as JSON, as markdown."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class Row:
    key: str
    figure: str
    value: float | None
    unit: str = ""
    floor: float | None = None
    floor_name: str = ""
    target: str = ""
    # "higher" or "lower": which way is better (for the ratio's meaning)
    better: str = "higher"
    passed: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.floor:
            return None
        return self.value / self.floor

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    a = abs(v)
    if a >= 1000:
        s = f"{v:,.0f}"
    elif a >= 100:
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return f"{s} {unit}".strip()


def cells(r: Row) -> list[str]:
    ratio = r.ratio
    verdict = {True: "PASS", False: "FAIL", None: "-"}[r.passed]
    return [
        r.figure,
        fmt(r.value, r.unit),
        fmt(r.floor, r.unit) + (f" ({r.floor_name})" if r.floor_name and r.floor is not None else ""),
        "-" if ratio is None else f"{ratio:.2f}x",
        r.target or "-",
        verdict,
    ]


HEAD = ["figure", "value", "floor", "ratio", "target", "pass/fail"]


def text_table(rows: list[Row]) -> str:
    table = [HEAD] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEAD))]
    out = []
    for n, line in enumerate(table):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(rows: list[Row]) -> str:
    out = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for r in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |")
    return "\n".join(out)
