"""The process panel: one click launches the current plan, the load shows as progress, the
engine's buffer sizes sit beside our estimate, failures are explained with one-click fixes,
and the log, live graphs and a test prompt are at hand."""

from __future__ import annotations

import html
import logging
import math
import time
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QFont, QFontDatabase
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from moe_studio.core.engine.calibration import append_record, make_record
from moe_studio.core.engine.diagnosis import Diagnosis, Fix, compare, diagnose
from moe_studio.core.engine.discovery import EngineInfo, EngineStore, probe_engine, resolve_engine
from moe_studio.core.engine.health import HealthStatus, Phase, PromptResult, send_test_prompt
from moe_studio.core.engine.launch import ExitInfo, build_launch_spec, connect_host
from moe_studio.core.engine.log_events import BufferSize, Event, RequestTiming
from moe_studio.core.errors import MoeStudioError
from moe_studio.core.hardware.sampler import Sampler
from moe_studio.core.units import format_bytes
from moe_studio.gui.bench import BenchPanel
from moe_studio.gui.document import Document
from moe_studio.gui.messages import show_error
from moe_studio.gui.process.live_plot import LivePlot
from moe_studio.gui.process.server_process import ServerProcess

log = logging.getLogger(__name__)
COMPARE_COLUMNS = (
    "Device",
    "Weights (est.)",
    "Weights (engine)",
    "Δ",
    "KV (est.)",
    "KV (engine)",
    "Δ",
    "Compute (est.)",
    "Compute (engine)",
    "Δ",
)


def _size(n: int | None) -> str:
    return "—" if n is None else format_bytes(n)


def _diff(n: int | None) -> str:
    if n is None:
        return ""
    sign = "+" if n > 0 else ""
    return f"{sign}{format_bytes(n)}"


class ProcessPanel(QWidget):
    def __init__(
        self,
        document: Document,
        parent: QWidget | None = None,
        *,
        engine_store: EngineStore | None = None,
        calibration_path: Path | None = None,
        sampler: Sampler | None = None,
        auto_detect: bool = True,
    ) -> None:
        super().__init__(parent)
        self.document = document
        self.engine_store = engine_store or EngineStore()
        self.calibration_path = calibration_path
        self.server = ServerProcess(self)
        self.engine_info: EngineInfo | None = None
        self.diagnosis: Diagnosis | None = None
        self.last_prompt: PromptResult | None = None
        self.fix_buttons: list[QPushButton] = []
        self._applying_fix = False

        layout = QVBoxLayout(self)
        engine_row = QHBoxLayout()
        self.engine_label = QLabel("Engine: looking for llama-server…")
        self.engine_label.setWordWrap(True)
        engine_row.addWidget(self.engine_label, 1)
        self.choose_button = QPushButton("Choose engine…")
        engine_row.addWidget(self.choose_button)
        layout.addLayout(engine_row)

        buttons = QHBoxLayout()
        self.launch_button = QPushButton("Launch")
        self.stop_button = QPushButton("Stop")
        self.prompt_button = QPushButton("Test prompt")
        for b in (self.launch_button, self.stop_button, self.prompt_button):
            buttons.addWidget(b)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(True)
        buttons.addWidget(self.progress, 1)
        layout.addLayout(buttons)
        self.status_label = QLabel("Not running.")
        self.status_label.setWordWrap(True)
        self.status_label.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.status_label)
        self.prompt_label = QLabel()
        self.prompt_label.setWordWrap(True)
        layout.addWidget(self.prompt_label)

        self.diagnosis_box = QWidget()
        diag = QVBoxLayout(self.diagnosis_box)
        diag.setContentsMargins(0, 0, 0, 0)
        self.diagnosis_label = QLabel()
        self.diagnosis_label.setWordWrap(True)
        diag.addWidget(self.diagnosis_label)
        self.fix_row = QVBoxLayout()
        diag.addLayout(self.fix_row)
        self.diagnosis_box.hide()
        layout.addWidget(self.diagnosis_box)

        self.tabs = QTabWidget()
        log_tab = QWidget()
        log_layout = QVBoxLayout(log_tab)
        filter_row = QHBoxLayout()
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Show only lines containing…")
        filter_row.addWidget(self.filter_edit, 1)
        self.save_log_button = QPushButton("Save log…")
        filter_row.addWidget(self.save_log_button)
        log_layout.addLayout(filter_row)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(self.server.history.max_lines)
        font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        font.setStyleHint(QFont.StyleHint.Monospace)
        self.log_view.setFont(font)
        log_layout.addWidget(self.log_view)
        self.tabs.addTab(log_tab, "Log")
        self.compare_table = QTableWidget(0, len(COMPARE_COLUMNS))
        self.compare_table.setHorizontalHeaderLabels(list(COMPARE_COLUMNS))
        self.compare_table.verticalHeader().hide()
        self.compare_table.horizontalHeader().setStretchLastSection(True)
        self.tabs.addTab(self.compare_table, "Predicted vs actual")
        self.live = LivePlot(sampler=sampler)
        self.tabs.addTab(self.live, "Live")
        self.bench = BenchPanel(document, lambda: self.engine_info)
        bench_scroll = QScrollArea()
        bench_scroll.setWidgetResizable(True)
        bench_scroll.setWidget(self.bench)
        self.tabs.addTab(bench_scroll, "Benchmarks")
        layout.addWidget(self.tabs, 1)

        self._compare_timer = QTimer(self)
        self._compare_timer.setSingleShot(True)
        self._compare_timer.setInterval(100)
        self._compare_timer.timeout.connect(self.refresh_compare)

        self.launch_button.clicked.connect(self.launch)
        self.stop_button.clicked.connect(self.server.stop)
        self.prompt_button.clicked.connect(self.test_prompt)
        self.choose_button.clicked.connect(self.choose_engine)
        self.save_log_button.clicked.connect(self.save_log_dialog)
        self.filter_edit.textChanged.connect(self._on_filter_edit_text_changed)
        self.server.lines_received.connect(self._on_server_lines_received)
        self.server.event_received.connect(self._on_server_event_received)
        self.server.status_changed.connect(self._on_server_status_changed)
        self.server.started.connect(self._on_server_started)
        self.server.start_failed.connect(self._on_server_start_failed)
        self.server.finished.connect(self._on_server_finished)
        self._update_buttons()
        if auto_detect:
            self.detect_engine()
        else:
            self._show_engine()

    # --- engine --------------------------------------------------------------------------------

    def detect_engine(self) -> None:
        """Find llama-server ($MOE_STUDIO_ENGINE, the remembered one, the usual places)."""
        store = self.engine_store
        dialect = self.document.settings.dialect
        self.server.background.call(
            lambda: resolve_engine(None, store=store, flavour=dialect),
            self.set_engine,
            self._on_engine_missing,
        )

    def set_engine(self, info: object) -> None:
        assert isinstance(info, EngineInfo)
        self.engine_info = info
        self._show_engine()
        self.bench.refresh()

    def _on_engine_missing(self, error: BaseException) -> None:
        self.engine_info = None
        self._show_engine(str(error))
        self.bench.refresh()

    def _show_engine(self, problem: str = "") -> None:
        info = self.engine_info
        if info is None:
            text = problem or "No llama-server chosen: set MOE_STUDIO_ENGINE or choose one."
            self.engine_label.setText(f"Engine: {html.escape(text)}")
        else:
            self.engine_label.setText(
                f"Engine: {html.escape(info.label)} — {html.escape(info.path)}"
            )
        self._update_buttons()

    def choose_engine(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose llama-server", str(Path.home()))
        if path:
            self.use_engine_path(path)

    def use_engine_path(self, path: str) -> None:
        def done(info: object) -> None:
            assert isinstance(info, EngineInfo)
            if not info.usable:
                self.engine_info = None
                self._show_engine(info.problem)
                return
            try:
                self.engine_store.remember(info)
            except MoeStudioError as exc:
                log.warning("could not remember the engine: %s", exc)
            self.set_engine(info)

        self.server.background.call(lambda: probe_engine(path), done)

    # --- launch / stop -------------------------------------------------------------------------

    def launch(self) -> bool:
        """Start the current plan's command; returns False (and says why) when it cannot."""
        if self.server.running:
            return False
        info = self.engine_info
        if info is None:
            self._set_status_text("Choose a llama-server first (Choose engine…).", error=True)
            return False
        result = self.document.result()
        try:
            spec = build_launch_spec(result, info, dialect=self.document.settings.dialect)
            self.diagnosis = None
            self._clear_fixes()
            self.log_view.clear()
            self.compare_table.setRowCount(0)
            self.server.start(spec)
        except MoeStudioError as exc:
            self._set_status_text(str(exc), error=True)
            self.last_error = show_error(self, "Cannot launch the server", exc)
            return False
        # Into the history too, so the filter and "Save log…" keep them.
        header = [f"# {note}" for note in (*spec.notes, *self.server.notes)] + [f"# {spec.shell()}"]
        self._append_lines(self.server.history.feed_text("\n".join(header) + "\n"))
        self._update_buttons()
        return True

    def stop(self) -> None:
        self.server.stop()

    def test_prompt(self) -> None:
        spec = self.server.spec
        if spec is None or self.server.status.phase is not Phase.READY:
            return
        host, port, key = connect_host(spec.host), spec.port, spec.api_key
        self.prompt_button.setEnabled(False)
        self.server.background.call(
            lambda: send_test_prompt(host, port, api_key=key),
            self._on_prompt_done,
            self._on_prompt_failed,
        )

    def _on_prompt_done(self, result: object) -> None:
        assert isinstance(result, PromptResult)
        self.last_prompt = result
        self.prompt_label.setText(f"Test prompt: {result.summary}")
        if not math.isnan(result.predicted_tokens_per_second):
            self.live.add_speed(time.monotonic(), "generation", result.predicted_tokens_per_second)
        self._update_buttons()

    def _on_prompt_failed(self, error: BaseException) -> None:
        self.prompt_label.setText(f"<span style='color:#D55E00'>{html.escape(str(error))}</span>")
        self._update_buttons()

    # --- server signals ------------------------------------------------------------------------

    def _on_server_started(self, pid: int) -> None:
        self.live.start(pid)
        self._update_buttons()

    def _on_server_start_failed(self, message: str) -> None:
        self._set_status_text(message, error=True)
        self._update_buttons()

    def _on_server_lines_received(self, lines: list[str]) -> None:
        self._append_lines(lines)

    def _on_server_event_received(self, event: Event) -> None:
        if isinstance(event, BufferSize):
            self._compare_timer.start()
        elif isinstance(event, RequestTiming):
            now = time.monotonic()
            for kind, rate in (
                ("prompt", event.prompt_tokens_per_second),
                ("generation", event.eval_tokens_per_second),
            ):
                if math.isfinite(rate):
                    self.live.add_speed(now, kind, rate)

    def _on_server_status_changed(self, status: HealthStatus) -> None:
        if status.progress is not None:
            self.progress.setValue(int(status.progress * 1000))
        self.progress.setFormat(status.label)
        if status.phase is Phase.FAILED:
            self._set_status_text(status.detail, error=True)
        else:
            self._set_status_text(status.detail)
        self._update_buttons()

    def _on_server_finished(self, info: ExitInfo) -> None:
        self.live.stop()
        self.refresh_compare()
        self._record_calibration()
        status = self.server.status
        if status.phase is Phase.FAILED or not info.normal:
            self._diagnose(status, info)
        else:
            self._set_status_text(info.message)
        self._update_buttons()

    # --- diagnosis and fixes -------------------------------------------------------------------

    def _diagnose(self, status: HealthStatus, info: ExitInfo) -> None:
        report = self.server.report()
        failure = status.failure or report.failure
        doc = self.document
        if failure is None:
            self.diagnosis = Diagnosis(info.message)
        else:
            self.diagnosis = diagnose(
                failure, doc.layout, doc.plan, doc.rig, doc.settings, report=report
            )
        self._show_diagnosis(self.diagnosis)

    def _show_diagnosis(self, diagnosis: Diagnosis) -> None:
        self._clear_fixes()
        self.diagnosis_label.setText(
            f"<b style='color:#D55E00'>{html.escape(diagnosis.sentence)}</b>"
        )
        for i, fix in enumerate(diagnosis.fixes):
            text = fix.label + ("" if fix.sufficient is not False else " (may not be enough)")
            button = QPushButton(f"Fix and relaunch: {text}")
            button.setToolTip(fix.detail)
            button.clicked.connect(lambda _=False, i=i: self.apply_fix(i))
            self.fix_row.addWidget(button)
            self.fix_buttons.append(button)
        self.diagnosis_box.show()
        self._set_status_text(diagnosis.sentence, error=True)

    def _clear_fixes(self) -> None:
        for b in self.fix_buttons:
            self.fix_row.removeWidget(b)
            b.deleteLater()
        self.fix_buttons = []
        self.diagnosis_box.hide()

    def apply_fix(self, index: int) -> bool:
        """Apply a fix as an undoable edit of the plan and/or settings, then relaunch."""
        if self.diagnosis is None or not 0 <= index < len(self.diagnosis.fixes):
            return False
        fix: Fix = self.diagnosis.fixes[index]
        doc = self.document
        if fix.edit is not None and fix.edit.changed:
            doc.apply_edit(fix.edit, fix.label)
        if fix.settings != doc.settings:
            doc.set_settings(fix.settings, fix.label)
        return self.launch()

    # --- predicted vs actual -------------------------------------------------------------------

    def refresh_compare(self) -> None:
        _, estimate = self.document.estimate()
        rows = compare(estimate, self.server.report())
        self.compare_table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            values = (
                row.device,
                _size(row.predicted_weights),
                _size(row.actual_weights),
                _diff(row.diff_weights),
                _size(row.predicted_kv),
                _size(row.actual_kv),
                _diff(row.diff_kv),
                _size(row.predicted_compute),
                _size(row.actual_compute),
                _diff(row.diff_compute),
            )
            for c, value in enumerate(values):
                item = QTableWidgetItem(value)
                item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                self.compare_table.setItem(r, c, item)
        self.compare_table.resizeColumnsToContents()

    def compare_rows(self) -> list[list[str]]:
        table = self.compare_table
        return [
            [
                item.text() if (item := table.item(r, c)) is not None else ""
                for c in range(table.columnCount())
            ]
            for r in range(table.rowCount())
        ]

    def _record_calibration(self) -> None:
        report = self.server.report()
        if not (report.model_buffers or report.kv_buffers or report.compute_buffers):
            return
        _, estimate = self.document.estimate()
        rows = compare(estimate, report)
        engine = self.engine_info.label if self.engine_info else ""
        try:
            record = make_record(self.document.layout, self.document.settings, rows, engine=engine)
            append_record(record, self.calibration_path)
        except MoeStudioError as exc:
            log.warning("could not record the run for calibration: %s", exc)

    # --- log -----------------------------------------------------------------------------------

    def _append_lines(self, lines: list[str]) -> None:
        pattern = self.filter_edit.text()
        shown = [ln for ln in lines if pattern.lower() in ln.lower()] if pattern else lines
        if shown:
            self.log_view.appendPlainText("\n".join(shown))

    def _on_filter_edit_text_changed(self, text: str) -> None:
        lines = self.server.history.lines()
        if text:
            lines = [ln for ln in lines if text.lower() in ln.lower()]
        self.log_view.setPlainText("\n".join(lines))

    def save_log_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save the log", str(Path.home() / "llama-server.log")
        )
        if path:
            self.save_log(path)

    def save_log(self, path: str) -> None:
        try:
            self.server.history.save(path)
        except (MoeStudioError, OSError) as exc:
            self.last_error = show_error(self, "Cannot save the log", exc)

    # --- helpers -------------------------------------------------------------------------------

    def _set_status_text(self, text: str, *, error: bool = False) -> None:
        escaped = html.escape(text)
        self.status_label.setText(
            f"<span style='color:#D55E00'>{escaped}</span>" if error else escaped
        )

    def _update_buttons(self) -> None:
        running = self.server.running
        phase = self.server.status.phase
        self.launch_button.setEnabled(not running and self.engine_info is not None)
        self.launch_button.setToolTip(
            ""
            if self.engine_info is not None
            else "Choose a llama-server binary first (Choose engine…)."
        )
        self.stop_button.setEnabled(running)
        self.prompt_button.setEnabled(running and phase is Phase.READY)

    def shutdown(self) -> None:
        """Stop the server and wait for it (application exit)."""
        if self.server.running:
            self.server.stop()
            if not self.server.wait_stopped(6000):
                self.server.kill()
                self.server.wait_stopped(2000)
        self.bench.shutdown()
        self.live.close_sampler()
        self.server.background.wait(3000)
