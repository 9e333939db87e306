"""Fuzz the GGUF reader: 100,000 seeded mutations, crashes / hangs / peak memory per category.

    .venv/bin/python benchmarks/fuzz_reader.py [--cases 100000] [--workers 2] [--inspect 200]

Every case is ``(category, number)`` from tests/support/fuzz_gguf.py, opened in-process the way
``inspect`` opens a model (``open_model``). A crash is any exception that is not a MoeStudioError;
a hang is a case over 1 s (a watchdog stops a case at 10 s); memory is the tracemalloc peak of
the case. ``--inspect N`` also runs N cases through ``moe-studio inspect`` in a subprocess and
counts exit statuses other than 0 and 1 (70 is an internal error, 134 a Qt abort).
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.*

from tests.support.fuzz_gguf import CATEGORIES, make_seeds, mutate, run_case

HANG_S = 1.0
WATCHDOG_S = 10
MEMORY_LIMIT = 200 * 1024 * 1024

_worker: dict[str, object] = {}  # per worker process: its seeds and scratch folder


class _Watchdog(Exception):  # noqa: N818 - internal signal
    pass


def _alarm(*_: object) -> None:
    raise _Watchdog


def _init() -> None:
    _worker["seeds"] = make_seeds()
    _worker["folder"] = Path(tempfile.mkdtemp(prefix="fuzz-"))
    signal.signal(signal.SIGALRM, _alarm)


def _one(job: tuple[str, int]) -> tuple[str, int, str, float, int]:
    category, number = job
    seeds = _worker["seeds"]
    folder = _worker["folder"]
    assert isinstance(seeds, tuple) and isinstance(folder, Path)
    case = mutate(seeds, category, number)
    tracemalloc.start()
    signal.alarm(WATCHDOG_S)
    start = time.perf_counter()
    try:
        outcome, _ = run_case(case, folder)
    except _Watchdog:
        outcome = "watchdog"
    finally:
        signal.alarm(0)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return category, number, outcome, elapsed, peak


def _inspect_sample(n: int) -> collections.Counter[int]:
    seeds = make_seeds()
    statuses: collections.Counter[int] = collections.Counter()
    code = "import sys; from moe_studio.core.cli.main import main; sys.exit(main(sys.argv[1:]))"
    exe = [sys.executable, "-c", code, "inspect"]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            case = mutate(seeds, CATEGORIES[i % len(CATEGORIES)], 1_000_000 + i)
            path = Path(tmp) / case.name
            path.write_bytes(case.data)
            if case.sibling is not None and case.sibling_name != case.name:
                (Path(tmp) / case.sibling_name).write_bytes(case.sibling)
            proc = subprocess.run([*exe, str(path)], capture_output=True, timeout=60, check=False)
            statuses[proc.returncode] += 1
            for p in Path(tmp).iterdir():
                p.unlink()
    return statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--inspect", type=int, default=200)
    args = parser.parse_args()
    per = -(-args.cases // len(CATEGORIES))
    jobs = [(c, n) for n in range(per) for c in CATEGORIES][: args.cases]
    stats = {c: collections.Counter() for c in CATEGORIES}
    peaks = dict.fromkeys(CATEGORIES, 0)
    slowest = dict.fromkeys(CATEGORIES, 0.0)
    examples: dict[str, list[str]] = collections.defaultdict(list)
    start = time.perf_counter()
    with multiprocessing.Pool(args.workers, initializer=_init) as pool:
        for category, number, outcome, elapsed, peak in pool.imap_unordered(_one, jobs, 64):
            s = stats[category]
            s["cases"] += 1
            if outcome in ("refused", "ok"):
                s[outcome] += 1
            elif outcome.startswith("crash"):
                s["crash"] += 1
            if outcome.startswith("crash") or outcome == "watchdog":
                if outcome == "watchdog":
                    s["hang"] += 1
                examples[category].append(f"{number}:{outcome}")
            if elapsed > HANG_S:
                s["hang"] += outcome != "watchdog"
            if peak > MEMORY_LIMIT:
                s["over_200MB"] += 1
            peaks[category] = max(peaks[category], peak)
            slowest[category] = max(slowest[category], elapsed)
    wall = time.perf_counter() - start
    print(f"{len(jobs)} cases in {wall:.1f} s on {args.workers} worker(s)")
    print(
        f"{'category':10} {'cases':>7} {'refused':>8} {'ok':>6} {'crash':>6} {'hang>1s':>8} "
        f"{'>200MB':>7} {'slowest':>9} {'peak MB':>8}"
    )
    total = collections.Counter()
    for c in CATEGORIES:
        s = stats[c]
        total.update(s)
        print(
            f"{c:10} {s['cases']:7} {s['refused']:8} {s['ok']:6} {s['crash']:6} {s['hang']:8} "
            f"{s['over_200MB']:7} {slowest[c]:8.3f}s {peaks[c] / 2**20:8.1f}"
        )
    print(
        f"{'total':10} {total['cases']:7} {total['refused']:8} {total['ok']:6} "
        f"{total['crash']:6} {total['hang']:8} {total['over_200MB']:7} "
        f"{max(slowest.values()):8.3f}s {max(peaks.values()) / 2**20:8.1f}"
    )
    for c, items in examples.items():
        print(f"  {c}: {', '.join(items[:10])}")
    if args.inspect:
        statuses = _inspect_sample(args.inspect)
        bad = sum(v for k, v in statuses.items() if k not in (0, 1))
        print(
            f"moe-studio inspect on {args.inspect} cases: exit statuses {dict(statuses)}, "
            f"{bad} other than 0/1"
        )
    return 1 if total["crash"] or total["hang"] or total["over_200MB"] else 0


if __name__ == "__main__":
    sys.exit(main())
