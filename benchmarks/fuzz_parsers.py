"""Fuzz every text parser but the GGUF reader: seeded mutations, outcomes, time and memory.

    .venv/bin/python benchmarks/fuzz_parsers.py [--cases 2000] [--only command,ot_regex]

Cases come from tests/support/fuzz_parsers.py (case ``n`` of a parser is the same text on every
machine). Per parser it prints: cases, refused cleanly (one of our MoeStudioError sentences),
accepted, crashes (any other exception: a traceback the user would see), cases over 1 s (a
watchdog stops a case at 5 s and counts it as a hang) and the largest tracemalloc peak of one
case. The hostile-server cases for remote headers are in tests/core/remote/test_fuzz_remote.py
and benchmarks/fuzz_remote.py.
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.*

from tests.support.fuzz_parsers import TARGETS, Outcome, case_text, run_case

SLOW_S = 1.0
WATCHDOG_S = 5


class _Watchdog(BaseException):
    pass


def _alarm(*_: object) -> None:
    raise _Watchdog


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per parser")
    parser.add_argument("--only", default="", help="comma-separated parser names")
    parser.add_argument("--show", type=int, default=3, help="crash kinds shown per parser")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(TARGETS)
    signal.signal(signal.SIGALRM, _alarm)
    print(
        f"{'parser':16} {'cases':>6} {'refused':>8} {'accepted':>9} {'crashes':>8} "
        f"{'>1 s':>5} {'hangs':>6} {'peak MiB':>9} {'total s':>8}"
    )
    total_crashes = 0
    for name in names:
        target = TARGETS[name]
        target.seeds()  # built once, outside the timings
        counts: collections.Counter[str] = collections.Counter()
        kinds: collections.Counter[str] = collections.Counter()
        slow = hangs = 0
        peak = 0
        began = time.perf_counter()
        for number in range(args.cases):
            text = case_text(target, number)
            tracemalloc.start()
            signal.alarm(WATCHDOG_S)
            start = time.perf_counter()
            try:
                outcome = run_case(target, text)
            except _Watchdog:
                outcome = Outcome("hang", repr(text[:100]))
                hangs += 1
            finally:
                signal.alarm(0)
            took = time.perf_counter() - start
            peak = max(peak, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            slow += took > SLOW_S
            counts[outcome.kind] += 1
            if outcome.kind in ("crash", "hang"):
                kinds[f"{outcome.kind}: {outcome.detail[:110]}"] += 1
        total_crashes += counts["crash"] + hangs
        print(
            f"{name:16} {args.cases:6} {counts['refused']:8} {counts['accepted']:9} "
            f"{counts['crash']:8} {slow:5} {hangs:6} {peak / 2**20:9.1f} "
            f"{time.perf_counter() - began:8.1f}"
        )
        for kind, n in kinds.most_common(args.show):
            print(f"    {n} × {kind}")
    return 1 if total_crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
