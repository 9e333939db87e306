"""The Tune dialog: measure configurations of the current plan and apply the fastest.

The run is :func:`moe_studio.core.engine.tune.tune` in the dialog's own
:class:`~moe_studio.gui.tasks.TaskRunner` (one background task; Stop cancels it, which also stops
the benchmark process). The baseline is the document's current configuration, so the plot's star
is "what you have now". Trials arrive through the worker's progress reports: the worker appends
them to a list under a lock and the GUI thread drains it, updating the table model and the plot
in place. "Apply best" replaces plan and settings as one undo step
(:meth:`moe_studio.gui.document.Document.replace_plan_and_settings`); a finished run is kept with
the profile beside the benchmark runs (:meth:`~moe_studio.gui.document.Document.add_benchmark`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from moe_studio.core.cli.tune import parse_depths
from moe_studio.core.engine.calibration import default_path
from moe_studio.core.engine.discovery import EngineInfo
from moe_studio.core.engine.tune import (
    OBJECTIVES,
    Journal,
    Objective,
    Trial,
    TuneOptions,
    TuneResult,
    fingerprint,
    journal_path_for,
    tune,
)
from moe_studio.core.engine.tune_space import build_space
from moe_studio.core.errors import CommandError
from moe_studio.core.plan.planning import Planner
from moe_studio.gui.document import Document
from moe_studio.gui.messages import error_text
from moe_studio.gui.tasks import TaskRunner
from moe_studio.gui.tune.trials_model import TrialsModel
from moe_studio.gui.tune.tune_plot import TunePlot
from moe_studio.gui.wheel import guard_wheel

log = logging.getLogger(__name__)

EngineProvider = Callable[[], EngineInfo | None]
APPLY_TEXT = "Apply tuned configuration"
_OBJECTIVE_LABELS = {
    "balanced": "Balanced (PP × TG)",
    "pp": "Prompt processing (PP)",
    "tg": "Generation (TG)",
}


def tune_entry(
    result: TuneResult,
    objective: Objective,
    *,
    seconds: float,
    engine: str = "",
    now: datetime | None = None,
) -> dict[str, Any]:
    """What the profile keeps of a finished run, shaped like a benchmark run (the best's curve)
    plus a ``tune`` object with every trial (without their command lines)."""
    best = result.best
    assert best is not None
    gain = result.gain(objective)
    times = f" ({gain:.2f}× the current {objective})" if gain else ""
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    trials = []
    for t in result.trials:
        item = t.to_json()
        item.pop("argv", None)
        trials.append(item)
    return {
        "label": f"tune — best: {best.knobs.label()}{times}",
        "timestamp": moment.isoformat().replace("+00:00", "Z"),
        "tool": "sweep-bench" if "sweep" in (best.argv[0] if best.argv else "") else "bench",
        "argv": list(best.argv),
        "env": {},
        "points": [[p.n_kv, p.s_pp, p.s_tg] for p in best.points],
        "seconds": round(seconds, 1),
        "tg_tokens_per_second": best.tg,
        "pp_tokens_per_second": best.pp,
        "n_kv": best.points[0].n_kv if best.points else 0,
        "ubatch": best.knobs.ubatch,
        "engine": engine,
        "complete": True,
        "tune": {
            "objective": objective,
            "depths": list(best.depths),
            "loads": result.loads,
            "gain": gain,
            "baseline": result.baseline.knobs.to_json() if result.baseline else None,
            "best": best.knobs.to_json(),
            "trials": trials,
        },
    }


class TuneDialog(QDialog):
    """Tune the document's configuration with the engine's benchmark tools.

    Signals:
        run_finished(TuneResult): a run ended with a result (not when stopped).
        run_failed(str): a run could not start or ended in an error (the sentence).
    """

    run_finished = Signal(object)
    run_failed = Signal(str)

    def __init__(
        self,
        document: Document,
        engine_provider: EngineProvider,
        parent: QWidget | None = None,
        *,
        calibration: Path | None = None,
        blocker: Callable[[], str] | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Tune")
        # Why a run cannot start now (the server or a benchmark holds the devices), or "".
        self._blocker = blocker or (lambda: "")
        self._document = document
        self._engine_provider = engine_provider
        self._calibration = calibration
        self._lock = threading.Lock()
        self._arrived: list[Trial] = []
        self._current_key = ""
        self._objective: Objective = "balanced"
        self._started = 0.0
        self._budget_seconds = 0.0
        self._max_trials = 0  # the run's trial cap (0: the time budget decides)
        self._planned = 0  # trials the run takes at most (set by the worker once it has a space)
        self.clock: Callable[[], float] = time.monotonic  # the progress bar's clock
        # (layout, rig, settings) the run measured: its best is for them only.
        self._measured_for: tuple[object, ...] | None = None
        self.tune_result: TuneResult | None = None
        self.tasks = TaskRunner(self)
        self.model = TrialsModel()
        self._build()
        self.tasks.progressed.connect(self._on_tasks_progressed)
        # With a time budget the bar moves with the clock, not only when a trial ends.
        self._progress_timer = QTimer(self)
        self._progress_timer.setObjectName("tune_progress_timer")
        self._progress_timer.setInterval(1000)
        self._progress_timer.timeout.connect(self.refresh_progress)
        self.tasks.failed.connect(self._on_tasks_failed)
        self.tasks.running_changed.connect(self._on_tasks_running_changed)
        self.start_button.clicked.connect(self._on_start_button_clicked)
        self.stop_button.clicked.connect(self._on_stop_button_clicked)
        self.apply_button.clicked.connect(self._on_apply_button_clicked)
        self.objective.currentIndexChanged.connect(self._on_objective_changed)
        # A run's best is for the model and hardware it measured, not for what is open now.
        document.model_changed.connect(self._on_document_changed)
        document.rig_changed.connect(self._on_document_changed)
        # Undoing "Apply best" offers it again; redoing it (or applying) does not.
        document.plan_changed.connect(self._on_document_changed)
        self.resize(1100, 680)
        # Start has the focus when the dialog opens (Enter starts; a wheel over the budget does
        # not change a field the user never chose).
        self.start_button.setFocus(Qt.FocusReason.OtherFocusReason)

    # --- construction ----------------------------------------------------------------------------

    def _build(self) -> None:
        self.budget = QSpinBox()
        self.budget.setRange(1, 24 * 60)
        self.budget.setValue(20)
        self.budget.setSuffix(" min")
        self.budget.setToolTip("Wall time for the whole run, model loads included.")
        self.max_trials = QSpinBox()
        self.max_trials.setRange(0, 10_000)
        self.max_trials.setSpecialValueText("no limit")
        self.max_trials.setToolTip("Stop after this many trials (0: only the time counts).")
        self.objective = QComboBox()
        for key in OBJECTIVES[::-1]:
            self.objective.addItem(_OBJECTIVE_LABELS[key], key)
        self.depths = QLineEdit("0")
        self.depths.setPlaceholderText("0, 8192")
        self.depths.setToolTip(
            "KV depths (tokens already in the cache) at which the finalists are measured."
        )
        self.allow_cache = QCheckBox("Also try a q8_0 KV cache (changes the output slightly)")
        self.resume = QCheckBox("Resume: reuse the trials of the last run")
        # The wheel edits a field only once it was clicked or tabbed into (as in Settings).
        self._wheel_guard = guard_wheel(self, (self.budget, self.max_trials, self.objective))
        form = QFormLayout()
        form.addRow("Budget", self.budget)
        form.addRow("Trials at most", self.max_trials)
        form.addRow("Objective", self.objective)
        form.addRow("Depths", self.depths)
        form.addRow(self.allow_cache)
        form.addRow(self.resume)

        self.start_button = QPushButton("Start")
        self.start_button.setDefault(True)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.status = QLabel(
            "Measures -ub/-b, threads and expert layers per GPU with the "
            "engine's benchmark; only configurations that fit are tried."
        )
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.progress, 1)

        self.plot = TunePlot()
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        header.setStretchLastSection(False)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.plot)
        split.addWidget(self.table)
        split.setSizes([480, 620])

        self.best_label = QLabel("")
        self.best_label.setWordWrap(True)
        self.best_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.apply_button = QPushButton("Apply best")
        self.apply_button.setEnabled(False)
        self.apply_button.setToolTip("Replace the plan and settings with the best (one undo step).")
        bottom = QHBoxLayout()
        bottom.addWidget(self.best_label, 1)
        bottom.addWidget(self.apply_button)

        top = QHBoxLayout()
        top.addLayout(form)
        top.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(split, 1)
        layout.addLayout(bottom)

    # --- running ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.tasks.running

    def start(self) -> bool:
        """Start a run with the dialog's options; False (and a sentence) when it cannot."""
        blocked = self._blocker()
        if blocked:
            self._fail(blocked)
            return False
        engine = self._engine_provider()
        if engine is None:
            self._fail(
                'Choose an engine first: "Choose engine…" in the Server tab picks the '
                "llama-server binary; its folder must hold llama-sweep-bench or llama-bench."
            )
            return False
        try:
            depths = parse_depths(self.depths.text())
        except CommandError:  # its sentence names the command-line flag
            self._fail("Depths: give whole numbers separated by commas, e.g. 0, 8192.")
            return False
        doc = self._document
        planner = Planner(doc.layout, doc.rig, doc.settings)
        plan, settings = doc.plan, doc.settings
        objective: Objective = self.objective.currentData()
        self._objective = objective
        options = TuneOptions(
            objective=objective,
            depths=depths,
            budget_seconds=self.budget.value() * 60.0,
            max_trials=self.max_trials.value() or None,
        )
        path = journal_path_for(doc.profile_path or doc.layout.source)
        journal = Journal(
            path, fingerprint(planner, engine, options.n_gen), resume=self.resume.isChecked()
        )
        calibration = self._calibration or default_path()
        allow_cache = self.allow_cache.isChecked()
        self.model.clear()
        self.model.set_objective(objective)
        self.tune_result = None
        self._measured_for = self._state()
        self.apply_button.setEnabled(False)
        self.best_label.setText("")
        with self._lock:
            self._arrived = []
        self._current_key = ""
        self._started = self.clock()
        self._budget_seconds = options.budget_seconds or 0.0
        self._max_trials = options.max_trials or 0
        with self._lock:
            self._planned = 0

        def work(
            progress: Callable[[float, str], None], cancelled: Callable[[], bool]
        ) -> TuneResult:
            space = build_space(planner, plan, baseline=(plan, settings), allow_cache=allow_cache)
            self._current_key = space.baseline.knobs.key
            with self._lock:
                self._planned = options.planned_trials(len(space.candidates))
            progress(0.0, f"{len(space.candidates)} configurations fit; measuring the current one")

            def on_trial(trial: Trial) -> None:
                with self._lock:
                    self._arrived.append(trial)
                progress(0.0, f"{trial.knobs.label()}: {trial.status}")

            return tune(
                space,
                planner,
                engine,
                options,
                journal=journal,
                cancelled=cancelled,
                on_trial=on_trial,
                progress=lambda text: progress(-1.0, text),
                calibration=calibration,
            )

        self.status.setText("Building the search space…")
        self.tasks.start(work, self._on_run_done)
        return True

    def stop(self) -> None:
        """Stop the run (the benchmark process too); measured trials stay in the journal."""
        if self.tasks.running:
            self.tasks.cancel()
            self.status.setText(
                "Stopped. The finished trials are kept: tick Resume and Start to go on."
            )

    def _fail(self, sentence: str) -> None:
        self.status.setText(sentence)
        self.run_failed.emit(sentence)

    def _drain(self) -> None:
        with self._lock:
            arrived, self._arrived = self._arrived, []
        if arrived:
            self.model.append(arrived)
        best = self.tune_result.best if self.tune_result is not None else None
        self.plot.set_trials(self.model.trials, self._current_key, best)

    # --- slots -----------------------------------------------------------------------------------

    def _on_start_button_clicked(self) -> None:
        self.start()

    def _on_stop_button_clicked(self) -> None:
        self.stop()

    def _on_objective_changed(self, _index: int) -> None:
        if not self.tasks.running:
            self.model.set_objective(self.objective.currentData())

    def _on_tasks_running_changed(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        for widget in (self.budget, self.max_trials, self.objective, self.depths):
            widget.setEnabled(not running)
        if running and not self._max_trials:
            self._progress_timer.start()
        else:
            self._progress_timer.stop()
        self.refresh_progress()

    def refresh_progress(self) -> None:
        """The bar: trials done of the planned count when the run has a trial cap, else the
        time spent of the budget; its text always counts the trials done."""
        done = self.model.rowCount()
        with self._lock:
            planned = self._planned
        trials = f"{done} trial{'' if done == 1 else 's'}"
        finished = self.tune_result is not None
        if self._max_trials and not planned and not finished:
            self.progress.setRange(0, 1)  # the search space is still being built
            self.progress.setValue(0)
            self.progress.setFormat(f"{trials} done")
            return
        if self._max_trials or finished:
            total = done if finished else max(planned, done)
            self.progress.setRange(0, max(total, 1))
            self.progress.setValue(done)
            self.progress.setFormat(f"{trials} done" if finished else f"{done} of {total} trials")
            return
        if not self.tasks.running:
            return  # not started, or stopped: the bar keeps where it was
        spent = max(0.0, self.clock() - self._started)
        budget = self._budget_seconds or 1.0
        self.progress.setRange(0, 1000)
        self.progress.setValue(int(min(1.0, spent / budget) * 1000))
        self.progress.setFormat(
            f"{trials} done · {_minutes(spent)} of {_minutes(self._budget_seconds)}"
        )

    def _on_tasks_progressed(self, _fraction: float, text: str) -> None:
        self.status.setText(text)
        self._drain()
        self.refresh_progress()

    def _on_tasks_failed(self, error: object) -> None:
        self._drain()
        # Ours read as their sentence; anything else as an internal error (logged with its trace).
        self._fail(error_text(error)[0] if isinstance(error, BaseException) else str(error))

    def _on_run_done(self, result: object) -> None:
        assert isinstance(result, TuneResult)
        self.tune_result = result
        self._drain()
        self.refresh_progress()
        objective = self._objective
        best, base = result.best, result.baseline
        measured = len(result.measured)
        summary = (
            f"{measured} trials measured with {result.loads} model loads "
            f"({len(result.trials) - measured} from the journal); stopped: {result.stop}."
        )
        if best is None:
            self.status.setText(summary + " " + " ".join(result.notes))
            self.run_finished.emit(result)
            return
        gain = result.gain(objective)
        lines = [f"Best: {best.knobs.label()} — PP {best.pp or 0:,.1f}, TG {best.tg or 0:,.1f} t/s"]
        if base is not None:
            lines.append(
                f"current: PP {base.pp or 0:,.1f}, TG {base.tg or 0:,.1f} t/s"
                + (f" ({gain:.2f}× on {objective})" if gain else "")
            )
        self.best_label.setText("\n".join(lines))
        self.status.setText(summary)
        self._update_apply()
        engine = self._engine_provider()
        self._document.add_benchmark(
            tune_entry(
                result,
                objective,
                seconds=self.clock() - self._started,
                engine=engine.label if engine is not None else "",
            )
        )
        self.run_finished.emit(result)

    def _state(self) -> tuple[object, ...]:
        doc = self._document
        return (doc.layout, doc.rig, doc.settings)

    def measured_here(self) -> bool:
        """Whether the last run measured the model, hardware and settings in force now (once
        applied, the best's settings count as measured too)."""
        if self._measured_for is None:
            return False
        return self._measured_for == self._state() or self.applied()

    def _can_apply(self) -> bool:
        result = self.tune_result
        return (
            result is not None
            and result.best_candidate is not None
            and result.best != result.baseline
            and self.measured_here()
            and not self.applied()
        )

    def applied(self) -> bool:
        """Whether the document holds the best's plan and settings now."""
        result = self.tune_result
        if result is None or result.best_candidate is None:
            return False
        doc, best = self._document, result.best_candidate
        return doc.plan == best.plan and doc.settings == best.settings

    def _update_apply(self) -> None:
        self.apply_button.setEnabled(self._can_apply())

    def _on_document_changed(self, _cells: object = None) -> None:
        if self.tune_result is None or self.tasks.running:
            return
        was = self.apply_button.isEnabled()
        self._update_apply()
        if not self.measured_here():
            self.status.setText(
                "The model, hardware or settings changed since this run; Apply best would take "
                "them back. Start measures again (or Undo the change)."
            )
        elif not was and self.apply_button.isEnabled():
            self.status.setText(
                "Back to the configuration this run measured: Apply best is offered again."
            )

    def _on_apply_button_clicked(self) -> None:
        result = self.tune_result
        if result is None or result.best_candidate is None or not self._can_apply():
            return
        candidate = result.best_candidate
        self._document.replace_plan_and_settings(candidate.plan, candidate.settings, APPLY_TEXT)
        self._update_apply()
        self.status.setText("Applied the best configuration (Edit → Undo takes it back).")

    def closeEvent(self, event: QCloseEvent) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop a run and wait for its thread (closing the dialog, tests)."""
        self.tasks.cancel()
        self.tasks.wait()

    def benchmarks(self) -> tuple[Mapping[str, Any], ...]:
        return self._document.benchmarks


def _minutes(seconds: float) -> str:
    """``m:ss``."""
    whole = int(seconds)
    return f"{whole // 60}:{whole % 60:02d}"
