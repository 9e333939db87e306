"""Auto-placement: the seed guide's rule, respecting what the user pinned.

1. Every layer gets a home device: GPU-like devices take contiguous runs of layers in engine order,
   sized by what each can hold after its reserve, overhead and compute buffer; when the GPUs cannot
   hold every layer's always-active part, the first layers stay on the CPU (``-ngl`` can only leave
   a prefix there) and the result says by how much it fell short and what would help.
2. Always-active tensors (attention and norms, dense FFN, shared experts, router) go to their
   layer's home, the output head to the last GPU; ``token_embd`` stays on the host as the engines
   keep it.
3. Routed experts fill what is left, whole layers first (up and gate of a layer always together),
   each device taking its own layers before anything else.

Pinned cells are never moved; their bytes count where they are.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from moe_studio.core.gguf.model import Cell, ModelLayout
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, ROUTED_EXPERT_GROUPS, TensorGroup
from moe_studio.core.hardware.devices import CPU_NAME, Device, DeviceKind, Rig
from moe_studio.core.plan.compute import rebuilt_kv_b_bytes
from moe_studio.core.plan.memory import (
    compute_margin,
    compute_terms,
    effective_mla,
    kv_bytes,
    layer_compute_bytes,
)
from moe_studio.core.plan.placement import NO_DEVICE_NOTE, Plan, assign
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import format_bytes

ALWAYS_ACTIVE = (
    TensorGroup.ATTENTION,
    TensorGroup.FFN,
    TensorGroup.SHARED,
    TensorGroup.ROUTER,
    TensorGroup.OTHER,
)
UP_GATE = (TensorGroup.EXPS_GATE_UP, TensorGroup.EXPS_GATE, TensorGroup.EXPS_UP)


@dataclass(frozen=True, slots=True)
class AutoPlacement:
    plan: Plan
    shortfall: int = 0  # bytes of always-active weights + KV the GPUs could not take
    suggestions: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())


def _budgets(
    layout: ModelLayout, rig: Rig, settings: Settings, devices: list[Device]
) -> dict[str, int]:
    layer_compute = layer_compute_bytes(layout, settings)
    biggest_expert = max(
        (t.nbytes for t in layout.tensors if t.group in ROUTED_EXPERT_GROUPS), default=0
    )
    # Only the first CUDA device takes the big-batch matmuls of RAM-resident weights
    # (compute.offload_terms); the others budget their own compute buffer.
    first_cuda = next((d.name for d in devices if d.kind is DeviceKind.CUDA), None)
    out = {}
    for i, dev in enumerate(devices):
        terms = compute_terms(
            layout,
            settings,
            holds_layers=True,
            holds_output=i == len(devices) - 1,
            is_cuda=dev.kind is DeviceKind.CUDA,
            cpu_expert_tensor_max=biggest_expert,
            layer_compute=layer_compute,
            offload_target=dev.name == first_cuda,
        )
        overhead = settings.gpu_overhead if dev.kind is DeviceKind.CUDA else 0
        # The compute buffer with its known error (memory.COMPUTE_MARGIN): what "fits" checks.
        compute = terms.total + compute_margin(terms.total)
        out[dev.name] = dev.memory_total - settings.reserve - overhead - compute
    return out


def auto_place(
    layout: ModelLayout, plan: Plan, rig: Rig, settings: Settings, *, experts: bool = True
) -> AutoPlacement:
    """Place every free cell; pinned cells stay where they are.

    With ``experts=False`` free routed experts all stay on the CPU (the starting point the batch
    advisor sizes ``-ub`` from, before experts compete with the compute buffer for VRAM).
    """
    devices = list(rig.devices)
    free_cells = [c for c in layout.cells if c not in plan.pinned]
    if not devices:
        moved = assign(layout, plan, free_cells, CPU_NAME, pin=False).after
        return AutoPlacement(moved, notes=(NO_DEVICE_NOTE,))
    budget = _budgets(layout, rig, settings, devices)
    kv = kv_bytes(layout, settings)
    # Pinned cells occupy their device first.
    for cell in plan.pinned:
        for i in layout.cells.get(cell, ()):
            d = plan.devices[i]
            if d in budget:
                budget[d] -= layout.tensors[i].nbytes
    cell_bytes = layout.cell_bytes
    n_kv = layout.hparams.n_layer_kv

    def active_bytes(layer: int) -> int:
        return sum(
            cell_bytes.get((layer, g), 0) for g in ALWAYS_ACTIVE if (layer, g) not in plan.pinned
        )

    # Output head and its norm go with the last layers.
    globals_free = [
        c
        for c in ((GLOBAL_LAYER, TensorGroup.OUTPUT), (GLOBAL_LAYER, TensorGroup.OUTPUT_NORM))
        if c in layout.cells and c not in plan.pinned
    ]
    head = sum(cell_bytes[c] for c in globals_free)
    # ik derives wk_b/wv_b from each attn_kv_b at load, beside it (see core.memory.estimate).
    derived = [0] * layout.n_layer
    if settings.is_ik and effective_mla(layout, settings):
        for i in layout.attn_kv_b_indices:
            t = layout.tensors[i]
            if (t.layer, TensorGroup.ATTENTION) not in plan.pinned:
                derived[t.layer] += t.nbytes
        # …or rebuilds attn_kv_b when the GGUF lacks it (llm_prepare_mla).
        for i, rebuilt in rebuilt_kv_b_bytes(layout, settings).items():
            t = layout.tensors[i]
            if (t.layer, TensorGroup.ATTENTION) not in plan.pinned:
                derived[t.layer] += rebuilt
    need = [active_bytes(il) + kv[il] + derived[il] for il in range(n_kv)]
    total_room = sum(max(0, b) for b in budget.values())
    # How many trailing layers fit on the GPUs (CPU layers must be a prefix).
    gpu_from = 0
    while gpu_from < n_kv and sum(need[gpu_from:]) + head > total_room:
        gpu_from += 1
    shortfall = max(0, sum(need) + head - total_room)
    # Contiguous runs in engine order, proportional to each device's room.
    homes: list[str] = [CPU_NAME] * layout.n_layer
    rooms = [max(0, budget[d.name]) for d in devices]
    want_total = sum(need[gpu_from:]) + head
    share = [r / total_room * want_total if total_room else 0 for r in rooms]
    dev_i = 0
    used = 0.0
    for il in range(gpu_from, n_kv):
        while dev_i < len(devices) - 1 and used + need[il] / 2 > share[dev_i]:
            dev_i += 1
            used = 0.0
        homes[il] = devices[dev_i].name
        used += need[il]
    for il in range(n_kv, layout.n_layer):  # nextn blocks (not loaded) follow the last layer
        homes[il] = homes[n_kv - 1] if n_kv else CPU_NAME
    last_gpu = next((h for h in reversed(homes[:n_kv]) if h != CPU_NAME), devices[-1].name)

    devices_out = list(plan.devices)
    placed: Counter[str] = Counter()

    def put(cell: Cell, device: str) -> None:
        for i in layout.cells.get(cell, ()):
            if devices_out[i]:
                devices_out[i] = device
                placed[device] += layout.tensors[i].nbytes

    for il in range(layout.n_layer):
        for g in ALWAYS_ACTIVE:
            cell = (il, g)
            if cell in layout.cells and cell not in plan.pinned:
                put(cell, homes[il])
        if il < n_kv and homes[il] != CPU_NAME:
            budget[homes[il]] -= kv[il] + derived[il]
    for cell in globals_free:
        put(cell, last_gpu if gpu_from < n_kv else CPU_NAME)
    token = (GLOBAL_LAYER, TensorGroup.TOKEN_EMBD)
    if token in layout.cells and token not in plan.pinned:
        put(token, CPU_NAME)
    for name, n in placed.items():
        if name in budget:
            budget[name] -= n

    # Routed experts: everything starts on the CPU, then whole layers move while they fit.
    expert_free: dict[int, list[list[Cell]]] = {}
    for il in layout.expert_layers:
        if not layout.layer_loaded(il):
            continue
        units = []
        ug = [(il, g) for g in UP_GATE if (il, g) in layout.cells and (il, g) not in plan.pinned]
        down = (
            [(il, TensorGroup.EXPS_DOWN)]
            if (il, TensorGroup.EXPS_DOWN) in layout.cells
            and (il, TensorGroup.EXPS_DOWN) not in plan.pinned
            else []
        )
        units = [u for u in (ug, down) if u]
        for unit in units:
            for cell in unit:
                put(cell, CPU_NAME)
        if units:
            expert_free[il] = units

    def size(unit: list[Cell]) -> int:
        return sum(cell_bytes[c] for c in unit)

    def try_layer(il: int, device: str) -> None:
        units = expert_free.get(il)
        if not units:
            return
        whole = sum(size(u) for u in units)
        if whole <= budget[device]:
            for unit in units:
                for cell in unit:
                    put(cell, device)
            budget[device] -= whole
            expert_free.pop(il)
            return
        kept = []
        for unit in units:
            if size(unit) <= budget[device]:
                for cell in unit:
                    put(cell, device)
                budget[device] -= size(unit)
            else:
                kept.append(unit)
        expert_free[il] = kept

    if not experts:
        expert_free.clear()
    for dev in devices:
        for il in range(layout.n_layer):
            if homes[il] == dev.name:
                try_layer(il, dev.name)
    for il in sorted(expert_free):
        for dev in sorted(devices, key=lambda d: -budget[d.name]):
            try_layer(il, dev.name)
            if not expert_free.get(il):
                break

    suggestions = _suggestions(layout, settings, shortfall) if shortfall else ()
    notes = []
    if gpu_from:
        notes.append(
            f"The GPUs cannot hold every layer's always-active part: layers 0–{gpu_from - 1} "
            f"stay on the CPU ({format_bytes(shortfall)} short)."
        )
    notes += _pins_that_do_not_fit(layout, plan, budget)
    new = Plan(tuple(devices_out), plan.pinned)
    return AutoPlacement(new, shortfall, suggestions, tuple(notes))


def _pins_that_do_not_fit(layout: ModelLayout, plan: Plan, budget: dict[str, int]) -> list[str]:
    """For each device that pinned cells alone push over its budget: which pins to release (the
    largest first, as few as cover the excess)."""
    notes = []
    for device, left in budget.items():
        if left >= 0:
            continue
        mine = sorted(
            (
                (layout.cell_bytes.get(cell, 0), cell)
                for cell in plan.pinned
                if {plan.devices[i] for i in layout.cells.get(cell, ()) if plan.devices[i]}
                == {device}
            ),
            key=lambda item: (-item[0], item[1]),
        )
        if not mine:
            continue
        chosen: list[str] = []
        freed = 0
        for size, (layer, group) in mine:
            if freed >= -left:
                break
            where = "global" if layer == GLOBAL_LAYER else f"layer {layer}"
            chosen.append(f"{where} {TensorGroup(group).label}")
            freed += size
        more = "" if freed >= -left else " (and still more)"
        notes.append(
            f"{device} cannot hold what is pinned to it: {format_bytes(-left)} over. Unpin "
            f"{', '.join(chosen)}{more}, or move them to the CPU."
        )
    return notes


def _suggestions(layout: ModelLayout, settings: Settings, shortfall: int) -> tuple[str, ...]:
    out = []
    kv_now = sum(kv_bytes(layout, settings))
    if settings.ctx > 4096:
        half = settings.with_(ctx=settings.ctx // 2)
        saved = kv_now - sum(kv_bytes(layout, half))
        out.append(f"-c {settings.ctx // 2} saves {format_bytes(saved)} of KV cache")
    if settings.cache_type_k == "f16" and settings.flash_attn:
        q8 = settings.with_(cache_type_k="q8_0", cache_type_v="q8_0")
        out.append(f"a q8_0 cache saves {format_bytes(kv_now - sum(kv_bytes(layout, q8)))}")
    if settings.ubatch > 512:
        out.append(f"-ub 512 shrinks the compute buffer (now -ub {settings.ubatch})")
    out.append(
        f"another GPU with at least {format_bytes(shortfall + 2 * 2**30)} would hold the rest"
    )
    return tuple(out)


def replan_for_rig(layout: ModelLayout, plan: Plan, rig: Rig, settings: Settings) -> AutoPlacement:
    """The plan carried over to another rig: pins whose devices the rig still has stay where
    they are; pins on a vanished device are released, and every free cell (those included) is
    auto-placed, so new GPUs are filled and nothing is left on a device the rig lacks."""
    known = {d.name for d in rig.devices} | {CPU_NAME}
    kept = frozenset(
        cell
        for cell in plan.pinned
        if all(plan.devices[i] in known for i in layout.cells.get(cell, ()) if plan.devices[i])
    )
    placed = auto_place(layout, Plan(plan.devices, kept), rig, settings)
    released = len(plan.pinned) - len(kept)
    if released:
        note = (
            f"{released} pinned cell{'s' if released != 1 else ''} sat on a device this rig "
            "does not have; they were unpinned and auto-placed."
        )
        return replace(placed, notes=(*placed.notes, note))
    return placed
