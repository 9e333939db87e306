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
from moe_studio.core.plan.planning import Planner
from moe_studio.gui.budget.budget_plot import BudgetPlot
from moe_studio.gui.document import Document
from moe_studio.gui.tasks import TaskRunner

log = logging.getLogger(__name__)


class EngineCheck(QWidget):
    """A button and a status line under the budget bars.

    Args:
        document: The plan to check.
        budget: The bars that get the engine's marks.
        tasks: The main window's task runner.
        engine: Returns the engine to check with (the Server tab's), or None.
        calibration_path: The calibration file (default: the user's).
    """

    def __init__(
        self,
        document: Document,
        budget: BudgetPlot,
        tasks: TaskRunner,
        engine: Callable[[], EngineInfo | None],
        *,
        calibration_path: Path | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.document = document
        self.budget = budget
        self.tasks = tasks
        self.engine = engine
        self.calibration_path = calibration_path
        self.result: ProbeResult | None = None
        row = QHBoxLayout(self)
        row.setContentsMargins(6, 0, 6, 0)
        self.button = QPushButton("Check with engine")
        self.button.setToolTip(
            "Run the command with ik_llama.cpp's --dry-run: every buffer is allocated and "
            "printed, no weights are read (seconds). The engine's figures are marked on the bars "
            "and replace the estimate for this configuration."
        )
        self.status = QLabel("Estimated; not checked with the engine.")
        self.status.setWordWrap(True)
        self.status.setStyleSheet("font-size: 11px;")
        row.addWidget(self.button)
        row.addWidget(self.status, 1)
        self.button.clicked.connect(self.check)
        tasks.running_changed.connect(self._on_tasks_running_changed)
        document.model_changed.connect(self._on_document_model_changed)
        self.relearn()

    def relearn(self) -> None:
        """Let the document learn from the records of this model (and engine, when known)."""
        info = self.engine()
        version = info.version if info is not None and info.version else None
        doc = self.document
        records = read_records(self.calibration_path)
        doc.set_learned(learned_for(records, doc.layout, doc.settings.dialect, version))

    def check(self) -> None:
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
        self.status.setText(f"Checking with {info.label}…")
        self.budget.show_measured(None)

        def work(progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> object:
            return run_probe(spec, info, planner, plan, cancelled=cancelled, progress=progress)

        def done(result: object) -> None:
            assert isinstance(result, ProbeResult)
            self._on_checked(result, planner, plan, info)

        self.tasks.start(work, done)

    def _on_tasks_running_changed(self, running: bool) -> None:
        self.button.setEnabled(not running)  # one background task at a time

    def _on_checked(
        self, result: ProbeResult, planner: Planner, plan: object, info: EngineInfo
    ) -> None:
        self.result = result
        doc = self.document
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
        self.status.setText(text)
        if result.rows and doc.plan is plan:
            self.budget.show_measured(result)

    def _on_document_model_changed(self) -> None:
        self.budget.show_measured(None)
        self.status.setText("Estimated; not checked with the engine.")
        self.relearn()
