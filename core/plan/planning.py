"""One planning session as a value: model + rig + settings + plan → estimate, command, advice.

:class:`Planner` is what the CLI, the GUI document and profiles share, so that a cell edit, a
settings change and a launch all see the same numbers. Everything here is pure: a new plan or
new settings give a new :class:`PlanResult`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from moe_studio.core.errors import CommandError, MoeStudioError, PlanError
from moe_studio.core.gguf.ggml_types import type_by_id
from moe_studio.core.gguf.model import Cell, ModelLayout
from moe_studio.core.hardware.devices import Rig
from moe_studio.core.plan.advisor import Advice, advise
from moe_studio.core.plan.autoplace import AutoPlacement, auto_place
from moe_studio.core.plan.cmdline import Command, build_command
from moe_studio.core.plan.layers import LayerSplit, graph_tensor_split, plan_layer_split
from moe_studio.core.plan.learned import Learned
from moe_studio.core.plan.memory import (
    Estimate,
    estimate,
    kv_bytes,
    layer_compute_bytes,
    resolve_context,
)
from moe_studio.core.plan.placement import (
    Edit,
    Plan,
    assign,
    expert_cells,
    initial_plan,
    range_cells,
)
from moe_studio.core.plan.settings import Dialect, Settings

_ENGINE_NAMES = {"ik": "ik_llama.cpp", "mainline": "llama.cpp (mainline)"}


def unsupported_types(layout: ModelLayout, dialect: Dialect) -> dict[str, int]:
    """Tensors per quant type that ``dialect``'s engine does not define (name → count), most
    used first: ik_llama.cpp's own types (IQ2_KS, IQ4_KS…) for mainline, and mainline's own
    (TQ1_0, NVFP4…) for ik. Types neither engine knows were refused when the file was read."""
    counts: Counter[str] = Counter()
    for tensor in layout.tensors:
        if not tensor.loaded:
            continue  # GLM's nextn blocks: the engine skips them, their types do not matter
        kind = type_by_id(tensor.type_id)
        if kind is None:
            continue
        known = kind.in_mainline if dialect == "mainline" else kind.in_ik
        if not known:
            counts[kind.name] += 1
    return dict(counts.most_common())


def engine_type_problem(layout: ModelLayout, dialect: Dialect) -> str:
    """A sentence when ``dialect``'s engine cannot load ``layout``'s quant types, else ``""``."""
    missing = unsupported_types(layout, dialect)
    if not missing:
        return ""
    other: Dialect = "ik" if dialect == "mainline" else "mainline"
    count = sum(missing.values())
    total = sum(1 for t in layout.tensors if t.loaded)
    listing = ", ".join(f"{name} ×{n}" for name, n in missing.items())
    own = "ik_llama.cpp-only" if dialect == "mainline" else "mainline-only"
    return (
        f"{_ENGINE_NAMES[dialect]} cannot load this model: {count} of {total} tensors use "
        f"{own} quant types ({listing}). Use {_ENGINE_NAMES[other]} (switch the engine to "
        f"{other}), or a quant of this model made with types both engines know."
    )


@dataclass(frozen=True, slots=True)
class PlanResult:
    """Everything derived from one (layout, rig, settings, plan)."""

    split: LayerSplit
    estimate: Estimate
    command: Command | None
    command_error: str = ""
    advice: Advice | None = None
    notes: tuple[str, ...] = field(default=())
    engine_problem: str = ""  # the engine cannot load the model at all (see engine_type_problem)


class Planner:
    """Derives estimates and commands, caching what depends on the settings alone."""

    def __init__(self, layout: ModelLayout, rig: Rig, settings: Settings) -> None:
        self.layout = layout
        self.rig = rig
        self.settings = resolve_context(layout, settings)
        self._kv: list[int] | None = None
        self._compute: float | None = None
        # Compute buffers measured on this machine for this model and engine (learned.py).
        self.learned: Learned | None = None
        self._type_problems: dict[Dialect, str] = {}

    def engine_problem(self) -> str:
        """Why the settings' engine cannot load this model ("" when it can); cached per dialect."""
        dialect = self.settings.dialect
        if dialect not in self._type_problems:
            self._type_problems[dialect] = engine_type_problem(self.layout, dialect)
        return self._type_problems[dialect]

    def update(
        self,
        *,
        rig: Rig | None = None,
        settings: Settings | None = None,
        learned: Learned | None = None,
    ) -> None:
        if rig is not None:
            self.rig = rig
        if learned is not None:
            self.learned = learned
        if settings is not None:
            settings = resolve_context(self.layout, settings)
        if settings is not None and settings != self.settings:
            self.settings = settings
            self._kv = None
            self._compute = None

    def estimate(self, plan: Plan, *, learned: bool = True) -> tuple[LayerSplit, Estimate]:
        """The fast path (a cell edit): split and memory per device.

        With ``learned`` (default) compute buffers measured on this machine replace or scale the
        model's (:attr:`learned`); without, the model's own figures — what a calibration record
        compares the engine with, so that a correction never learns from itself.
        """
        if self._kv is None:
            self._kv = kv_bytes(self.layout, self.settings)
            self._compute = layer_compute_bytes(self.layout, self.settings)
        split = plan_layer_split(self.layout, plan, self.rig, self.settings)
        graph = self.settings.split_mode_graph and self.settings.is_ik and len(split.devices) > 1
        est = estimate(
            self.layout,
            plan,
            self.rig,
            self.settings,
            split.kv_devices,
            kv_per_layer=self._kv,
            layer_compute=self._compute,
            tensor_split=graph_tensor_split(self.layout, self.settings, split) if graph else None,
        )
        if learned and self.learned is not None:
            est = self.learned.correct(est, self.settings)
        return split, est

    def result(
        self, plan: Plan, *, executable: str = "llama-server", model_path: str | None = None
    ) -> PlanResult:
        split, est = self.estimate(plan)
        command: Command | None = None
        error = ""
        try:
            command = build_command(
                self.layout,
                plan,
                self.rig,
                self.settings,
                executable=executable,
                model_path=model_path,
            )
        except MoeStudioError as exc:
            error = str(exc)
        advice = advise(self.layout, plan, self.rig, self.settings, est)
        return PlanResult(
            split, est, command, error, advice, split.notes, engine_problem=self.engine_problem()
        )

    def auto_place(self, plan: Plan, *, experts: bool = True) -> AutoPlacement:
        return auto_place(self.layout, plan, self.rig, self.settings, experts=experts)

    def advise_batch(self, plan: Plan) -> Settings:
        """Settings with the advisor's -b/-ub, chosen before experts take the VRAM it needs."""
        placed = self.auto_place(plan, experts=False)
        advice = self.result(placed.plan).advice
        if advice is None:
            return self.settings
        tuned = self.settings.with_(ubatch=advice.ubatch, batch=advice.batch)
        # The always-active weights come first: a -ub whose compute buffer, with its error band
        # (memory.COMPUTE_MARGIN), pushes a layer off the GPUs is too big; halve it until it
        # does not (not below the engines' default 512).
        while tuned.ubatch > 512:
            lean = auto_place(self.layout, plan, self.rig, tuned, experts=False)
            if lean.shortfall <= placed.shortfall:
                break
            tuned = tuned.with_(ubatch=tuned.ubatch // 2)
        return tuned

    def initial(self) -> Plan:
        return initial_plan(self.layout)


_CELL_PIN = re.compile(r"^(?P<kind>[LE]):(?P<first>\d+)(?:-(?P<last>\d+))?=(?P<device>.+)$")


def apply_pin(layout: ModelLayout, plan: Plan, rule: str) -> Edit:
    """Pin cells from a rule: ``L:3-10=CUDA0`` (whole layers), ``E:3-10=CPU`` (routed experts of
    layers), or ``REGEX=DEVICE`` (every cell with a tensor whose name matches, like ``-ot``)."""
    m = _CELL_PIN.match(rule)
    if m:
        first = int(m.group("first"))
        last = int(m.group("last") or first)
        if last < first or last >= layout.n_layer:
            raise PlanError(
                f"Pin {rule!r}: layers {first}-{last} are outside 0-{layout.n_layer - 1}."
            )
        cells = (
            range_cells(layout, first, last)
            if m.group("kind") == "L"
            else expert_cells(layout, first, last)
        )
        return assign(layout, plan, cells, m.group("device"))
    regex, sep, device = rule.rpartition("=")
    if not sep or not regex or not device:
        raise PlanError(
            f"Pin {rule!r} is not L:FIRST-LAST=DEVICE, E:FIRST-LAST=DEVICE or REGEX=DEVICE."
        )
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise CommandError(f"Pin {rule!r}: {exc}.") from None
    matched: set[Cell] = {t.cell for t in layout.tensors if t.loaded and pattern.search(t.name)}
    if not matched:
        raise PlanError(f"Pin {rule!r} matches no tensor of {layout.name}.")
    return assign(layout, plan, matched, device)
