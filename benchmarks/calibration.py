"""Our compute-buffer model against every calibration point; prints a table.

    python benchmarks/calibration.py            # every point
    python benchmarks/calibration.py --summary  # the error distribution and the worst points

Points live in ``resources/calibration/compute.json`` (see ``tests/core/test_calibration.py``,
which asserts each point's documented tolerance with the same helpers).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.*

from tests.core.test_calibration import (
    error_pct,
    layouts,
    load_points,
    our_compute_mib,
    point_id,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", action="store_true", help="distribution and worst points")
    args = parser.parse_args()
    points = load_points()
    with tempfile.TemporaryDirectory() as tmp:
        layout_for = layouts(Path(tmp))
        rows = [(p, p["reported_mib"], our_compute_mib(p, layout_for(p["model"]))) for p in points]
    width = max(len(point_id(p)) for p in points)
    header = f"{'point':{width}}  {'reported':>9}  {'ours':>9}  {'error':>7}  {'tol':>5}"
    shown = rows
    if args.summary:
        shown = sorted(rows, key=lambda r: -abs(error_pct(r[1], r[2])))[:20]
    print(header)
    print("-" * len(header))
    for p, reported, ours in shown:
        tol = "-" if p["tolerance_pct"] is None else f"{p['tolerance_pct']:g} %"
        err = error_pct(reported, ours)
        print(f"{point_id(p):{width}}  {reported:9.2f}  {ours:9.2f}  {err:+6.1f}%  {tol:>5}")
    asserted = [abs(error_pct(r, o)) for p, r, o in rows if p["tolerance_pct"] is not None]
    print()
    print(f"{len(rows)} points, {len(asserted)} with a tolerance:")
    for limit in (1, 3, 5, 10, 25):
        within = sum(e <= limit for e in asserted)
        print(f"  within {limit:2d} %: {within:3d} ({within / len(asserted):.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
