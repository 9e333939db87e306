"""The process panel (the Server tab): one click launches the current plan, the load shows as
progress, the engine's buffer sizes sit beside our estimate, failures are explained with one-click
fixes, a prompt gets its reply streamed with the server's tokens/s, and the log, live graphs and
benchmarks sit in tabs that share the room left (no nested scroll bars). A change of the plan or
settings while the server runs offers a restart with the new command."""

from __future__ import annotations

import html
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QFont, QFontDatabase, QTextCursor
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from moe_studio.core.engine.calibration import append_record, make_record
from moe_studio.core.engine.chat import stream_chat
from moe_studio.core.engine.diagnosis import Diagnosis, Fix, compare, diagnose
from moe_studio.core.engine.discovery import EngineInfo, EngineStore, probe_engine, resolve_engine
from moe_studio.core.engine.health import HealthStatus, Phase, PromptResult
from moe_studio.core.engine.launch import ExitInfo, LaunchSpec, build_launch_spec, connect_host
from moe_studio.core.engine.log_events import BufferSize, Event, RequestTiming
from moe_studio.core.errors import Cancelled, EngineError, MoeStudioError
from moe_studio.core.hardware.sampler import Sampler
from moe_studio.core.units import format_bytes
from moe_studio.gui.bench import BenchPanel
from moe_studio.gui.document import Document
from moe_studio.gui.messages import show_error
from moe_studio.gui.process.live_plot import LivePlot
from moe_studio.gui.process.server_process import ServerProcess

log = logging.getLogger(__name__)
DEFAULT_PROMPT = "The quick brown fox"
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


TUNE_RUNNING = (
    "Tune is measuring (Tools → Tune…): stop it or let it finish first. It loads the model on "
    "the same devices."
)


class _ReplyRelay(QObject):
    """Carries pieces of a streamed reply from the worker thread to the GUI thread (queued)."""

    text_received = Signal(str)


class ProcessPanel(QWidget):
    """The Server tab.

    Signals:
        engine_changed: another engine was chosen, or none is usable any more.
    """

    engine_changed = Signal()

    def __init__(
        self,
        document: Document,
        parent: QWidget | None = None,
        *,
        engine_store: EngineStore | None = None,
        calibration_path: Path | None = None,
        sampler: Sampler | None = None,
        auto_detect: bool = True,
        bench_tab: bool = True,
    ) -> None:
        super().__init__(parent)
        self.document = document
        self.engine_store = engine_store or EngineStore()
        self.calibration_path = calibration_path
        self.server = ServerProcess(self)
        self.engine_info: EngineInfo | None = None
        # Whether Tools → Tune is measuring (set by the window): it shares the devices too.
        self.tune_running: Callable[[], bool] = lambda: False
        self.diagnosis: Diagnosis | None = None
        self.last_prompt: PromptResult | None = None
        self.fix_buttons: list[QPushButton] = []
        self._applying_fix = False

        self._reply_relay = _ReplyRelay(self)
        self._prompt_cancel = False
        self._prompting = False
        self._restart_pending = False
        self._last_phase: Phase | None = None

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        # Two rows of controls: the rest of the tab's height is for the reply, log and plots.
        buttons = QHBoxLayout()
        self.launch_button = QPushButton("Launch")
        self.stop_button = QPushButton("Stop")
        self.web_button = QPushButton("Open web UI")
        self.web_button.setToolTip("Open the server's own chat page in the browser.")
        for b in (self.launch_button, self.stop_button, self.web_button):
            buttons.addWidget(b)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(True)
        buttons.addWidget(self.progress, 1)
        self.choose_button = QPushButton("Choose engine…")
        buttons.addWidget(self.choose_button)
        layout.addLayout(buttons)
        info_row = QHBoxLayout()
        self.engine_label = QLabel("Engine: looking for llama-server…")
        self.engine_label.setMinimumWidth(80)  # one line; the full path is in the tooltip
        info_row.addWidget(self.engine_label, 1)
        self.status_label = QLabel("Not running.")
        self.status_label.setWordWrap(True)
        self.status_label.setTextFormat(Qt.TextFormat.RichText)
        info_row.addWidget(self.status_label, 1)
        info_row.setSpacing(12)
        layout.addLayout(info_row)

        # "Settings changed — restart to apply": shown while the running command is outdated.
        self.restart_banner = QFrame()
        self.restart_banner.setFrameShape(QFrame.Shape.StyledPanel)
        self.restart_banner.setStyleSheet(
            "QFrame { background: rgba(230, 159, 0, 0.18); border-radius: 3px; }"
        )
        banner = QHBoxLayout(self.restart_banner)
        banner.setContentsMargins(6, 2, 6, 2)
        self.restart_label = QLabel()
        self.restart_label.setWordWrap(True)
        banner.addWidget(self.restart_label, 1)
        self.restart_button = QPushButton("Restart now")
        self.restart_button.setToolTip("Stop the server and launch it again with the new command.")
        banner.addWidget(self.restart_button)
        self.restart_banner.hide()
        layout.addWidget(self.restart_banner)

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
        self.tabs.setDocumentMode(True)
        self.prompt_tab = prompt_tab = QWidget()
        prompt_layout = QVBoxLayout(prompt_tab)
        prompt_layout.setContentsMargins(4, 4, 4, 4)
        prompt_row = QHBoxLayout()
        self.prompt_edit = QLineEdit()
        self.prompt_edit.setPlaceholderText(f"A prompt for the running server ({DEFAULT_PROMPT})")
        self.prompt_edit.setClearButtonEnabled(True)
        prompt_row.addWidget(self.prompt_edit, 1)
        self.prompt_button = QPushButton("Send")
        self.prompt_button.setToolTip("Send the prompt; the reply appears below as it is written.")
        prompt_row.addWidget(self.prompt_button)
        prompt_layout.addLayout(prompt_row)
        self.reply_view = QPlainTextEdit()
        self.reply_view.setReadOnly(True)
        self.reply_view.setPlaceholderText("The reply appears here, token by token.")
        prompt_layout.addWidget(self.reply_view, 1)
        self.prompt_label = QLabel()
        self.prompt_label.setWordWrap(True)
        self.prompt_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        prompt_layout.addWidget(self.prompt_label)
        log_tab = QWidget()
        log_layout = QVBoxLayout(log_tab)
        log_layout.setContentsMargins(4, 4, 4, 4)
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
        self.tabs.addTab(prompt_tab, "Prompt")
        self.compare_table = QTableWidget(0, len(COMPARE_COLUMNS))
        self.compare_table.setHorizontalHeaderLabels(list(COMPARE_COLUMNS))
        self.compare_table.verticalHeader().hide()
        self.compare_table.horizontalHeader().setStretchLastSection(True)
        self.tabs.addTab(self.compare_table, "Predicted vs actual")
        self.live = LivePlot(sampler=sampler)
        self.tabs.addTab(self.live, "Live")
        self.bench = BenchPanel(document, lambda: self.engine_info, blocker=self._bench_blocker)
        if bench_tab:  # the window shows it as a tab of its own, with the whole height
            self.tabs.addTab(self.bench, "Benchmarks")
        layout.addWidget(self.tabs, 1)

        self._compare_timer = QTimer(self)
        self._compare_timer.setSingleShot(True)
        self._compare_timer.setInterval(100)
        self._compare_timer.timeout.connect(self.refresh_compare)

        self._restart_timer = QTimer(self)
        self._restart_timer.setSingleShot(True)
        self._restart_timer.setInterval(0)  # once per event-loop turn: a paint stroke is many edits
        self._restart_timer.timeout.connect(self.check_outdated)

        self.launch_button.clicked.connect(self.launch)
        self.stop_button.clicked.connect(self.server.stop)
        self.web_button.clicked.connect(self.open_web_ui)
        self.restart_button.clicked.connect(self.restart)
        self.prompt_button.clicked.connect(self.test_prompt)
        self.prompt_edit.returnPressed.connect(self.test_prompt)
        self._reply_relay.text_received.connect(self._on_reply_text_received)
        for signal in (
            document.plan_changed,
            document.settings_changed,
            document.rig_changed,
            document.model_changed,
        ):
            signal.connect(self._on_document_changed)
        self.choose_button.clicked.connect(self.choose_engine)
        self.save_log_button.clicked.connect(self.save_log_dialog)
        self.filter_edit.textChanged.connect(self._on_filter_edit_text_changed)
        self.server.lines_received.connect(self._on_server_lines_received)
        self.server.event_received.connect(self._on_server_event_received)
        self.server.status_changed.connect(self._on_server_status_changed)
        self.server.started.connect(self._on_server_started)
        self.server.start_failed.connect(self._on_server_start_failed)
        self.server.finished.connect(self._on_server_finished)
        self.bench.run_started.connect(self._on_bench_run_changed)
        self.bench.run_finished.connect(self._on_bench_run_changed)
        self._update_buttons()
        if auto_detect:
            self.detect_engine()
        else:
            self._show_engine()

    def sizeHint(self) -> QSize:
        # The tabs inside ask for much more than they need; the window's splitters should give
        # this panel its share (as they did when it sat in a scroll area), not grow for it.
        return QSize(560, 380)

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
        changed = info != self.engine_info
        self.engine_info = info
        # The window plans for the engine that will run the command (its flags and defaults).
        self.document.follow_engine(info.flavour, info.build)
        self._show_engine()
        self.bench.refresh()
        if changed:
            self.engine_changed.emit()

    def _on_engine_missing(self, error: BaseException) -> None:
        changed = self.engine_info is not None
        self.engine_info = None
        self._show_engine(str(error))
        self.bench.refresh()
        if changed:
            self.engine_changed.emit()

    def _show_engine(self, problem: str = "") -> None:
        info = self.engine_info
        if info is None:
            text = problem or "No llama-server chosen: set MOE_STUDIO_ENGINE or choose one."
            self.engine_label.setWordWrap(True)
            self.engine_label.setText(f"Engine: {html.escape(text)}")
            self.engine_label.setToolTip("")
        else:
            # One line (the Server tab's height is for the plots); the full path on hover.
            self.engine_label.setWordWrap(False)
            self.engine_label.setText(f"Engine: {html.escape(info.label)}")
            self.engine_label.setToolTip(info.path)
        self._update_buttons()

    def choose_engine(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose llama-server", str(Path.home()))
        if path:
            self.use_engine_path(path)

    def use_engine_path(self, path: str) -> None:
        def done(info: object) -> None:
            assert isinstance(info, EngineInfo)
            if not info.usable:
                self._on_engine_missing(MoeStudioError(info.problem))
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
        if self.bench.is_running:
            self._set_status_text(
                "A benchmark is running (Benchmarks): cancel it or let it finish first. "
                "The server would share its devices — a GPU's memory, or an rpc-server that "
                "serves one client at a time and would make the second one wait forever.",
                error=True,
            )
            return False
        if self.tune_running():
            self._set_status_text(TUNE_RUNNING, error=True)
            return False
        try:
            _require_local_model(self.document.layout.source)
        except MoeStudioError as exc:
            self._set_status_text(str(exc), error=True)
            self.last_error = show_error(self, "Cannot launch the server", exc)
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
            self._last_phase = None
            self.restart_banner.hide()
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

    def _on_bench_run_changed(self, _what: object) -> None:
        self._update_buttons()

    def _bench_blocker(self) -> str:
        if self.tune_running():
            return TUNE_RUNNING
        if not self.server.running:
            return ""
        return (
            "The server is running: stop it first. A benchmark would share its devices — a "
            "GPU's memory, or an rpc-server that serves one client at a time, where the "
            "benchmark would wait forever."
        )

    def test_prompt(self) -> bool:
        """Send the prompt field's text (or a default) and stream the reply into the Prompt tab;
        False when the server is not ready or a reply is still coming."""
        spec = self.server.spec
        if self._prompting:
            return False
        if spec is None or not self.server.running or self.server.status.phase is not Phase.READY:
            # Enter in the field works while Send is greyed out: say why nothing is sent.
            self.prompt_label.setText(
                "The server is still loading; send the prompt once it is ready."
                if self.server.running
                else "No server is running: Launch it first, then send the prompt."
            )
            return False
        prompt = self.prompt_edit.text().strip() or DEFAULT_PROMPT
        host, port, key = connect_host(spec.host), spec.port, spec.api_key
        self._prompting = True
        self._prompt_cancel = False
        self.last_prompt = None
        self.reply_view.clear()
        self.prompt_label.setText("Waiting for the reply…")
        self.tabs.setCurrentWidget(self.prompt_tab)
        emit = self._reply_relay.text_received.emit
        self.server.background.call(
            lambda: stream_chat(
                host,
                port,
                prompt,
                on_text=emit,
                cancelled=lambda: self._prompt_cancel,
                api_key=key,
            ),
            self._on_prompt_done,
            self._on_prompt_failed,
        )
        self._update_buttons()
        return True

    def _on_reply_text_received(self, text: str) -> None:
        if not self.reply_view.toPlainText():
            self.prompt_label.setText("Writing the reply…")
        cursor = self.reply_view.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(text)
        self.reply_view.setTextCursor(cursor)
        self.reply_view.ensureCursorVisible()

    def _on_prompt_done(self, result: object) -> None:
        assert isinstance(result, PromptResult)
        self._prompting = False
        self.last_prompt = result
        # The Tokens/s plot gets this request's speeds from the server's log (RequestTiming),
        # like every other request's (the web UI's too), so they are not added twice.
        self.prompt_label.setText(f"Reply: {result.summary}")
        self._update_buttons()

    def _on_prompt_failed(self, error: BaseException) -> None:
        self._prompting = False
        text = "Stopped." if isinstance(error, Cancelled) else str(error)
        self.prompt_label.setText(f"<span style='color:#D55E00'>{html.escape(text)}</span>")
        self._update_buttons()

    def web_ui_url(self) -> QUrl | None:
        """The server's own web page (llama-server serves a chat UI at its root)."""
        spec = self.server.spec
        if spec is None:
            return None
        host = connect_host(spec.host)
        if ":" in host:
            host = f"[{host}]"
        return QUrl(f"http://{host}:{spec.port}/")

    def open_web_ui(self) -> bool:
        url = self.web_ui_url()
        if url is None or self.server.status.phase is not Phase.READY:
            return False
        return bool(QDesktopServices.openUrl(url))

    # --- restart to apply ----------------------------------------------------------------------

    def _on_document_changed(self, *_: object) -> None:
        if self.server.running:
            self._restart_timer.start()

    def _current_spec(self) -> LaunchSpec:
        info = self.engine_info
        if info is None:
            raise MoeStudioError("No engine is chosen.")
        return build_launch_spec(
            self.document.result(), info, dialect=self.document.settings.dialect
        )

    def check_outdated(self) -> bool:
        """Show the restart banner when the running server's command is not the plan's any more;
        returns whether it is outdated."""
        running = self.server.spec
        if running is None or not self.server.running or self.server.status.phase.final:
            self.restart_banner.hide()
            return False
        try:
            wanted = self._current_spec()
        except MoeStudioError as exc:
            self.restart_label.setText(f"Settings changed, but the new plan cannot run: {exc}")
            self.restart_button.setEnabled(False)
            self.restart_banner.show()
            return True
        outdated = (wanted.full_argv, dict(wanted.env)) != (running.full_argv, dict(running.env))
        self.restart_label.setText(
            "Settings changed — restart the server to apply them (it still runs the old command)."
        )
        self.restart_button.setEnabled(True)
        self.restart_banner.setVisible(outdated)
        return outdated

    def restart(self) -> bool:
        """Stop the server; once it has ended, launch the plan's current command."""
        if not self.server.running:
            return self.launch()
        self._restart_pending = True
        self.restart_button.setEnabled(False)
        self.restart_label.setText("Restarting: stopping the server…")
        self.server.stop()
        return True

    # --- server signals ------------------------------------------------------------------------

    def _on_server_started(self, pid: int) -> None:
        self.live.start(pid)
        self._update_buttons()
        self.bench.refresh()

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

    def _log_phase(self, status: HealthStatus) -> None:
        """One log line per change of state (never one per health poll)."""
        if status.phase is self._last_phase:
            return
        self._last_phase = status.phase
        detail = "" if status.detail == status.phase.value else f" — {status.detail}"
        line = f"# MoE Studio: {status.phase.value}{detail}"
        self._append_lines(self.server.history.feed_text(line + "\n"))

    def _on_server_status_changed(self, status: HealthStatus) -> None:
        self._log_phase(status)
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
        self.bench.refresh()
        self._prompt_cancel = True
        self.refresh_compare()
        self._record_calibration()
        status = self.server.status
        if status.phase is Phase.FAILED or not info.normal:
            self._diagnose(status, info)
        else:
            self._set_status_text(info.message)
        self._update_buttons()
        # No server runs any more, so "it still runs the old command" is no longer true; a
        # restart that cannot launch says why in the status line instead.
        self.restart_banner.hide()
        if self._restart_pending:
            self._restart_pending = False
            self.launch()

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
        doc = self.document
        _, estimate = doc.planner.estimate(doc.plan, learned=False)  # the model's own figures
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
        doc = self.document
        _, estimate = doc.planner.estimate(doc.plan, learned=False)  # never learn from itself
        rows = compare(estimate, report)
        engine = self.engine_info.version if self.engine_info else ""
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

    def others_changed(self) -> None:
        """A run elsewhere (Tune) started or ended: Launch and Run say whether they can go."""
        self._update_buttons()
        self.bench.refresh()

    def _update_buttons(self) -> None:
        running = self.server.running
        phase = self.server.status.phase
        benchmarking = self.bench.is_running
        tuning = self.tune_running()
        self.launch_button.setEnabled(
            not running and not benchmarking and not tuning and self.engine_info is not None
        )
        if self.engine_info is None:
            tip = "Choose a llama-server binary first (Choose engine…)."
        elif tuning:
            tip = TUNE_RUNNING
        elif benchmarking:
            tip = "A benchmark is running: the server would share its devices; wait or cancel it."
        else:
            tip = ""
        self.launch_button.setToolTip(tip)
        self.stop_button.setEnabled(running)
        ready = running and phase is Phase.READY
        self.prompt_button.setEnabled(ready and not self._prompting)
        self.web_button.setEnabled(ready)
        url = self.web_ui_url()
        self.web_button.setToolTip(
            f"Open {url.toString()} (the server's own chat page) in the browser."
            if url is not None and ready
            else "Opens the server's own chat page once it is ready."
        )

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


def _require_local_model(source: str) -> None:
    """Refuse to launch a model opened from a URL: the engine needs the files on disk."""
    from moe_studio.core.remote.urls import is_remote

    if not is_remote(source):
        return
    from moe_studio.core.remote.quants import download_hint

    command, path = download_hint(source)
    raise EngineError(
        f"The server needs the model on disk, and {source} was opened from the network (its "
        f"headers only). Download it ({command}), then open {path} and launch; the plan can be "
        "saved as a profile now and bound to the download later."
    )
