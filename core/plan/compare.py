"""How one model (one quant of a repository) lands on a rig: the row of a comparison table.

Auto-places the model as ``moe-studio plan`` does (the advisor's batch first, then auto-place)
and reports GPU and RAM use, whether everything fits, the share of routed-expert bytes on GPUs,
and whether the chosen engine can load every tensor type at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_studio.core.gguf.ggml_types import type_by_id
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.gguf.tensors import ROUTED_EXPERT_GROUPS
from moe_studio.core.hardware.devices import CPU_NAME, DeviceKind, Rig
from moe_studio.core.plan.placement import initial_plan
from moe_studio.core.plan.planning import Planner
from moe_studio.core.plan.settings import Settings

ENGINE_NAMES = {"ik": "ik_llama.cpp", "mainline": "llama.cpp"}


@dataclass(frozen=True, slots=True)
class Placement:
    """One model on one rig after auto-place."""

    gpu_bytes: int  # weights + KV + compute + overhead on every GPU-like device
    gpu_capacity: int
    ram_bytes: int
    ram_capacity: int
    fits: bool
    expert_gpu_share: float  # routed-expert bytes on GPU-like devices / all routed-expert bytes
    loadable: bool
    load_problem: str  # "" when loadable, else "IQ2_KS is ik-only"

    @property
    def engine_text(self) -> str:
        return "yes" if self.loadable else f"no: {self.load_problem}"


def load_problem(layout: ModelLayout, dialect: str) -> str:
    """Why ``dialect``'s engine cannot load ``layout``'s tensors ("" when it can)."""
    missing: dict[str, int] = {}
    for t in layout.tensors:
        if not t.loaded:
            continue
        gtype = type_by_id(t.type_id)
        if gtype is None:
            key = f"type {t.type_id} is unknown to both engines"
        elif dialect == "mainline" and not gtype.in_mainline:
            key = f"{gtype.name} is ik-only"
        elif dialect == "ik" and not gtype.in_ik:
            key = f"{gtype.name} is mainline-only"
        else:
            continue
        missing[key] = missing.get(key, 0) + t.nbytes
    if not missing:
        return ""
    ordered = sorted(missing, key=lambda k: -missing[k])
    return ", ".join(ordered[:2]) + (f" (+{len(ordered) - 2} more)" if len(ordered) > 2 else "")


def place_on_rig(layout: ModelLayout, rig: Rig, settings: Settings) -> Placement:
    """Auto-place ``layout`` on ``rig`` and measure the result."""
    planner = Planner(layout, rig, settings)
    plan = initial_plan(layout)
    planner.update(settings=planner.advise_batch(plan))
    plan = planner.auto_place(plan).plan
    _, est = planner.estimate(plan)
    gpus = [d for d in est.devices if d.kind is not DeviceKind.CPU]
    experts_total = experts_gpu = 0
    for i, t in enumerate(layout.tensors):
        if t.loaded and t.group in ROUTED_EXPERT_GROUPS:
            experts_total += t.nbytes
            if plan.devices[i] != CPU_NAME:
                experts_gpu += t.nbytes
    problem = load_problem(layout, planner.settings.dialect)
    return Placement(
        gpu_bytes=sum(d.total for d in gpus),
        gpu_capacity=sum(d.usable for d in gpus),
        ram_bytes=est.host.total,
        ram_capacity=est.host.usable,
        fits=est.fits,
        expert_gpu_share=experts_gpu / experts_total if experts_total else 0.0,
        loadable=not problem,
        load_problem=problem,
    )
