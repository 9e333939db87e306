"""The benchmark panel: run ``llama-sweep-bench`` (ik) or ``llama-bench`` with the current plan,
watch S_PP and S_TG against N_KV, keep every run with the profile and overlay runs to compare
placements.

The command shown is exactly the one that runs
(:func:`moe_studio.core.engine.bench_run.build_bench_spec` of the document's plan and settings,
shell-quoted, refreshed after a change). The run goes through
:class:`gui.bench.bench_process.BenchProcess` (QProcess, never a shell, never a blocking wait); its
curve grows as rows arrive. A finished run (also a cancelled one that measured something) is handed
to :meth:`gui.document.Document.add_benchmark`, which keeps it in the profile's ``benchmarks``;
runs loaded with a profile appear in the list the same way. Which runs are shown is view state,
kept here, not in the document.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from PySide6.QtCore import QSignalBlocker, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QFont, QFontDatabase, QShowEvent
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from moe_studio.core.engine.bench_run import BenchOutcome, BenchSpec, BenchTool, build_bench_spec
from moe_studio.core.engine.discovery import EngineInfo
from moe_studio.core.errors import MoeStudioError
from moe_studio.gui import theme
from moe_studio.gui.bench.bench_plot import BenchPlot, RunCurve, run_icon
from moe_studio.gui.bench.bench_process import BenchProcess
from moe_studio.gui.bench.runs import (
    benchmark_entry,
    entry_label,
    entry_points,
    entry_speed,
    entry_time,
    expected_depths,
    run_label,
)
from moe_studio.gui.document import Document

log = logging.getLogger(__name__)

EngineProvider = Callable[[], EngineInfo | None]
NO_ENGINE_TIP = (
    'Choose an engine first: "Choose engine…" in the Server tab picks the llama-server '
    "binary; its folder must also hold llama-sweep-bench (ik_llama.cpp) or llama-bench."
)
REFRESH_MS = 150  # coalesce a paint stroke's many plan changes into one rebuild
TICK_MS = 500  # live curve and status while a run goes
NO_RUN_TEXT = "No benchmark run yet."
LOG_LINES = 2000
COLUMNS = ("Run", "S_TG t/s", "S_PP t/s", "Depths", "When")


def _speed(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def _tail(log_text: str, lines: int = 3) -> str:
    last = [line.strip() for line in log_text.strip().splitlines()[-lines:] if line.strip()]
    return f" Last lines: {' | '.join(last)}" if last else ""


def _failure_text(outcome: BenchOutcome) -> str:
    """The outcome's error, with the tool's last lines when the error does not quote them."""
    if outcome.cancelled or "Last lines:" in outcome.error:
        return outcome.error
    return outcome.error + _tail(outcome.log)


class BenchPanel(QWidget):
    """Benchmarks of the current plan.

    Args:
        document: The one document; its plan and settings give the command, its profile keeps
            the results.
        engine_provider: Returns the engine chosen in the window (None: none chosen yet). Call
            :meth:`refresh` when the choice changes.

    Signals:
        run_started(BenchSpec): a run was started.
        run_finished(BenchOutcome): a run ended (finished, failed, cancelled).
    """

    run_started = Signal(object)
    run_finished = Signal(object)

    def __init__(
        self,
        document: Document,
        engine_provider: EngineProvider,
        parent: QWidget | None = None,
        *,
        blocker: Callable[[], str] | None = None,
    ) -> None:
        super().__init__(parent)
        self._document = document
        self._engine_provider = engine_provider
        # Why a run cannot start now ("" when it can): the window's server holds the devices.
        self._blocker = blocker or (lambda: "")
        self._spec: BenchSpec | None = None
        self._spec_error = ""
        self._entries: tuple[Mapping[str, Any], ...] = ()
        self._visible: list[bool] = []
        self._running_label = ""
        self._running_meta: tuple[int, int, str] = (0, 0, "")  # ctx, ub, engine label
        self._expected = 0
        self.last_outcome: BenchOutcome | None = None

        self.process = BenchProcess(self)
        self._build()

        self._refresh_timer = QTimer(self)
        self._refresh_timer.setObjectName("bench_refresh_timer")
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self.refresh)
        self._tick_timer = QTimer(self)
        self._tick_timer.setObjectName("bench_tick_timer")
        self._tick_timer.setInterval(TICK_MS)
        self._tick_timer.timeout.connect(self._on_tick_timer_timeout)
        self._new_output = False

        self.run_button.clicked.connect(self._on_run_button_clicked)
        self.cancel_button.clicked.connect(self._on_cancel_button_clicked)
        self.tool.currentIndexChanged.connect(self._on_option_changed)
        for spin in (self.ctx, self.ubatch, self.n_gen, self.repetitions):
            spin.valueChanged.connect(self._on_option_changed)
        self.runs.itemChanged.connect(self._on_runs_item_changed)
        self.plot.toggle_requested.connect(self._on_plot_toggle_requested)
        self.process.lines_received.connect(self._on_process_lines_received)
        self.process.finished.connect(self._on_process_finished)
        document.plan_changed.connect(self._on_document_changed)
        document.settings_changed.connect(self._on_document_changed)
        document.model_changed.connect(self._on_document_changed)
        document.rig_changed.connect(self._on_document_changed)
        document.benchmarks_changed.connect(self._on_document_benchmarks_changed)
        self._on_document_benchmarks_changed()
        self.refresh()

    def sizeHint(self) -> QSize:
        # The plot asks for far more than it needs; as a tab of the window this panel takes the
        # tab's share of the height instead of pushing the budget plot above it away.
        return QSize(560, 380)

    # --- construction --------------------------------------------------------------------------

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)

        options = QGridLayout()
        options.setHorizontalSpacing(8)
        self.tool = QComboBox()
        self.tool.setToolTip(
            "llama-sweep-bench (ik_llama.cpp) measures at every KV depth 0, ub, 2·ub … below "
            "the context; llama-bench measures a few depths (mainline) or depth 0 (ik)."
        )
        self.ctx = QSpinBox()
        self.ctx.setRange(0, 1 << 21)
        self.ctx.setSingleStep(1024)
        self.ctx.setToolTip("Context (-c): the KV depths measured run from 0 up to it.")
        self.ubatch = QSpinBox()
        self.ubatch.setRange(0, 1 << 16)
        self.ubatch.setSingleStep(256)
        self.ubatch.setToolTip("-ub: the prompt tokens of each step, and the step between depths.")
        self.n_gen = QSpinBox()
        self.n_gen.setRange(0, 1 << 14)
        self.n_gen.setSingleStep(16)
        self.n_gen.setSpecialValueText("¼ of -ub")
        self.n_gen.setToolTip("-n: tokens generated at each depth.")
        self.repetitions = QSpinBox()
        self.repetitions.setRange(1, 100)
        self.repetitions.setValue(2)
        self.repetitions.setToolTip("llama-bench -r: repetitions of each test (mean ± stdev).")
        fields = (
            ("Tool:", self.tool),
            ("Context:", self.ctx),
            ("-ub:", self.ubatch),
            ("Generate:", self.n_gen),
            ("Repetitions:", self.repetitions),
        )
        # Two fields a row: the panel shares the Server tab's width (about 570 px at 1280×800).
        for i, (text, widget) in enumerate(fields):
            row, col = divmod(i, 2)
            label = QLabel(text)
            label.setBuddy(widget)
            options.addWidget(label, row, 2 * col, Qt.AlignmentFlag.AlignRight)
            options.addWidget(widget, row, 2 * col + 1)
        self.depths = QLabel()
        self.depths.setStyleSheet("color: palette(placeholder-text);")
        self.depths.setToolTip("The KV depths (N_KV) this run will measure.")
        options.addWidget(self.depths, 2, 2, 1, 2)
        options.setColumnStretch(4, 1)
        self.run_button = QPushButton("Run benchmark")
        self.run_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        options.addWidget(self.run_button, 0, 5)
        options.addWidget(self.cancel_button, 1, 5)
        layout.addLayout(options)

        self.command = QPlainTextEdit()
        self.command.setReadOnly(True)
        font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        font.setStyleHint(QFont.StyleHint.Monospace)
        self.command.setFont(font)
        self.command.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.command.setToolTip("The exact command the benchmark runs (read-only).")
        self.notes = QLabel()
        self.notes.setWordWrap(True)
        self.notes.setStyleSheet("color: palette(placeholder-text);")
        self.notes.hide()
        layout.addWidget(self.notes)

        status = QHBoxLayout()
        self.status = QLabel(NO_RUN_TEXT)
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        status.addWidget(self.status, 1)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.hide()
        status.addWidget(self.progress)
        layout.addLayout(status)

        splitter = QSplitter(Qt.Orientation.Vertical)
        self.plot = BenchPlot()
        splitter.addWidget(self.plot)
        self.bottom = QTabWidget()
        self.runs = QTreeWidget()
        self.runs.setColumnCount(len(COLUMNS))
        self.runs.setHeaderLabels(list(COLUMNS))
        self.runs.setRootIsDecorated(False)
        self.runs.setUniformRowHeights(True)
        self.runs.setToolTip("Tick the runs to overlay; each run keeps its colour and marker.")
        header = self.runs.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in range(1, len(COLUMNS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(False)
        self.bottom.addTab(self.runs, "Runs")
        # In a tab, so that the plot keeps the height at 1280×800 (the Server tab is short).
        self.bottom.addTab(self.command, "Command")
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setFont(font)
        self.log.setMaximumBlockCount(LOG_LINES)
        self.bottom.addTab(self.log, "Output")
        splitter.addWidget(self.bottom)
        # The runs list may shrink to its tab bar and a row: the plot matters more.
        self.bottom.setMinimumHeight(60)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        layout.addWidget(splitter, 1)

    # --- public --------------------------------------------------------------------------------

    @property
    def spec(self) -> BenchSpec | None:
        """What Run starts now (None when it cannot: see :attr:`command_problem`)."""
        return self._spec

    @property
    def command_problem(self) -> str:
        return self._spec_error

    @property
    def is_running(self) -> bool:
        return self.process.running

    def command_text(self) -> str:
        return self.command.toPlainText()

    def refresh(self) -> None:
        """Rebuild the command from the document, the engine and the options."""
        self._refresh_timer.stop()
        engine = self._engine_provider()
        self._update_tools(ik=self._document.settings.dialect == "ik")
        self._update_option_hints()
        self._spec, self._spec_error = None, ""
        if engine is None:
            self._spec_error = NO_ENGINE_TIP
        else:
            try:
                self._spec = self._build_spec(engine)
            except MoeStudioError as exc:
                self._spec_error = exc.message
        if self._spec is not None:
            self.command.setPlainText(self._spec.shell())
            self.notes.setText(" ".join(self._spec.notes))
            self.notes.setVisible(bool(self._spec.notes))
        else:
            self.command.setPlainText(self._spec_error)
            self.notes.setText(self._spec_error)
            self.notes.show()
        self._update_buttons()

    def start(self) -> bool:
        """Start the benchmark (what Run does); False with the reason in the status if it
        cannot."""
        if self.is_running:
            return False
        blocked = self._blocker()
        if blocked:
            self._set_status(blocked)
            return False
        self.refresh()
        spec = self._spec
        if spec is None:
            self._set_status(self._spec_error)
            return False
        ctx, ub = self._effective_ctx_ub()
        doc = self._document
        number = len(doc.benchmarks) + 1
        self._running_label = run_label(number, doc.layout, doc.plan, ub, spec.tool)
        engine = self._engine_provider()
        self._running_meta = (ctx, ub, engine.label if engine is not None else "")
        self._expected = len(expected_depths(spec.tool, spec.dialect, ctx, ub))
        self.log.clear()
        try:
            self.process.start(spec)
        except MoeStudioError as exc:
            self._set_status(exc.message)
            return False
        self.last_outcome = None
        self._new_output = False
        self.plot.set_live([], "")
        self.progress.setRange(0, max(1, self._expected))
        self.progress.setValue(0)
        self.progress.show()
        self._tick_timer.start()
        self._set_status(f"Running {self._running_label}…")
        for note in self.process.notes:  # an engine already on a GPU: in the Output tab
            self.log.appendPlainText(f"# warning: {note}")
        self._update_buttons()
        self.run_started.emit(spec)
        return True

    def cancel(self) -> None:
        """Stop the running benchmark (SIGTERM, then SIGKILL); the depths measured are kept."""
        if self.is_running:
            self._set_status("Cancelling…")
            self.process.cancel()
            self.cancel_button.setEnabled(False)

    def shutdown(self) -> None:
        """Kill a running benchmark and wait for it, recording nothing (closing the window)."""
        self._tick_timer.stop()
        self._refresh_timer.stop()
        self.process.shutdown()

    def visible_runs(self) -> list[int]:
        """Indices (in the profile's list) of the runs overlaid now."""
        return [i for i, shown in enumerate(self._visible) if shown]

    def set_run_visible(self, index: int, visible: bool) -> None:
        item = self.runs.topLevelItem(index)
        if item is not None:
            item.setCheckState(
                0, Qt.CheckState.Checked if visible else Qt.CheckState.Unchecked
            )  # → _on_runs_item_changed

    # --- internals -----------------------------------------------------------------------------

    def current_tool(self) -> BenchTool | None:
        """The tool chosen (None before the first refresh)."""
        value = self.tool.currentData()
        return BenchTool(value) if value else None

    def _update_tools(self, *, ik: bool) -> None:
        # Item data are the enum's values: a StrEnum comes back from Qt as a plain str.
        current = self.tool.currentData()
        wanted = [BenchTool.SWEEP.value, BenchTool.BENCH.value] if ik else [BenchTool.BENCH.value]
        if [self.tool.itemData(i) for i in range(self.tool.count())] != wanted:
            with QSignalBlocker(self.tool):
                self.tool.clear()
                for value in wanted:
                    sweep = value == BenchTool.SWEEP.value
                    self.tool.addItem("llama-sweep-bench" if sweep else "llama-bench", value)
                self.tool.setCurrentIndex(max(0, self.tool.findData(current)))

    def _plan_ctx_ub(self) -> tuple[int, int]:
        s = self._document.settings
        return s.ctx or 4096, s.ubatch or 512

    def _effective_ctx_ub(self) -> tuple[int, int]:
        ctx, ub = self._plan_ctx_ub()
        return self.ctx.value() or ctx, self.ubatch.value() or ub

    def _update_option_hints(self) -> None:
        ctx, ub = self._plan_ctx_ub()
        self.ctx.setSpecialValueText(f"as planned ({ctx})")
        self.ubatch.setSpecialValueText(f"as planned ({ub})")
        tool = self.current_tool()
        if tool is None:
            self.depths.setText("")
            return
        c, u = self._effective_ctx_ub()
        depths = expected_depths(tool, self._document.settings.dialect, c, u)
        if len(depths) > 4:
            shown = f"{depths[0]}, {depths[1]}, … {depths[-1]}"
        else:
            shown = ", ".join(str(d) for d in depths)
        steps = f"{len(depths)} step{'s' if len(depths) != 1 else ''}"
        self.depths.setText(f"N_KV {shown} ({steps})")

    def _build_spec(self, engine: EngineInfo) -> BenchSpec:
        return build_bench_spec(
            self._document.result(),
            engine,
            dialect=self._document.settings.dialect,
            tool=self.current_tool(),
            ctx=self.ctx.value() or None,
            ubatch=self.ubatch.value() or None,
            n_gen=self.n_gen.value() or None,
            repetitions=self.repetitions.value(),
        )

    def _update_buttons(self) -> None:
        running = self.is_running
        blocked = self._blocker()
        can_run = self._spec is not None and not running and not blocked
        self.run_button.setEnabled(can_run)
        if running:
            self.run_button.setToolTip("A benchmark is running.")
        elif blocked:
            self.run_button.setToolTip(blocked)
        elif self._spec is None:
            self.run_button.setToolTip(self._spec_error)
        else:
            self.run_button.setToolTip("Run the command above in the background.")
        self.cancel_button.setEnabled(running)
        for widget in (self.tool, self.ctx, self.ubatch, self.n_gen, self.repetitions):
            widget.setEnabled(not running and (widget is not self.repetitions or self._is_bench()))

    def _is_bench(self) -> bool:
        return self.current_tool() is BenchTool.BENCH

    def _set_status(self, text: str) -> None:
        self.status.setText(text)
        self.status.setVisible(bool(text))

    def _running_status(self) -> str:
        done = len(self.process.points())
        seconds = int(self.process.elapsed)
        steps = f", {done} of {self._expected} depths measured" if self._expected > 1 else ""
        return f"Running {self._running_label}… {seconds} s{steps}"

    def _rebuild_runs(self) -> None:
        """The run list and the plot from the document's entries and the ticks."""
        dark = theme.is_dark()
        with QSignalBlocker(self.runs):
            self.runs.clear()
            for i, entry in enumerate(self._entries):
                points = entry_points(entry)
                item = QTreeWidgetItem(
                    [
                        entry_label(entry, i),
                        _speed(entry_speed(entry, "tg_tokens_per_second")),
                        _speed(entry_speed(entry, "pp_tokens_per_second")),
                        str(len(points)),
                        entry_time(entry),
                    ]
                )
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setIcon(0, run_icon(i, dark))
                item.setCheckState(
                    0, Qt.CheckState.Checked if self._visible[i] else Qt.CheckState.Unchecked
                )
                for col in (1, 2, 3):
                    item.setTextAlignment(col, Qt.AlignmentFlag.AlignRight)
                argv = entry.get("argv")
                tip = " ".join(str(a) for a in argv) if isinstance(argv, list) else ""
                error = entry.get("error")
                if isinstance(error, str) and error:
                    tip = f"{error}\n\n{tip}"
                item.setToolTip(0, tip)
                self.runs.addTopLevelItem(item)
        self._update_plot()

    def _update_plot(self) -> None:
        self.plot.set_runs(
            [
                RunCurve(entry_label(entry, i), entry_points(entry), self._visible[i])
                for i, entry in enumerate(self._entries)
            ]
        )

    def _on_run_button_clicked(self) -> None:
        self.start()

    def _on_cancel_button_clicked(self) -> None:
        self.cancel()

    def _on_option_changed(self, *_: object) -> None:
        self.refresh()

    def _on_document_changed(self, *_: object) -> None:
        if self.isVisible():
            self._refresh_timer.start()

    def showEvent(self, event: QShowEvent) -> None:
        # Always: the engine may have been chosen while this tab was hidden.
        super().showEvent(event)
        self.refresh()

    def _on_document_benchmarks_changed(self) -> None:
        entries = self._document.benchmarks
        old = self._entries
        if entries[: len(old)] == old:  # runs were added: keep the ticks
            self._visible += [True] * (len(entries) - len(old))
        else:  # another profile's runs
            self._visible = [True] * len(entries)
        self._entries = entries
        self._rebuild_runs()
        # A restored profile's runs are plotted: "No benchmark run yet." would contradict them.
        if entries and self.status.text() == NO_RUN_TEXT:
            self.status.clear()
            self.status.hide()
        elif not entries and not self.is_running and not self.status.text():
            self._set_status(NO_RUN_TEXT)

    def _on_runs_item_changed(self, item: QTreeWidgetItem, column: int) -> None:
        index = self.runs.indexOfTopLevelItem(item)
        if column != 0 or not 0 <= index < len(self._visible):
            return
        shown = item.checkState(0) == Qt.CheckState.Checked
        if shown != self._visible[index]:
            self._visible[index] = shown
            self._update_plot()

    def _on_plot_toggle_requested(self, index: int) -> None:
        if 0 <= index < len(self._visible):
            self.set_run_visible(index, not self._visible[index])

    def _on_process_lines_received(self, lines: list[str]) -> None:
        self.log.appendPlainText("\n".join(lines))
        self._new_output = True

    def _on_tick_timer_timeout(self) -> None:
        if self._new_output:
            self._new_output = False
            points = self.process.points()
            self.plot.set_live(points, f"{self._running_label} (running)")
            self.progress.setValue(min(len(points), self.progress.maximum()))
        if self.is_running and self.status.text() != "Cancelling…":
            self._set_status(self._running_status())

    def _on_process_finished(self, outcome: BenchOutcome) -> None:
        self._tick_timer.stop()
        self.progress.hide()
        self.plot.set_live([], "")
        self.last_outcome = outcome
        label = self._running_label
        if outcome.points:
            ctx, ub, engine = self._running_meta
            if outcome.error:
                label += " (cancelled)" if outcome.cancelled else " (incomplete)"
            entry = benchmark_entry(outcome, label=label, ctx=ctx, ubatch=ub, engine=engine)
            self._document.add_benchmark(entry)  # → _on_document_benchmarks_changed
        if outcome.error:
            self._set_status(_failure_text(outcome))
        elif not outcome.points:
            self._set_status(f"{label} ended without measuring anything.{_tail(outcome.log)}")
        else:
            kept = self._document.benchmarks[-1]
            tg = _speed(entry_speed(kept, "tg_tokens_per_second"))
            pp = _speed(entry_speed(kept, "pp_tokens_per_second"))
            self._set_status(
                f"{label}: {len(outcome.points)} depths in {outcome.seconds:.0f} s; at the "
                f"smallest depth S_TG {tg} t/s, S_PP {pp} t/s. Kept with the profile (save it)."
            )
        self._update_buttons()
        self.run_finished.emit(outcome)
