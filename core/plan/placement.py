"""A plan: which device every loaded tensor goes to, and which cells the user pinned.

Plans are immutable values. Every operation takes a plan and returns an :class:`Edit` holding the
plan before and after (so the inverse is exact, byte for byte) and the cells it touched. Devices
are named as ``-ot`` names buffer types (``CPU``, ``CUDA0``, ``RPC0[host:port]``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from moe_studio.core.errors import PlanError
from moe_studio.core.gguf.model import Cell, ModelLayout
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, ROUTED_EXPERT_GROUPS, TensorGroup
from moe_studio.core.hardware.devices import CPU_NAME

NOT_LOADED = ""  # device of tensors the engine skips (GLM nextn blocks)

# Said by auto-place and by the command builder: one sentence, so the advice shows it once.
NO_DEVICE_NOTE = (
    "This rig has no GPU or RPC device: the engine keeps every tensor on the CPU and ignores "
    "tensor overrides, so the command has none."
)


@dataclass(frozen=True, slots=True)
class Plan:
    """Device per tensor (in ``layout.tensors`` order) and the pinned cells."""

    devices: tuple[str, ...]
    pinned: frozenset[Cell] = field(default=frozenset())

    def device_of(self, index: int) -> str:
        return self.devices[index]

    def used_devices(self) -> list[str]:
        """Devices holding at least one tensor, in first-use order."""
        seen: dict[str, None] = {}
        for d in self.devices:
            if d:
                seen.setdefault(d, None)
        return list(seen)


@dataclass(frozen=True, slots=True)
class Edit:
    """The result of an operation: the plan before and after, and the cells touched."""

    before: Plan
    after: Plan
    cells: frozenset[Cell]

    def inverse(self) -> Edit:
        return Edit(self.after, self.before, self.cells)

    @property
    def changed(self) -> bool:
        return self.before != self.after


def initial_plan(layout: ModelLayout, device: str = CPU_NAME) -> Plan:
    """Every loaded tensor on ``device`` (tensors the engine skips get no device)."""
    return Plan(tuple(device if t.loaded else NOT_LOADED for t in layout.tensors))


def plan_from_mapping(
    layout: ModelLayout, mapping: dict[str, str], pinned: Iterable[Cell] = ()
) -> Plan:
    """A plan from ``tensor name → device``; tensors missing from the mapping stay on CPU."""
    return Plan(
        tuple(mapping.get(t.name, CPU_NAME) if t.loaded else NOT_LOADED for t in layout.tensors),
        frozenset(pinned),
    )


def as_mapping(layout: ModelLayout, plan: Plan) -> dict[str, str]:
    """``tensor name → device`` for every loaded tensor."""
    return {t.name: d for t, d in zip(layout.tensors, plan.devices, strict=True) if d}


def cell_device(layout: ModelLayout, plan: Plan, cell: Cell) -> str | None:
    """The device of a cell, or ``None`` when its tensors are split over several devices."""
    devices = {plan.devices[i] for i in layout.cells.get(cell, ()) if plan.devices[i]}
    if len(devices) == 1:
        return next(iter(devices))
    return None


def cell_devices(layout: ModelLayout, plan: Plan, cell: Cell) -> Counter[str]:
    """Bytes per device within a cell."""
    out: Counter[str] = Counter()
    for i in layout.cells.get(cell, ()):
        if plan.devices[i]:
            out[plan.devices[i]] += layout.tensors[i].nbytes
    return out


def _check_cells(layout: ModelLayout, cells: Iterable[Cell]) -> frozenset[Cell]:
    out = frozenset(cells)
    unknown = [c for c in out if c not in layout.cells]
    if unknown:
        layer, group = unknown[0]
        where = "the global row" if layer == GLOBAL_LAYER else f"layer {layer}"
        raise PlanError(f"{layout.name} has no {TensorGroup(group).label} cell in {where}.")
    return out


def assign(
    layout: ModelLayout, plan: Plan, cells: Iterable[Cell], device: str, *, pin: bool = True
) -> Edit:
    """Put every loaded tensor of ``cells`` on ``device`` (and pin those cells by default)."""
    if not device:
        raise PlanError("Choose a device to move the cells to.")
    touched = _check_cells(layout, cells)
    devices = list(plan.devices)
    for cell in touched:
        for i in layout.cells[cell]:
            if devices[i]:
                devices[i] = device
    pinned = plan.pinned | touched if pin else plan.pinned
    return Edit(plan, Plan(tuple(devices), pinned), touched)


def assign_tensors(layout: ModelLayout, plan: Plan, mapping: dict[str, str]) -> Edit:
    """Move individual tensors (by name) without changing pins."""
    devices = list(plan.devices)
    touched = set()
    for name, device in mapping.items():
        i = layout.index.get(name)
        if i is None:
            raise PlanError(f"{layout.name} has no tensor {name}.")
        if devices[i]:
            devices[i] = device
            touched.add(layout.tensors[i].cell)
    return Edit(plan, Plan(tuple(devices), plan.pinned), frozenset(touched))


def set_pinned(layout: ModelLayout, plan: Plan, cells: Iterable[Cell], pinned: bool = True) -> Edit:
    touched = _check_cells(layout, cells)
    new = plan.pinned | touched if pinned else plan.pinned - touched
    return Edit(plan, Plan(plan.devices, new), touched)


def reset(layout: ModelLayout, plan: Plan, cells: Iterable[Cell] | None = None) -> Edit:
    """Unpin ``cells`` (all when None) and put them back on the CPU."""
    touched = frozenset(layout.cells) if cells is None else _check_cells(layout, cells)
    edit = assign(layout, plan, touched, CPU_NAME, pin=False)
    return Edit(plan, Plan(edit.after.devices, plan.pinned - touched), touched)


def restore_cells(layout: ModelLayout, plan: Plan, source: Plan, cells: Iterable[Cell]) -> Edit:
    """``cells`` as ``source`` has them (devices and pins): a partial reset to a saved layout."""
    touched = _check_cells(layout, cells)
    devices = list(plan.devices)
    for cell in touched:
        for i in layout.cells[cell]:
            devices[i] = source.devices[i]
    pinned = (plan.pinned - touched) | (source.pinned & touched)
    return Edit(plan, Plan(tuple(devices), pinned), touched)


# --- selections ----------------------------------------------------------------------------------


def row_cells(layout: ModelLayout, layers: Iterable[int]) -> list[Cell]:
    """All cells of the given layers (``GLOBAL_LAYER`` for the global row)."""
    wanted = set(layers)
    return [c for c in layout.cells if c[0] in wanted]


def column_cells(layout: ModelLayout, groups: Iterable[TensorGroup]) -> list[Cell]:
    wanted = set(groups)
    return [c for c in layout.cells if c[1] in wanted]


def range_cells(
    layout: ModelLayout, first: int, last: int, groups: Sequence[TensorGroup] | None = None
) -> list[Cell]:
    """Cells of layers ``first..last`` (inclusive), optionally only some groups."""
    wanted = None if groups is None else set(groups)
    return [
        c
        for c in layout.cells
        if first <= c[0] <= last and c[0] != GLOBAL_LAYER and (wanted is None or c[1] in wanted)
    ]


def expert_cells(layout: ModelLayout, first: int = 0, last: int | None = None) -> list[Cell]:
    """ "All routed experts of layers first–last" (inclusive)."""
    top = layout.n_layer - 1 if last is None else last
    return [c for c in layout.cells if first <= c[0] <= top and c[1] in ROUTED_EXPERT_GROUPS]


def device_bytes(layout: ModelLayout, plan: Plan) -> Counter[str]:
    """Weight bytes per device."""
    out: Counter[str] = Counter()
    for t, d in zip(layout.tensors, plan.devices, strict=True):
        if d:
            out[d] += t.nbytes
    return out


def layer_homes(layout: ModelLayout, plan: Plan) -> list[str]:
    """The device each KV layer's attention lives on (majority of bytes): where its KV should go."""
    homes: list[str] = []
    for layer in range(layout.hparams.n_layer_kv):
        counts = cell_devices(layout, plan, (layer, TensorGroup.ATTENTION))
        if not counts:  # a layer without attention tensors (recurrent): follow its heaviest cell
            counts = Counter()
            for (lyr, _), idx in layout.cells.items():
                if lyr == layer:
                    for i in idx:
                        if plan.devices[i]:
                            counts[plan.devices[i]] += layout.tensors[i].nbytes
        homes.append(counts.most_common(1)[0][0] if counts else CPU_NAME)
    return homes
