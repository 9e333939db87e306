"""Our compute-buffer model and ik's layer sizing against sizes real engines printed.

``resources/calibration/compute.json`` holds calibration points: one engine, model, command and
device each, with the ``compute buffer size`` the engine printed and the tolerance our model must
meet (``null`` for published points that describe another engine version, with the reason).
``layer_sizes.json`` holds ik's own per-layer estimate lines (``Layer %2d: model, KV, total
compute MiB``) for the same runs. Points on ``fixture:tiny-<arch>`` were measured on
``tests.support.tiny_models.write_tiny_model(path, arch)``; ``catalog:`` models are built-in
layouts. ``tests/engine/compute_calibration.py`` records the measured points again.

``benchmarks/calibration.py`` prints the whole table from the helpers here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.model import ModelLayout, open_model
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.cmdline import import_command, imported_split
from moe_studio.core.plan.layers import ik_layer_sizes
from moe_studio.core.plan.memory import engine_settings, estimate
from moe_studio.core.units import GiB, MiB
from tests.support.tiny_models import write_tiny_model

CALIBRATION = Path(__file__).resolve().parents[2] / "resources" / "calibration"
FIXTURE = "fixture:tiny-"
# Two-decimal MiB in the log: a figure is known to ±0.005 MiB.
LOG_ROUNDING_MIB = 0.006

Point = dict[str, Any]
LayoutFor = Callable[[str], ModelLayout]


def load_points(name: str = "compute.json") -> list[Point]:
    """The points of one calibration file."""
    points: list[Point] = json.loads((CALIBRATION / name).read_text())
    return points


def point_id(point: Point) -> str:
    return f"{point['run']}@{point['device']}"


def layouts(folder: Path) -> LayoutFor:
    """``model`` field → layout; tiny fixtures are written into ``folder`` on first use."""

    @cache
    def layout_for(model: str) -> ModelLayout:
        if model.startswith(FIXTURE):
            arch = model.removeprefix(FIXTURE)
            return open_model(write_tiny_model(folder / f"tiny-{arch}.gguf", arch))
        return catalog.load_catalog(model)

    return layout_for


def our_compute_mib(point: Point, layout: ModelLayout) -> float:
    """Our compute-buffer figure for the point's device: import its command, estimate."""
    gpus = tuple(
        Device(g["name"], DeviceKind.CUDA, g["memory_mib"] * MiB, index=i)
        for i, g in enumerate(point.get("gpus", ()))
    )
    rig = Rig("calibration", HostInfo(ram_total=1024 * GiB), gpus)
    dialect = "ik" if point["engine"] == "ik_llama.cpp" else "mainline"
    plan, imported, full_rig = import_command(point["command"], layout, rig, dialect=dialect)
    split = imported_split(layout, imported, full_rig)
    est = estimate(layout, plan, full_rig, imported.settings, split.kv_devices)
    budget = est.device(point["device"])
    assert budget is not None, f"{point['device']} is not a device of the imported command"
    return budget.compute / MiB


def error_pct(reported: float, ours: float) -> float:
    return (ours - reported) / reported * 100


COMPUTE_POINTS = load_points()
LAYER_POINTS = load_points("layer_sizes.json")


@pytest.fixture(scope="module")
def layout_for(tmp_path_factory: pytest.TempPathFactory) -> LayoutFor:
    return layouts(tmp_path_factory.mktemp("calibration-models"))


def test_points_say_where_they_come_from() -> None:
    required = {"source", "engine", "version", "model", "run", "settings", "command", "device"}
    for point in COMPUTE_POINTS:
        assert required <= point.keys(), point_id(point)
        assert point["reported_mib"] > 0
        assert point["confidence"]
        assert point["tolerance_note"], "every tolerance (or its absence) needs a reason"
        assert point["tolerance_pct"] is None or point["tolerance_pct"] > 0
    assert len({point_id(p) for p in COMPUTE_POINTS}) == len(COMPUTE_POINTS)


@pytest.mark.parametrize("point", COMPUTE_POINTS, ids=point_id)
def test_compute_model_within_documented_tolerance(point: Point, layout_for: LayoutFor) -> None:
    ours = our_compute_mib(point, layout_for(point["model"]))
    assert ours > 0
    tolerance = point["tolerance_pct"]
    if tolerance is None:
        return  # a published reference for another engine version: reported, not asserted
    reported = point["reported_mib"]
    # Tiny buffers are printed to 0.01 MiB: allow that rounding on top of the percentage.
    allowed = max(reported * tolerance / 100, LOG_ROUNDING_MIB)
    assert abs(ours - reported) <= allowed, (
        f"{point_id(point)}: engine {reported:.2f} MiB, ours {ours:.2f} MiB "
        f"({error_pct(reported, ours):+.1f} %, tolerance {tolerance} %: {point['tolerance_note']})"
    )


@pytest.mark.parametrize("point", LAYER_POINTS, ids=lambda p: p["run"])
def test_ik_layer_sizes_replica_matches_ik(point: Point, layout_for: LayoutFor) -> None:
    layout = layout_for(point["model"])
    imported = import_command(point["command"], layout, Rig("c", HostInfo(0)), dialect="ik")[1]
    ngl = imported.ngl if imported.ngl is not None else 999
    sizes, max_compute = ik_layer_sizes(layout, engine_settings(layout, imported.settings, ngl))
    rows = point["layers"]
    assert len(rows) == layout.n_layer + 1
    for il, (row, ours) in enumerate(zip(rows, sizes, strict=True)):
        total = row[2]  # model + KV (+ the output layer's logits excess)
        assert abs(total - ours / MiB) <= LOG_ROUNDING_MIB, f"layer {il}: {row} vs {ours / MiB}"
    worst = max(row[3] for row in rows[:-1])
    assert abs(worst - max_compute / MiB) <= LOG_ROUNDING_MIB
