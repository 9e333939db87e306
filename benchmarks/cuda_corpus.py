"""Our estimate against published real CUDA runs: the error distribution per term.

    python benchmarks/cuda_corpus.py            # summary per term and the worst points
    python benchmarks/cuda_corpus.py --all      # every point

Runs live in ``tests/data/cuda_corpus`` (see ``tests/support/cuda_corpus.py``;
``tests/core/test_cuda_corpus.py`` asserts the same points). Each term is reported twice: on the
points whose engine build the compute model says it describes
(``moe_studio.core.plan.compute.MODELLED_BUILDS``; the issue-10 targets apply to these) and on
the points from older builds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.*

from tests.support.cuda_corpus import (
    KINDS,
    MLA_3737,
    Point,
    all_points,
    dryrun_points,
    load_runs,
)


def summary(label: str, points: list[Point]) -> str:
    if not points:
        return f"  {label:32s}   0 points"
    errors = [abs(p.error_pct) for p in points]
    within = sum(e <= 10 for e in errors) / len(errors)
    signed = statistics.median(p.error_pct for p in points)
    return (
        f"  {label:32s} {len(points):3d} points  median |error| {statistics.median(errors):5.1f} %"
        f"  (signed {signed:+6.1f} %)  within ±10 %: {within:4.0%}  worst {max(errors):6.1f} %"
    )


def row(p: Point, width: int) -> str:
    tol = "-" if p.tolerance_pct is None else f"{p.tolerance_pct:g} %"
    mark = "described" if p.claimed else "older build"
    return (
        f"  {p.name:{width}}  {p.reported_mib:9.2f}  {p.ours_mib:9.2f}  "
        f"{p.error_pct:+7.1f} %  tol {tol:>5}  {mark}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="print every point")
    parser.add_argument("--worst", type=int, default=3, help="worst points shown per term")
    args = parser.parse_args()
    runs = load_runs()
    points = all_points()
    described_runs = sum(any(p.claimed and p.run == r["id"] for p in points) for r in runs)
    print(
        f"{len(runs)} runs, {len(points)} points "
        f"({sum(p.term == 'compute' for p in points)} compute); "
        f"{described_runs} runs from builds the compute model describes"
    )
    for kind in KINDS:
        chosen = [p for p in points if p.kind == kind]
        print(summary(f"{kind} (described builds)", [p for p in chosen if p.claimed]))
        print(summary(f"{kind} (older builds)", [p for p in chosen if not p.claimed]))
    print("ik_llama.cpp 8337e4cd --dry-run on RPC devices (tests/data/mla_dryrun.json):")
    for model in ("deepseek-v3", "kimi-k2"):
        dry = dryrun_points(model)
        print(summary(f"kv ({model})", [p for p in dry if p.term == "kv"]))
        print(summary(f"compute device ({model})", [p for p in dry if p.kind == "compute GPU"]))
        print(summary(f"compute host ({model})", [p for p in dry if p.kind == "compute host"]))
    print("ik_llama.cpp 3737 (58f08e43) loading on RPC devices (tests/data/mla_dryrun_3737.json):")
    old = dryrun_points(path=MLA_3737)
    print(summary("kv (deepseek-v3)", [p for p in old if p.term == "kv"]))
    print(summary("compute device (deepseek-v3)", [p for p in old if p.kind == "compute GPU"]))
    print(summary("compute host (deepseek-v3)", [p for p in old if p.kind == "compute host"]))
    width = max((len(p.name) for p in points), default=10)
    if args.all:
        print("\nevery point:")
        for p in points:
            print(row(p, width))
        return 0
    for kind in KINDS:
        chosen = sorted((p for p in points if p.kind == kind), key=lambda p: -abs(p.error_pct))
        if chosen:
            print(f"\nworst {kind} points:")
            for p in chosen[: args.worst]:
                print(row(p, width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
