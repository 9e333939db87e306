"""Planner speed on DeepSeek-V3 with four uneven GPUs; prints the figures.

    python benchmarks/plan.py
    python benchmarks/plan.py --runs 500

1. Re-estimate after one cell changes (what a drag on the tensor map costs): ``placement.assign``
   of one cell, then ``Planner.estimate`` (layer split + memory per device). Target ≤ 2 ms.
2. Auto-place on 24, 16, 48 and 12 GiB GPUs with some cells pinned. Target ≤ 50 ms.
3. ``build_command`` for the auto-placed plan (split, ``-ot`` generation with its resolve
   check, ``-ts``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from moe_studio.core.gguf.catalog import load_catalog
from moe_studio.core.gguf.model import Cell
from moe_studio.core.gguf.tensors import ROUTED_EXPERT_GROUPS
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.cmdline import build_command
from moe_studio.core.plan.placement import Plan, assign
from moe_studio.core.plan.planning import Planner, apply_pin
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB

GPUS_GIB = (24, 16, 48, 12)
PINS = ("L:0-2=CUDA2", "E:3-12=CPU", r"blk\.60\.ffn_(up|gate)_exps=CUDA0")


def median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median, 90th percentile) in milliseconds, after one untimed call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="timed runs of the fast paths")
    args = parser.parse_args()
    layout = load_catalog("deepseek-v3")
    gpus = tuple(
        Device(f"CUDA{i}", DeviceKind.CUDA, gib * GiB, label=f"{gib} GiB GPU", index=i)
        for i, gib in enumerate(GPUS_GIB)
    )
    rig = Rig("four uneven GPUs", HostInfo(ram_total=512 * GiB, cores_physical=32), gpus)
    settings = Settings(ctx=32768, cache_type_k="q8_0")
    planner = Planner(layout, rig, settings)
    print(
        f"{layout.name}: {len(layout.tensors)} tensors, {len(layout.cells)} cells; GPUs "
        + ", ".join(f"{g} GiB" for g in GPUS_GIB)
    )

    pinned: Plan = planner.initial()
    for rule in PINS:
        pinned = apply_pin(layout, pinned, rule).after
    auto_ms = median_ms(lambda: planner.auto_place(pinned), max(5, args.runs // 20))
    placed = planner.auto_place(pinned).plan

    expert_cells: list[Cell] = [c for c in layout.cells if c[1] in ROUTED_EXPERT_GROUPS]
    step = iter(range(10**9))

    def one_cell_edit() -> None:
        i = next(step)
        cell = expert_cells[i % len(expert_cells)]
        target = ("CPU", "CUDA0", "CUDA1", "CUDA2", "CUDA3")[i % 5]
        planner.estimate(assign(layout, placed, [cell], target).after)

    planner.estimate(placed)  # fills the settings-only caches, as the GUI's first estimate does
    edit_ms = median_ms(one_cell_edit, args.runs)
    estimate_ms = median_ms(lambda: planner.estimate(placed), args.runs)
    command_ms = median_ms(
        lambda: build_command(layout, placed, rig, settings), max(5, args.runs // 10)
    )
    command = build_command(layout, placed, rig, settings)

    print(f"{'':34}{'median':>10}{'p90':>10}")
    rows = [
        ("one-cell edit: assign + estimate", edit_ms, "target ≤ 2 ms"),
        ("estimate alone", estimate_ms, ""),
        (f"auto-place, {len(PINS)} pin rules", auto_ms, "target ≤ 50 ms"),
        ("build_command", command_ms, ""),
    ]
    for name, (median, p90), target in rows:
        print(f"  {name:32}{median:8.2f} ms{p90:8.2f} ms   {target}")
    split, est = planner.estimate(placed)
    print(
        f"auto-placed: -ngl {split.ngl}, {len(command.overrides.rules)} -ot rules; "
        + ", ".join(f"{d.name} {d.total / GiB:.1f}/{d.usable / GiB:.1f} GiB" for d in est.devices)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
