"""Our estimate against published real CUDA runs: the error distribution per term.

    python benchmarks/cuda_corpus.py            # summary per term and the worst points
    python benchmarks/cuda_corpus.py --all      # every point

Runs live in ``tests/data/cuda_corpus`` (see ``tests/support/cuda_corpus.py``;
``tests/core/test_cuda_corpus.py`` asserts the same points). "claimed" rows count only the
points whose engine build the compute model says it describes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.*

from tests.support.cuda_corpus import Point, all_points, load_runs

KINDS = ("weights", "kv", "compute GPU", "compute host")


def summary(label: str, points: list[Point]) -> str:
    if not points:
        return f"  {label:22s}   0 points"
    errors = [abs(p.error_pct) for p in points]
    within = sum(e <= 10 for e in errors) / len(errors)
    signed = statistics.median(p.error_pct for p in points)
    return (
        f"  {label:22s} {len(points):3d} points  median |error| {statistics.median(errors):5.1f} %"
        f"  (signed {signed:+5.1f} %)  within ±10 %: {within:4.0%}  worst {max(errors):5.1f} %"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="print every point")
    args = parser.parse_args()
    runs = load_runs()
    points = all_points()
    print(
        f"{len(runs)} runs, {len(points)} points "
        f"({sum(p.term == 'compute' for p in points)} compute)"
    )
    for kind in KINDS:
        chosen = [p for p in points if p.kind == kind]
        print(summary(kind, chosen))
        claimed = [p for p in chosen if p.claimed]
        if claimed:
            print(summary(f"{kind} (claimed)", claimed))
    shown = points if args.all else sorted(points, key=lambda p: -abs(p.error_pct))[:10]
    print()
    print("every point:" if args.all else "worst points:")
    width = max((len(p.name) for p in shown), default=10)
    for p in shown:
        tol = "-" if p.tolerance_pct is None else f"{p.tolerance_pct:g} %"
        mark = "claimed" if p.claimed else "older build"
        print(
            f"  {p.name:{width}}  {p.reported_mib:9.2f}  {p.ours_mib:9.2f}  "
            f"{p.error_pct:+7.1f} %  tol {tol:>5}  {mark}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
