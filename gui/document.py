"""The one owner of the editable state: model, rig, settings, plan, and the undo stack.

Views never mutate anything. They ask the document (``apply_edit``, ``set_settings``, …); the
document pushes a command on its ``QUndoStack`` and announces what changed. Derived numbers come
from one :class:`moe_studio.core.plan.planning.Planner`, so the grid, the budget plot and the
command preview see the same estimate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoStack

from moe_studio.core.gguf.model import Cell, ModelLayout
from moe_studio.core.hardware.devices import Rig
from moe_studio.core.plan.autoplace import AutoPlacement, replan_for_rig
from moe_studio.core.plan.layers import LayerSplit
from moe_studio.core.plan.learned import Learned
from moe_studio.core.plan.memory import Estimate
from moe_studio.core.plan.placement import (
    Edit,
    Plan,
    assign,
    initial_plan,
    restore_cells,
    set_pinned,
)
from moe_studio.core.plan.planning import Planner, PlanResult
from moe_studio.core.plan.settings import Settings
from moe_studio.core.profiles.plans import profile_from_plan, update_profile
from moe_studio.core.profiles.schema import Profile
from moe_studio.gui.commands import PlanCommand, RigCommand, SettingsCommand

log = logging.getLogger(__name__)


class Document(QObject):
    """Model + rig + settings + plan, with undo.

    Signals:
        plan_changed: the plan changed (argument: the cells that changed, empty = all).
        settings_changed: the run settings changed.
        model_changed: a new model (and plan) was loaded.
        rig_changed: the hardware changed.
        dirty_changed: the document became modified or clean.
        profile_changed: the profile or its file changed (opened, saved as, new).
        benchmarks_changed: a benchmark result was added, or another profile's results replaced
            them.
    """

    plan_changed = Signal(object)
    settings_changed = Signal()
    model_changed = Signal()
    rig_changed = Signal()
    dirty_changed = Signal(bool)
    profile_changed = Signal()
    benchmarks_changed = Signal()

    def __init__(
        self, layout: ModelLayout, rig: Rig, settings: Settings, plan: Plan | None = None
    ) -> None:
        super().__init__()
        self.undo_stack = QUndoStack(self)
        self.undo_stack.cleanChanged.connect(self._on_undo_stack_clean_changed)
        self._layout = layout
        self._planner = Planner(layout, rig, settings)
        self._plan = plan if plan is not None else initial_plan(layout)
        # What "Reset all" returns to: the layout the model opened with, and the rig it was for.
        self._opening = (rig, self._plan)
        self._estimate_cache: tuple[Plan, LayerSplit, Estimate] | None = None
        self.executable = "llama-server"
        # The profile this document was opened from or saved to (keeps its name, notes,
        # benchmark results and unknown keys across saves), and its file.
        self.profile: Profile | None = None
        self.profile_path: str | None = None
        # Benchmark results kept with the profile (Profile.benchmarks), oldest first.
        self._benchmarks: list[Mapping[str, Any]] = []
        # The engine the Server tab runs (follow_engine), once one is known: its dialect and
        # build. Every settings value of that dialect the document takes is planned for it.
        self._engine: tuple[str, int | None] | None = None

    # --- state ---------------------------------------------------------------------------------

    @property
    def layout(self) -> ModelLayout:
        return self._layout

    @property
    def rig(self) -> Rig:
        return self._planner.rig

    @property
    def settings(self) -> Settings:
        return self._planner.settings

    @property
    def plan(self) -> Plan:
        return self._plan

    @property
    def planner(self) -> Planner:
        return self._planner

    @property
    def benchmarks(self) -> tuple[Mapping[str, Any], ...]:
        """Benchmark results of this profile, oldest first (saved with it)."""
        return tuple(self._benchmarks)

    @property
    def is_dirty(self) -> bool:
        return not self.undo_stack.isClean()

    def estimate(self) -> tuple[LayerSplit, Estimate]:
        """Split and per-device memory of the current plan (cached until the next change)."""
        cached = self._estimate_cache
        if cached is not None and cached[0] is self._plan:
            return cached[1], cached[2]
        split, est = self._planner.estimate(self._plan)
        self._estimate_cache = (self._plan, split, est)
        return split, est

    def result(self) -> PlanResult:
        """Estimate, command and advice (slower than :meth:`estimate`: builds the command)."""
        return self._planner.result(self._plan, executable=self.executable)

    # --- requests from views -------------------------------------------------------------------

    def apply_edit(self, edit: Edit, text: str, *, stroke: int = 0) -> None:
        """Push an edit as one undo step (edits of the same paint ``stroke`` merge into one)."""
        if not edit.changed:
            return
        self.undo_stack.push(PlanCommand(self, edit.before, edit.after, edit.cells, text, stroke))

    def assign_cells(self, cells: Iterable[Cell], device: str, *, stroke: int = 0) -> None:
        cells = list(cells)
        if not cells:
            return
        edit = assign(self._layout, self._plan, cells, device)
        label = f"Move {len(cells)} cell{'s' if len(cells) != 1 else ''} to {device}"
        self.apply_edit(edit, label, stroke=stroke)

    def pin_cells(self, cells: Iterable[Cell], pinned: bool) -> None:
        cells = list(cells)
        edit = set_pinned(self._layout, self._plan, cells, pinned)
        self.apply_edit(edit, f"{'Pin' if pinned else 'Unpin'} {len(cells)} cells")

    def reset_cells(self, cells: Iterable[Cell]) -> None:
        """``cells`` back to where the opening layout has them (see :meth:`opening_plan`)."""
        edit = restore_cells(self._layout, self._plan, self.opening_plan(), cells)
        self.apply_edit(edit, "Reset cells")

    def opening_plan(self) -> Plan:
        """The layout the model opened with (pins included) while the rig is the one it opened
        on; on another rig, the layout opening it there gives (auto-placed afresh)."""
        rig, plan = self._opening
        if rig == self.rig:
            return plan
        return self._planner.auto_place(initial_plan(self._layout)).plan

    def reset_all(self) -> None:
        """Back to the layout the model opened with (one undo step)."""
        self.apply_edit(Edit(self._plan, self.opening_plan(), frozenset()), "Reset all")

    def auto_place(self) -> AutoPlacement:
        """Auto-place every free cell as one undo step; returns the placement (with notes)."""
        result = self._planner.auto_place(self._plan)
        self.apply_edit(Edit(self._plan, result.plan, frozenset()), "Auto-place the rest")
        return result

    def replace_plan(self, plan: Plan, text: str) -> None:
        self.apply_edit(Edit(self._plan, plan, frozenset()), text)

    def replace_plan_and_settings(
        self, plan: Plan, settings: Settings, text: str, rig: Rig | None = None
    ) -> None:
        """All as one undo step (an imported command; its ``rig`` may add devices, which the
        same Undo takes away again)."""
        self.undo_stack.beginMacro(text)
        try:
            if rig is not None and rig != self.rig:
                self.undo_stack.push(
                    RigCommand(self, (self.rig, self._plan), (rig, self._plan), text)
                )
            self.replace_plan(plan, text)
            self.set_settings(settings, text)
        finally:
            self.undo_stack.endMacro()

    def follow_engine(self, flavour: str, build: int | None) -> None:
        """Plan for the engine the Server tab runs: build ``build`` (None: the newest) of
        ``flavour`` (``ik``/``mainline``; a build number counts in its own engine's history, so
        settings of the other dialect plan for that one's newest). Not an undo step: which engine
        runs is a fact, and Undo keeps it."""
        self._engine = (flavour, build)
        if self._for_engine(self.settings) != self.settings:
            self.restore_settings(self.settings)

    def _for_engine(self, settings: Settings) -> Settings:
        if self._engine is None:
            return settings
        flavour, build = self._engine
        wanted = build if settings.dialect == flavour else None
        return settings if settings.engine_build == wanted else settings.with_(engine_build=wanted)

    def set_settings(self, settings: Settings, text: str = "Change settings") -> None:
        settings = self._for_engine(settings)
        if settings != self.settings:
            self.undo_stack.push(SettingsCommand(self, self.settings, settings, text))

    def set_rig(self, rig: Rig) -> None:
        """Set the hardware without an undo step or a re-plan (start-up, an opened profile)."""
        self._planner.update(rig=rig)
        self._estimate_cache = None
        self.rig_changed.emit()
        self.plan_changed.emit(frozenset())

    def change_rig(self, rig: Rig, text: str = "Change hardware") -> AutoPlacement:
        """The user switched hardware: one undo step that also re-plans (pins whose device
        remains stay, cells of vanished devices and new GPUs are auto-placed). Returns the
        placement (with its notes)."""
        placed = replan_for_rig(self._layout, self._plan, rig, self.settings)
        if rig != self.rig or placed.plan != self._plan:
            self.undo_stack.push(RigCommand(self, (self.rig, self._plan), (rig, placed.plan), text))
        return placed

    def set_model(
        self, layout: ModelLayout, plan: Plan | None = None, settings: Settings | None = None
    ) -> None:
        """Load another model; the undo history starts afresh."""
        self._layout = layout
        self._planner = Planner(layout, self.rig, self._for_engine(settings or self.settings))
        self._plan = plan if plan is not None else initial_plan(layout)
        self._opening = (self.rig, self._plan)
        self._estimate_cache = None
        self.undo_stack.clear()
        self.model_changed.emit()
        self.plan_changed.emit(frozenset())
        self.settings_changed.emit()

    def rebind_model(self, layout: ModelLayout) -> None:
        """Put ``layout`` in the place of a model with the same tensors (a remote model's
        download): plan, settings and the undo history stay, since every step is as valid for
        the one as for the other."""
        self._layout = layout
        self._planner = Planner(layout, self.rig, self.settings)
        self._estimate_cache = None
        self.model_changed.emit()
        self.plan_changed.emit(frozenset())
        self.settings_changed.emit()

    def set_learned(self, learned: Learned) -> None:
        """Compute buffers measured on this machine for this model (not an undo step: a fact)."""
        self._planner.update(learned=learned)
        self._estimate_cache = None
        self.plan_changed.emit(frozenset())

    def add_benchmark(self, result: Mapping[str, Any]) -> None:
        """Keep a benchmark result with the profile; the document becomes unsaved.

        Not an undo step: a measurement is a fact, like the rig. Undoing the last placement
        edit must not delete a run that took minutes (and an edit after that undo would drop it
        for good). The undo stack is only marked unclean, so the close prompt and the autosave
        keep the new result until it is saved.
        """
        self._benchmarks.append(result)
        self.undo_stack.resetClean()
        self.benchmarks_changed.emit()

    def mark_clean(self) -> None:
        self.undo_stack.setClean()

    def to_profile(self, name: str = "") -> Profile:
        """The current work as a profile (the opened profile updated, or a new one), with the
        benchmark results of this document."""
        if self.profile is not None:
            updated = update_profile(
                self.profile, self._planner, self._plan, executable=self.executable
            )
            return replace(updated, benchmarks=tuple(self._benchmarks))
        return profile_from_plan(
            self._planner,
            self._plan,
            executable=self.executable,
            name=name or self._layout.name,
            benchmarks=self._benchmarks,
        )

    def set_profile(self, profile: Profile | None, path: str | None) -> None:
        """The profile now being edited (None: a new one); its benchmark results replace the
        document's."""
        self.profile = profile
        self.profile_path = path
        benchmarks = list(profile.benchmarks) if profile is not None else []
        changed = benchmarks != self._benchmarks
        self._benchmarks = benchmarks
        self.profile_changed.emit()
        if changed:
            self.benchmarks_changed.emit()

    # --- called by commands only ---------------------------------------------------------------

    def restore_plan(self, plan: Plan, cells: frozenset[Cell]) -> None:
        self._plan = plan
        self.plan_changed.emit(cells)

    def restore_rig(self, rig: Rig, plan: Plan) -> None:
        self._planner.update(rig=rig)
        self._plan = plan
        self._estimate_cache = None
        self.rig_changed.emit()
        self.plan_changed.emit(frozenset())

    def restore_settings(self, settings: Settings) -> None:
        self._planner.update(settings=self._for_engine(settings))
        self._estimate_cache = None
        self.settings_changed.emit()
        self.plan_changed.emit(frozenset())

    def _on_undo_stack_clean_changed(self, clean: bool) -> None:
        self.dirty_changed.emit(not clean)
