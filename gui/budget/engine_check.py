"""The budget panel's "Check with engine" row: dry-run the plan's command and mark the bars.

The check runs :func:`moe_studio.core.engine.probe.run_probe` in the main window's task runner
(one background task at a time, cancellable, results back on the GUI thread). A measured check
adds a calibration record, so the document learns the engine's compute buffers
(:mod:`moe_studio.core.plan.learned`) and the bars show them as measured; the engine's totals are
drawn as marks on the bars while the plan stays the one that was checked. A check that cannot
measure (mainline, a crash, a timeout, out of memory) says why in the row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from moe_studio.core.engine.calibration import (
    append_record,
    learned_for,
    make_record,
    read_records,
)
from moe_studio.core.engine.discovery import EngineInfo
from moe_studio.core.engine.launch import build_launch_spec
from moe_studio.core.engine.probe import ProbeOutcome, ProbeResult, run_probe
from moe_studio.core.errors import MoeStudioError
from moe_studio.core.plan.memory import ComputeSource
from moe_studio.core.plan.planning import Planner
from moe_studio.gui.budget.budget_plot import BudgetPlot
from moe_studio.gui.document import Document
from moe_studio.gui.tasks import TaskRunner

log = logging.getLogger(__name__)

UNCHECKED = "Estimated; not checked with the engine."
LEARNED = (
    "This plan is not checked with the engine; compute buffers marked measured come from an "
    "earlier check at these settings."
)


class EngineCheck(QWidget):
    """A button and a status line under the budget bars.

    Args:
        document: The plan to check.
        budget: The bars that get the engine's marks.
        tasks: The main window's task runner.
        engine: Returns the engine to check with (the Server tab's), or None.
        calibration_path: The calibration file (default: the user's).
        blocker: Why a check cannot run now (a server or benchmark holds the devices), or "".
    """

    def __init__(
        self,
        document: Document,
        budget: BudgetPlot,
        tasks: TaskRunner,
        engine: Callable[[], EngineInfo | None],
        *,
        calibration_path: Path | None = None,
        blocker: Callable[[], str] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.document = document
        self.budget = budget
        self.tasks = tasks
        self.engine = engine
        self.calibration_path = calibration_path
        self.blocker = blocker or (lambda: "")
        self.result: ProbeResult | None = None
        # What the last check was of (plan, settings, rig) and what it said: the sentence
        # stands while that is what the window shows (an undo brings it back).
        self._checked: tuple[tuple[object, ...], str] | None = None
        self._checking = False
        row = QHBoxLayout(self)
        row.setContentsMargins(6, 0, 6, 0)
        self.button = QPushButton("Check with engine")
        self.button.setToolTip(
            "Run the command with ik_llama.cpp's --dry-run: every buffer is allocated and "
            "printed, no weights are read (seconds). The engine's figures are marked on the bars "
            "and replace the estimate for this configuration."
        )
        self.status = QLabel(UNCHECKED)
        self.status.setWordWrap(True)
        self.status.setStyleSheet("font-size: 11px;")
        row.addWidget(self.button)
        row.addWidget(self.status, 1)
        self.button.clicked.connect(self.check)
        tasks.running_changed.connect(self._on_tasks_running_changed)
        document.model_changed.connect(self._on_document_model_changed)
        # Emitted for every edit, settings and rig change too.
        document.plan_changed.connect(self._on_document_plan_changed)
        self.relearn()

    def relearn(self) -> None:
        """Let the document learn from the records of this model (and engine, when known)."""
        info = self.engine()
        version = info.version if info is not None and info.version else None
        doc = self.document
        records = read_records(self.calibration_path)
        doc.set_learned(learned_for(records, doc.layout, doc.settings.dialect, version))

    def check(self) -> None:
        blocked = self.blocker()
        if blocked:
            self.status.setText(blocked)
            return
        info = self.engine()
        if info is None or not info.usable:
            self.status.setText("Choose a llama-server first (Server tab, Choose engine…).")
            return
        doc = self.document
        # A planner of its own: the document's is updated in place on the GUI thread while the
        # dry run estimates in the worker.
        planner, plan = Planner(doc.layout, doc.rig, doc.settings), doc.plan
        try:
            spec = build_launch_spec(doc.result(), info, dialect=doc.settings.dialect)
        except MoeStudioError as exc:
            self.status.setText(str(exc))
            return
        state = self.budget.checked_state()
        self._checked = None
        self._checking = True
        self.status.setText(f"Checking with {info.label}…")
        self.budget.show_measured(None)

        def work(progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> object:
            return run_probe(spec, info, planner, plan, cancelled=cancelled, progress=progress)

        def done(result: object) -> None:
            assert isinstance(result, ProbeResult)
            self._on_checked(result, state, planner, info)

        self.tasks.start(work, done)

    def _on_tasks_running_changed(self, running: bool) -> None:
        self.button.setEnabled(not running)  # one background task at a time
        if not running and self._checking:  # cancelled (another task took the runner)
            self._checking = False
            self._show_status()

    def _on_checked(
        self, result: ProbeResult, state: tuple[object, ...], planner: Planner, info: EngineInfo
    ) -> None:
        self.result = result
        self._checking = False
        if result.measured:
            try:
                # The settings that were checked, not the document's now (edited meanwhile).
                record = make_record(
                    planner.layout, planner.settings, list(result.rows), engine=info.version
                )
                append_record(record, self.calibration_path)
            except MoeStudioError as exc:
                log.warning("could not record the check: %s", exc)
            self.relearn()
        text = result.sentence
        if result.outcome is ProbeOutcome.OUT_OF_MEMORY and result.diagnosis is not None:
            fixes = ", ".join(f.label for f in result.diagnosis.fixes[:3])
            text += f" Fixes: {fixes}." if fixes else ""
        self._checked = (state, text)
        if result.rows:
            self.budget.show_measured(result, state)
        self._show_status()

    def _show_status(self) -> None:
        """The last check's sentence while the plan, settings and rig are the ones it checked;
        otherwise the bars are estimates again, and the line says so."""
        checked = self._checked
        if checked is not None and checked[0] == self.budget.checked_state():
            self.status.setText(checked[1])
            return
        _, estimate = self.document.estimate()
        learned = any(d.compute_source is not ComputeSource.ESTIMATED for d in estimate.devices)
        # A bar may still say "measured": its compute buffer comes from an earlier check of
        # the same settings, which is not a check of this plan.
        self.status.setText(LEARNED if learned else UNCHECKED)

    def _on_document_plan_changed(self, _cells: object = None) -> None:
        if not self._checking:
            self._show_status()

    def forget(self) -> None:
        """Drop the last check's marks and sentence and learn again (another model or engine)."""
        self._checked = None
        self.budget.show_measured(None)
        self.status.setText(UNCHECKED)
        self.relearn()

    def _on_document_model_changed(self) -> None:
        self.forget()
