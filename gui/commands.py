"""Undo commands. Each holds the exact before/after values, so undo restores them byte for byte."""

from __future__ import annotations

from typing import Protocol

from PySide6.QtGui import QUndoCommand

from moe_studio.core.gguf.model import Cell
from moe_studio.core.hardware.devices import Rig
from moe_studio.core.plan.placement import Plan
from moe_studio.core.plan.settings import Settings


class Restorable(Protocol):
    """What the commands change: the document's setters that bypass the undo stack (the
    document owns the stack and pushes these commands; it is not imported here)."""

    def restore_plan(self, plan: Plan, cells: frozenset[Cell]) -> None: ...

    def restore_settings(self, settings: Settings) -> None: ...

    def restore_rig(self, rig: Rig, plan: Plan) -> None: ...


PLAN_STROKE_ID = 1001


class PlanCommand(QUndoCommand):
    """Replace the plan. Commands of the same non-zero paint ``stroke`` merge into one step."""

    def __init__(
        self,
        document: Restorable,
        before: Plan,
        after: Plan,
        cells: frozenset[Cell],
        text: str,
        stroke: int = 0,
    ) -> None:
        super().__init__(text)
        self._document = document
        self.before = before
        self.after = after
        self.cells = cells
        self.stroke = stroke

    def id(self) -> int:
        return PLAN_STROKE_ID if self.stroke else -1

    def mergeWith(self, other: QUndoCommand) -> bool:
        if not isinstance(other, PlanCommand) or not self.stroke or other.stroke != self.stroke:
            return False
        self.after = other.after
        self.cells = self.cells | other.cells
        self.setText(f"Paint {len(self.cells)} cells")
        return True

    def redo(self) -> None:
        self._document.restore_plan(self.after, self.cells)

    def undo(self) -> None:
        self._document.restore_plan(self.before, self.cells)


class SettingsCommand(QUndoCommand):
    def __init__(self, document: Restorable, before: Settings, after: Settings, text: str) -> None:
        super().__init__(text)
        self._document = document
        self.before = before
        self.after = after

    def redo(self) -> None:
        self._document.restore_settings(self.after)

    def undo(self) -> None:
        self._document.restore_settings(self.before)


class RigCommand(QUndoCommand):
    """Change the hardware and the plan re-placed for it, as one step."""

    def __init__(
        self,
        document: Restorable,
        before: tuple[Rig, Plan],
        after: tuple[Rig, Plan],
        text: str,
    ) -> None:
        super().__init__(text)
        self._document = document
        self.before = before
        self.after = after

    def redo(self) -> None:
        self._document.restore_rig(*self.after)

    def undo(self) -> None:
        self._document.restore_rig(*self.before)
