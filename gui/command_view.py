"""The command preview: the exact shell-quoted command, a copy button, the dialect switch and
the advisor's notes. Rebuilt once per event-loop turn after a change (a paint stroke is many
changes)."""

from __future__ import annotations

import html

from PySide6.QtCore import QTimer
from PySide6.QtGui import QFont, QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from moe_studio.core.plan.planning import PlanResult
from moe_studio.gui import theme
from moe_studio.gui.document import Document
from moe_studio.gui.wheel import guard_wheel


class CommandView(QWidget):
    def __init__(self, document: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._document = document
        self.result: PlanResult | None = None
        self.extra_notes: list[str] = []
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        top.addWidget(QLabel("Engine:"))
        self.dialect = QComboBox()
        self.dialect.addItem("ik_llama.cpp", "ik")
        self.dialect.addItem("llama.cpp (mainline)", "mainline")
        top.addWidget(self.dialect)
        self._wheel_guard = guard_wheel(self, [self.dialect])
        top.addStretch(1)
        self.copy_button = QPushButton("Copy command")
        top.addWidget(self.copy_button)
        layout.addLayout(top)
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        font.setStyleHint(QFont.StyleHint.Monospace)
        self.text.setFont(font)
        self.text.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.text.setMinimumHeight(70)
        layout.addWidget(self.text, 2)
        self.advice = QLabel()
        self.advice.setWordWrap(True)
        self.advice.setTextFormat(self.advice.textFormat().RichText)
        self.advice.setOpenExternalLinks(False)
        layout.addWidget(self.advice, 3)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self.refresh)
        self.copy_button.clicked.connect(self._on_copy_button_clicked)
        self.dialect.currentIndexChanged.connect(self._on_dialect_changed)
        document.plan_changed.connect(self._schedule)
        document.settings_changed.connect(self._schedule)
        document.model_changed.connect(self._schedule)
        document.rig_changed.connect(self._on_rig_changed)
        self.refresh()

    def command_text(self) -> str:
        return self.text.toPlainText()

    def _on_rig_changed(self) -> None:
        # Notes about the previous rig ("This rig has no GPU") would be stale; whoever changed
        # the rig sets the new ones after.
        self.extra_notes = []
        self._schedule()

    def _schedule(self, *_: object) -> None:
        self._timer.start()

    def refresh(self) -> None:
        result = self._document.result()
        self.result = result
        self.dialect.blockSignals(True)
        self.dialect.setCurrentIndex(0 if self._document.settings.is_ik else 1)
        self.dialect.blockSignals(False)
        if result.command is not None:
            self.text.setPlainText(result.command.shell())
            self.copy_button.setEnabled(True)
        else:
            self.text.setPlainText(f"# No command: {result.command_error}")
            self.copy_button.setEnabled(False)
        self.advice.setText(self._advice_html(result))

    def _advice_html(self, result: PlanResult) -> str:
        over = theme.OVER_COLOR.name()
        parts: list[str] = []
        advice = result.advice
        if result.engine_problem:
            parts.append(
                f"<li><b style='color:{over}'>⚠ {html.escape(result.engine_problem)}</b></li>"
            )
        if result.command_error:
            parts.append(
                f"<li><b style='color:{over}'>{html.escape(result.command_error)}</b></li>"
            )
        if advice:
            parts += [
                f"<li><b style='color:{over}'>⚠ {html.escape(w)}</b></li>" for w in advice.warnings
            ]
            parts += [f"<li>{html.escape(line)}</li>" for line in advice.lines]
            if advice.env:
                env = " ".join(f"{k}={v}" for k, v in advice.env.items())
                parts.append(f"<li>Environment: <code>{html.escape(env)}</code></li>")
            if advice.numactl:
                parts.append(
                    f"<li>Run under <code>{html.escape(' '.join(advice.numactl))}</code></li>"
                )
        notes = (
            list(result.notes)
            + list(result.command.notes if result.command else ())
            + self.extra_notes
        )
        said = {*(advice.warnings if advice else ()), *(advice.lines if advice else ())}
        parts += [
            f"<li><i>{html.escape(n)}</i></li>" for n in dict.fromkeys(notes) if n not in said
        ]
        return "<b>Advice</b><ul style='margin-left:-20px'>" + "".join(parts) + "</ul>"

    def _on_copy_button_clicked(self) -> None:
        QGuiApplication.clipboard().setText(self.command_text())

    def _on_dialect_changed(self, index: int) -> None:
        dialect = self.dialect.itemData(index)
        settings = self._document.settings
        if dialect != settings.dialect:
            self._document.set_settings(settings.for_dialect(dialect), f"Switch to {dialect}")
