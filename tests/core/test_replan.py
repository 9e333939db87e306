"""Re-planning for another rig, and restoring cells to a saved layout (issue 11)."""

from __future__ import annotations

from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.tensors import TensorGroup
from moe_studio.core.hardware.devices import CPU_NAME, Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.autoplace import auto_place, replan_for_rig
from moe_studio.core.plan.placement import (
    assign,
    cell_device,
    device_bytes,
    initial_plan,
    restore_cells,
)
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB

G = TensorGroup


def _rig(*gpus: int) -> Rig:
    devices = tuple(
        Device(f"CUDA{i}", DeviceKind.CUDA, g * GiB, index=i) for i, g in enumerate(gpus)
    )
    return Rig("r", HostInfo(256 * GiB, cores_physical=16), devices)


def test_replan_keeps_live_pins_and_releases_pins_on_vanished_devices() -> None:
    layout = catalog.load_catalog("qwen3-30b-a3b")
    settings = Settings(ctx=8192)
    plan = auto_place(layout, initial_plan(layout), _rig(24, 24), settings).plan
    plan = assign(layout, plan, [(3, G.ATTENTION)], "CUDA0").after
    plan = assign(layout, plan, [(4, G.ATTENTION)], "CUDA1").after
    placed = replan_for_rig(layout, plan, _rig(24), settings)
    used = {d for d, n in device_bytes(layout, placed.plan).items() if n}
    assert used <= {"CUDA0", CPU_NAME}
    assert (3, G.ATTENTION) in placed.plan.pinned
    assert cell_device(layout, placed.plan, (3, G.ATTENTION)) == "CUDA0"
    assert (4, G.ATTENTION) not in placed.plan.pinned
    assert any("unpinned" in n for n in placed.notes)
    # New GPUs are filled.
    grown = replan_for_rig(layout, placed.plan, _rig(24, 24, 24), settings)
    assert {"CUDA0", "CUDA1", "CUDA2"} <= set(device_bytes(layout, grown.plan))


def test_restore_cells_takes_devices_and_pins_from_the_source() -> None:
    layout = catalog.load_catalog("qwen3-30b-a3b")
    source = assign(layout, initial_plan(layout), [(1, G.ATTENTION)], "CUDA0").after
    edited = assign(layout, source, [(1, G.ATTENTION), (2, G.ATTENTION)], "CUDA1").after
    back = restore_cells(layout, edited, source, [(1, G.ATTENTION), (2, G.ATTENTION)]).after
    assert back == source


def test_auto_place_names_the_pins_that_do_not_fit() -> None:
    from moe_studio.core.plan.placement import expert_cells

    layout = catalog.load_catalog("qwen3-30b-a3b")
    rig = _rig(8)
    plan = assign(layout, initial_plan(layout), expert_cells(layout, 0, 20), "CUDA0").after
    placed = auto_place(layout, plan, rig, Settings(ctx=8192))
    note = next(n for n in placed.notes if "cannot hold what is pinned" in n)
    assert note.startswith("CUDA0") and "Unpin layer" in note
