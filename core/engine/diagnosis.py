"""Why a launch failed, in one sentence, and fixes that edit the plan or the settings.

:func:`diagnose` takes the engine's :class:`~moe_studio.core.engine.log_events.Failure` (and, when
available, the :class:`~moe_studio.core.engine.log_events.LoadReport` of the same run, which says
how much memory each device had free and what was already allocated on it) and returns a
:class:`Diagnosis`: a sentence such as "CUDA0 ran out of memory allocating the 4.2 GiB compute
buffer; 1.3 GiB was missing." and the fixes that help with that buffer, each a new plan and/or new
settings:

- move the smallest set of whole layers' routed experts (up, gate and down together) off the
  failing device to the CPU that frees the missing bytes plus a margin; unpinned layers go first,
  and a fix that moves cells the user pinned says so;
- lower ``-ub`` to the next power of two (not below 128): the compute buffer grows with it;
- a ``q8_0`` KV cache instead of ``f16`` (only the V cache needs flash attention to be quantized);
- halve ``-c`` (not below 4096).

A fix carries its plan :class:`~moe_studio.core.plan.placement.Edit` (before/after), so the GUI
pushes it as one undoable step and relaunches. How much each fix frees on the failing device comes
from our estimate (:mod:`moe_studio.core.plan.memory`).

:func:`compare` lines the estimate up with the buffers the engine printed: the predicted-vs-actual
table of the process panel and the records of :mod:`moe_studio.core.engine.calibration`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from moe_studio.core.engine.log_events import (
    BufferKind,
    Failure,
    FailureKind,
    LoadReport,
    buffer_device,
)
from moe_studio.core.gguf.model import Cell, ModelLayout
from moe_studio.core.gguf.tensors import ROUTED_EXPERT_GROUPS
from moe_studio.core.hardware.devices import CPU_NAME, Rig
from moe_studio.core.plan.memory import Estimate
from moe_studio.core.plan.placement import Edit, Plan
from moe_studio.core.plan.planning import Planner
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import MiB, format_bytes

MIN_UBATCH = 128
MIN_CONTEXT = 4096
MARGIN = 256 * MiB  # freed beyond what was missing: the engines' own estimates are not exact

_MEMORY_KINDS = (
    FailureKind.DEVICE_OUT_OF_MEMORY,
    FailureKind.BUFFER_ALLOCATION,
    FailureKind.KV_CACHE,
    FailureKind.COMPUTE_BUFFERS,
)
_BUFFER_WORDS = {
    BufferKind.MODEL: "buffer for the model weights",
    BufferKind.KV: "KV cache",
    BufferKind.OUTPUT: "output buffer",
    BufferKind.COMPUTE: "compute buffer",
}


FreesFn = Callable[[Plan], int | None]


class FixKind(StrEnum):
    MOVE_EXPERTS = "move_experts"
    LOWER_UBATCH = "lower_ubatch"
    QUANTIZE_CACHE = "quantize_cache"
    SMALLER_CONTEXT = "smaller_context"


_KIND_PURPOSE = {
    FailureKind.KV_CACHE: BufferKind.KV,
    FailureKind.COMPUTE_BUFFERS: BufferKind.COMPUTE,
}
# Fixes that help with each buffer, the cheapest in speed and quality first.
_ORDER: dict[BufferKind, tuple[FixKind, ...]] = {
    BufferKind.MODEL: (FixKind.MOVE_EXPERTS,),
    BufferKind.OUTPUT: (FixKind.MOVE_EXPERTS, FixKind.LOWER_UBATCH),
    BufferKind.KV: (FixKind.QUANTIZE_CACHE, FixKind.MOVE_EXPERTS, FixKind.SMALLER_CONTEXT),
    BufferKind.COMPUTE: (FixKind.LOWER_UBATCH, FixKind.MOVE_EXPERTS, FixKind.SMALLER_CONTEXT),
}


@dataclass(frozen=True, slots=True)
class Fix:
    """One way out: a new plan and/or settings.

    Attributes:
        kind: What it changes.
        label: A button label ("Move the experts of layers 41–43 from CUDA0 to CPU").
        detail: What it does to memory and speed, as a sentence.
        plan: The plan after the fix (the same plan for settings fixes).
        settings: The settings after the fix.
        edit: The plan edit (before/after) for an undoable step; None for settings fixes.
        frees: Bytes it frees on the failing device by our estimate (None: not estimated).
        sufficient: Whether ``frees`` covers what was missing plus the margin (None: unknown).
        moves_pinned: It moves cells the user pinned.
    """

    kind: FixKind
    label: str
    detail: str
    plan: Plan
    settings: Settings
    edit: Edit | None = None
    frees: int | None = None
    sufficient: bool | None = None
    moves_pinned: bool = False


MakeFix = Callable[[FixKind, str, str, Settings], Fix]


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """What went wrong and what to do.

    Attributes:
        sentence: One sentence for the user.
        failure: The engine's failure it explains (None: the process died without saying why).
        device: The device that ran out of memory ("" for other failures).
        purpose: What the failed buffer was for, when known.
        requested: Bytes the failed allocation asked for.
        missing: Bytes that were lacking, when the log tells the free memory.
        fixes: Fixes, most suitable first.
    """

    sentence: str
    failure: Failure | None = None
    device: str = ""
    purpose: BufferKind | None = None
    requested: int | None = None
    missing: int | None = None
    fixes: tuple[Fix, ...] = ()

    @property
    def out_of_memory(self) -> bool:
        return bool(self.device)


def _memory_failure(failure: Failure, report: LoadReport | None) -> Failure | None:
    """The failure with the most detail about the same allocation (device, size, purpose)."""
    family = [failure]
    if report is not None:
        family += [f for f in report.failures if f is not failure and not f.benign_after_stop]
    memory = [f for f in family if f.kind in _MEMORY_KINDS or "allocate" in f.message]
    if failure not in memory:
        return None

    def score(f: Failure) -> tuple[bool, bool, bool]:
        return (f.nbytes is not None, bool(f.buffer) or f.device is not None, f is failure)

    return max(memory, key=score)


def _device_of(f: Failure) -> str:
    if f.buffer:
        return buffer_device(f.buffer)
    if f.device is not None:
        return f"CUDA{f.device}"
    return ""


def diagnose(
    failure: Failure,
    layout: ModelLayout,
    plan: Plan,
    rig: Rig,
    settings: Settings,
    *,
    report: LoadReport | None = None,
    margin: int = MARGIN,
) -> Diagnosis:
    """Explain ``failure`` (from a run of ``plan`` with ``settings``) and propose fixes."""
    mem = _memory_failure(failure, report)
    if mem is None:
        return Diagnosis(failure.describe(), failure)
    device = _device_of(mem)
    purpose = mem.purpose or failure.purpose or _KIND_PURPOSE.get(failure.kind)
    requested = mem.nbytes
    if not device:
        return Diagnosis(failure.describe(), failure, purpose=purpose, requested=requested)
    planner = Planner(layout, rig, settings)
    _, before = planner.estimate(plan)
    available, measured = _available(device, report, before)
    missing = None
    if requested is not None and available is not None and requested > available:
        missing = requested - available
    sentence = _sentence(device, purpose, requested, missing, available if measured else None)
    need = (missing if missing is not None else (requested or 0)) + max(
        margin, (requested or 0) // 20
    )
    fixes = _fixes(layout, plan, rig, settings, planner, before, device, purpose, requested, need)
    return Diagnosis(sentence, failure, device, purpose, requested, missing, tuple(fixes))


def _available(
    device: str, report: LoadReport | None, estimate: Estimate
) -> tuple[int | None, bool]:
    """Bytes the device had left when the allocation failed, and whether the engine's log said
    so: its free memory at start minus what it had already allocated there; without a free
    figure in the log, our capacity minus overhead minus those allocations."""
    if report is None:
        return None, False
    usage = report.devices.get(device)
    allocated = usage.total if usage is not None else 0
    for found in report.devices_found:
        if found.name == device and found.free_bytes is not None:
            return found.free_bytes - allocated, True
    budget = estimate.device(device)
    if budget is None or not budget.capacity or device == CPU_NAME:
        return None, False
    return budget.capacity - budget.overhead - allocated, False


def _sentence(
    device: str,
    purpose: BufferKind | None,
    requested: int | None,
    missing: int | None,
    available: int | None,
) -> str:
    who = "The host (CPU)" if device == CPU_NAME else device
    what = _BUFFER_WORDS.get(purpose, "buffer") if purpose else "buffer"
    size = f"{format_bytes(requested)} " if requested is not None else ""
    text = f"{who} ran out of memory allocating the {size}{what}"
    if missing is not None:
        return f"{text}; {format_bytes(missing)} was missing."
    if requested is not None and available is not None:  # the engine's own free figure
        return (
            f"{text}, although about {format_bytes(max(0, available))} seemed free "
            "(another program may be using it, or its memory is fragmented)."
        )
    return text + "."


def _fixes(
    layout: ModelLayout,
    plan: Plan,
    rig: Rig,
    settings: Settings,
    planner: Planner,
    before: Estimate,
    device: str,
    purpose: BufferKind | None,
    requested: int | None,
    need: int,
) -> list[Fix]:
    def frees(new_plan: Plan, new_settings: Settings) -> int | None:
        """Bytes the fix takes off ``device``: our estimate, except that the failed buffer's
        share is scaled to the size the engine asked for (our compute model is rough)."""
        p = planner if new_settings == settings else Planner(layout, rig, new_settings)
        _, after = p.estimate(new_plan)
        b, a = before.device(device), after.device(device)
        if b is None or a is None:
            return None
        freed = b.total - a.total
        part = {BufferKind.KV: "kv", BufferKind.COMPUTE: "compute"}.get(purpose or BufferKind.MODEL)
        if part and requested:
            was, now = getattr(b, part), getattr(a, part)
            if was > 0:
                freed += int(requested * (was - now) / was) - (was - now)
        return freed

    def settings_fix(kind: FixKind, label: str, detail: str, new: Settings) -> Fix:
        freed = frees(plan, new)
        return Fix(
            kind, label, detail, plan, new, None, freed, None if freed is None else freed >= need
        )

    makers = {
        FixKind.MOVE_EXPERTS: lambda: _move_experts(
            layout, plan, settings, device, need, lambda p: frees(p, settings)
        ),
        FixKind.LOWER_UBATCH: lambda: _lower_ubatch(settings, settings_fix),
        FixKind.QUANTIZE_CACHE: lambda: _quantize_cache(settings, settings_fix),
        FixKind.SMALLER_CONTEXT: lambda: _smaller_context(settings, settings_fix),
    }
    order = _ORDER[purpose] if purpose is not None else tuple(FixKind)
    if device == CPU_NAME:
        order = tuple(k for k in order if k is not FixKind.MOVE_EXPERTS)
    fixes = [fix for kind in order if (fix := makers[kind]()) is not None]
    # Fixes that are enough come first; within each group, the order above.
    return sorted(fixes, key=lambda f: f.sufficient is False)


def _expert_layers(layout: ModelLayout, plan: Plan, device: str) -> dict[int, list[int]]:
    """Layer → indices of its routed-expert tensors on ``device``."""
    out: dict[int, list[int]] = defaultdict(list)
    for (layer, group), indices in layout.cells.items():
        if group in ROUTED_EXPERT_GROUPS:
            out[layer] += [i for i in indices if plan.devices[i] == device]
    return {layer: idx for layer, idx in out.items() if idx}


def _choose_layers(sizes: dict[int, int], pinned: set[int], need: int) -> list[int]:
    """Fewest layers whose sizes reach ``need`` (unpinned first; the last pick as small as can
    be); all of them when even that is not enough."""
    ranked = sorted(sizes, key=lambda layer: (layer in pinned, -sizes[layer], -layer))
    picked: list[int] = []
    total = 0
    for layer in ranked:
        if total >= need:
            break
        picked.append(layer)
        total += sizes[layer]
    if total >= need and picked:
        base = total - sizes[picked[-1]]
        rest = [layer for layer in ranked if layer not in picked[:-1]]
        enough = [layer for layer in rest if base + sizes[layer] >= need]
        if enough:
            best = min(enough, key=lambda layer: (layer in pinned, sizes[layer], -layer))
            picked[-1] = best
    return picked


def _layer_ranges(layers: Sequence[int]) -> str:
    spans: list[str] = []
    for layer in sorted(layers):
        if spans and spans[-1].rpartition("–")[2] == str(layer - 1):
            first = spans[-1].partition("–")[0]
            spans[-1] = f"{first}–{layer}"
        else:
            spans.append(str(layer))
    return ", ".join(spans)


def _move_experts(
    layout: ModelLayout,
    plan: Plan,
    settings: Settings,
    device: str,
    need: int,
    frees: FreesFn,
) -> Fix | None:
    per_layer = _expert_layers(layout, plan, device)
    if not per_layer:
        return None
    sizes = {layer: sum(layout.tensors[i].nbytes for i in idx) for layer, idx in per_layer.items()}
    pinned_layers = {
        layer
        for (layer, group) in plan.pinned
        if group in ROUTED_EXPERT_GROUPS and layer in per_layer
    }
    chosen = _choose_layers(sizes, pinned_layers, need)
    while True:
        edit = _move(layout, plan, per_layer, chosen)
        freed = frees(edit.after)
        if freed is None or freed >= need or len(chosen) == len(per_layer):
            break
        # Our estimate says the experts alone are not enough (the GPU's copy buffer for
        # RAM-resident experts grows): take one more layer.
        remaining = [layer for layer in sizes if layer not in chosen]
        chosen.append(max(remaining, key=lambda layer: (layer not in pinned_layers, sizes[layer])))
    moved = sum(sizes[layer] for layer in chosen)
    moves_pinned = any(layer in pinned_layers for layer in chosen)
    n = len(chosen)
    label = (
        f"Move the experts of {'layer' if n == 1 else 'layers'} {_layer_ranges(chosen)} "
        f"({format_bytes(moved)}) from {device} to CPU"
    )
    if moves_pinned:
        label += " (includes cells you pinned)"
    sufficient = None if freed is None else freed >= need
    detail = (
        f"Frees about {format_bytes(freed if freed is not None else moved)} on {device}; "
        "those experts then run from RAM, which slows generation a little."
    )
    if sufficient is False:
        detail += f" Even this is {format_bytes(need - (freed or 0))} short of what is needed."
    return Fix(
        FixKind.MOVE_EXPERTS,
        label,
        detail,
        edit.after,
        settings,
        edit,
        freed,
        sufficient,
        moves_pinned,
    )


def _move(
    layout: ModelLayout, plan: Plan, per_layer: dict[int, list[int]], layers: Sequence[int]
) -> Edit:
    """Routed-expert tensors of ``layers`` that are on the failing device → CPU, their cells
    pinned (the user accepted this placement)."""
    devices = list(plan.devices)
    touched: set[Cell] = set()
    for layer in layers:
        for i in per_layer[layer]:
            devices[i] = CPU_NAME
            touched.add(layout.tensors[i].cell)
    after = Plan(tuple(devices), plan.pinned | touched)
    return Edit(plan, after, frozenset(touched))


def _lower_ubatch(settings: Settings, make: MakeFix) -> Fix | None:
    ub = settings.ubatch
    new = 1 << (ub.bit_length() - 1)
    if new == ub:
        new //= 2
    if new < MIN_UBATCH:
        return None
    changes: dict[str, object] = {"ubatch": new}
    if settings.batch < new:
        changes["batch"] = new
    return make(
        FixKind.LOWER_UBATCH,
        f"Lower -ub from {ub} to {new}",
        "The compute buffer shrinks about in proportion; long prompts are processed a little "
        "more slowly.",
        settings.with_(**changes),
    )


def _quantize_cache(settings: Settings, make: MakeFix) -> Fix | None:
    k, v = settings.cache_type_k, settings.cache_type_v
    new_k = "q8_0" if k == "f16" else k
    # A quantized V cache needs flash attention (engines.md §1.1).
    new_v = "q8_0" if v == "f16" and settings.flash_attn else v
    if (new_k, new_v) == (k, v):
        return None
    both = new_k != k and new_v != v
    label = "Use a q8_0 KV cache" if both else "Use a q8_0 K cache"
    detail = "The KV cache takes about half the memory, with a negligible loss of quality."
    if not both and new_v == v and not settings.flash_attn:
        detail += " The V cache stays f16: quantizing it needs flash attention."
    return make(
        FixKind.QUANTIZE_CACHE,
        label,
        detail,
        settings.with_(cache_type_k=new_k, cache_type_v=new_v),
    )


def _smaller_context(settings: Settings, make: MakeFix) -> Fix | None:
    new = max(MIN_CONTEXT, settings.ctx // 2)
    if new >= settings.ctx:
        return None
    return make(
        FixKind.SMALLER_CONTEXT,
        f"Halve the context: -c {settings.ctx} → {new}",
        "The KV cache (and part of the compute buffer) shrinks; prompts and answers must fit "
        f"in {new} tokens.",
        settings.with_(ctx=new),
    )


# --- predicted vs actual --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompareRow:
    """One device: our estimate beside the buffers the engine printed (bytes; None = no figure).

    The engine's ``compute`` includes its output (logits) buffer, which our compute term covers.
    Our ``compute`` here leaves out what the engine allocates only once it runs a graph
    (:attr:`~moe_studio.core.plan.memory.DeviceBudget.unprinted_compute`), as its lines do.
    """

    device: str
    predicted_weights: int | None
    predicted_kv: int | None
    predicted_compute: int | None
    actual_weights: int | None
    actual_kv: int | None
    actual_compute: int | None

    @staticmethod
    def _diff(actual: int | None, predicted: int | None) -> int | None:
        if actual is None or predicted is None:
            return None
        return actual - predicted

    @property
    def diff_weights(self) -> int | None:
        """Engine minus estimate."""
        return self._diff(self.actual_weights, self.predicted_weights)

    @property
    def diff_kv(self) -> int | None:
        return self._diff(self.actual_kv, self.predicted_kv)

    @property
    def diff_compute(self) -> int | None:
        return self._diff(self.actual_compute, self.predicted_compute)


def compare(estimate: Estimate, report: LoadReport) -> list[CompareRow]:
    """Predicted vs actual per device: the estimate's devices in order, then any device only the
    engine named; devices with nothing on either side are left out. An engine figure is None
    while the log has not printed that kind of buffer (yet)."""
    actual = report.devices
    # A kind of buffer the log never mentioned (the run failed before it) has no figure; one it
    # mentioned for other devices only is 0 here.
    seen = {kind: bool(report.buffers(kind)) for kind in BufferKind}

    def figure(kind: BufferKind, value: int) -> int | None:
        return value if seen[kind] else None

    rows: list[CompareRow] = []
    names = [d.name for d in estimate.devices]
    names += [name for name in actual if name not in names]
    for name in names:
        p = estimate.device(name)
        a = actual.get(name)
        row = CompareRow(
            name,
            p.weights if p is not None else None,
            p.kv if p is not None else None,
            p.printed_compute if p is not None else None,
            figure(BufferKind.MODEL, a.model if a is not None else 0),
            figure(BufferKind.KV, a.kv if a is not None else 0),
            figure(BufferKind.COMPUTE, (a.compute + a.output) if a is not None else 0),
        )
        values = (
            row.predicted_weights,
            row.predicted_kv,
            row.predicted_compute,
            row.actual_weights,
            row.actual_kv,
            row.actual_compute,
        )
        if any(values):
            rows.append(row)
    return rows
