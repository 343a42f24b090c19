"""Summarise a py-spy collapsed-stack file (`py-spy record -f raw`): top functions by self time
and by inclusive time, and the share of samples under given substrings.

    python -m bench.perf.profile bench/results/profile-...-fanout.txt [--top 25] [--grep dispatch]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_LOC = re.compile(r" \(([^)]*?)(?::\d+)?\)$")


def short(frame: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:123)` -> `func (pkg/mod.py)`."""
    m = _LOC.search(frame)
    if not m:
        return frame
    path = m.group(1)
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{frame[: m.start()]} ({path})"


def load(path: str) -> tuple[Counter, Counter, int, list[tuple[list[str], int]]]:
    own: Counter = Counter()
    incl: Counter = Counter()
    stacks = []
    total = 0
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, n = line.rpartition(" ")
            count = int(n)
            frames = [short(x) for x in stack.split(";")]
            total += count
            own[frames[-1]] += count
            for fr in set(frames):
                incl[fr] += count
            stacks.append((frames, count))
    return own, incl, total, stacks


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("path")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--grep", action="append", default=[])
    a = p.parse_args()
    own, incl, total, stacks = load(a.path)
    print(f"{total} samples")
    print("\n== self ==")
    for fr, n in own.most_common(a.top):
        print(f"{100 * n / total:5.1f}%  {fr}")
    print("\n== inclusive ==")
    for fr, n in incl.most_common(a.top):
        print(f"{100 * n / total:5.1f}%  {fr}")
    for g in a.grep:
        n = sum(c for frames, c in stacks if any(g in fr for fr in frames))
        print(f"\nunder '{g}': {100 * n / total:.1f}%")


if __name__ == "__main__":
    main()
