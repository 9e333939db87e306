"""File → Open from Hugging Face…: compare every quant of a repository on the current rig.

The comparison runs in the background (:func:`moe_studio.core.plan.compare.compare_repo`, headers
only, progress and cancel); the table adapts its rows directly. Choosing a row asks the main window
to open that quant's tensor map (its headers are cached by then).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QEvent,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QBrush, QColor, QKeyEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from moe_studio.core.errors import MoeStudioError
from moe_studio.core.hardware.devices import Rig
from moe_studio.core.plan.compare import ENGINE_NAMES, QuantRow, RepoComparison, compare_repo
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import format_bytes
from moe_studio.gui.messages import error_text
from moe_studio.gui.tasks import TaskRunner

log = logging.getLogger(__name__)

Index = QModelIndex | QPersistentModelIndex
CompareFn = Callable[..., RepoComparison]

ROW_ROLE = Qt.ItemDataRole.UserRole + 1
_GOOD = QColor("#2e7d32")
_BAD = QColor("#c62828")


class CompareTableModel(QAbstractTableModel):
    """One row per quant of a :class:`RepoComparison`; ``ROW_ROLE`` gives the :class:`QuantRow`."""

    HEADERS = ("Quant", "Size", "GPU", "RAM", "Fits", "Experts on GPU", "Engine loads it")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._rows: tuple[QuantRow, ...] = ()
        self.engine = ""

    def set_comparison(self, comparison: RepoComparison | None) -> None:
        self.beginResetModel()
        self._rows = comparison.rows if comparison else ()
        self.engine = (
            ENGINE_NAMES.get(comparison.settings.dialect, comparison.settings.dialect)
            if comparison
            else ""
        )
        self.endResetModel()

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(
        self,
        section: int,
        orientation: Qt.Orientation,
        role: int = Qt.ItemDataRole.DisplayRole,
    ) -> Any:
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if orientation == Qt.Orientation.Horizontal and 0 <= section < len(self.HEADERS):
            if section == len(self.HEADERS) - 1 and self.engine:
                return f"Loads on {self.engine}"
            return self.HEADERS[section]
        return None

    def row(self, index: int) -> QuantRow:
        return self._rows[index]

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        row = self._rows[index.row()]
        column = index.column()
        if role == ROW_ROLE:
            return row
        p = row.placement
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                return row.quant.label
            if column == 1:
                return format_bytes(row.quant.size)
            if p is None:
                return "not read" if column == 2 else ""
            return (
                format_bytes(p.gpu_bytes),
                format_bytes(p.ram_bytes),
                "yes" if p.fits else "no",
                f"{p.expert_gpu_share:.0%}",
                p.engine_text,
            )[column - 2]
        if role == Qt.ItemDataRole.ToolTipRole:
            if p is None:
                return row.error
            return f"{row.url}\n{row.download}"
        if role == Qt.ItemDataRole.ForegroundRole and p is not None:
            if column == 4:
                return QBrush(_GOOD if p.fits else _BAD)
            if column == 6:
                return QBrush(_GOOD if p.loadable else _BAD)
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (1, 2, 3, 5):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


def _rig_text(rig: Rig, settings: Settings) -> str:
    gpus = ", ".join(d.name for d in rig.devices) or "no GPU"
    return (
        f"On {rig.name}: {gpus} and {format_bytes(rig.host.ram_total)} RAM, context {settings.ctx}."
    )


class HubDialog(QDialog):
    """Signals: ``open_requested(url)`` when the user chooses a quant to open."""

    open_requested = Signal(str)

    def __init__(
        self,
        rig: Rig,
        settings: Settings,
        parent: QWidget | None = None,
        *,
        compare: CompareFn = compare_repo,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Open from Hugging Face")
        self._rig = rig
        self._settings = settings
        self._compare = compare
        self.comparison: RepoComparison | None = None
        self.tasks = TaskRunner(self)
        self.tasks.progressed.connect(self._on_tasks_progressed)
        self.tasks.failed.connect(self._on_tasks_failed)
        self.tasks.running_changed.connect(self._on_tasks_running_changed)

        self.repo = QLineEdit()
        self.repo.setPlaceholderText("OWNER/REPO, e.g. unsloth/DeepSeek-V3-GGUF")
        self.repo.returnPressed.connect(self.start)
        self.compare_button = QPushButton("Compare quants")
        self.compare_button.clicked.connect(self.start)
        top = QHBoxLayout()
        top.addWidget(QLabel("Repository:"))
        top.addWidget(self.repo, 1)
        top.addWidget(self.compare_button)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.hide()
        self.cancel_button.clicked.connect(self.cancel)
        busy = QHBoxLayout()
        busy.addWidget(self.progress, 1)
        busy.addWidget(self.cancel_button)

        self.model = CompareTableModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        # A double click or Enter on a row opens it (not "activated": with a single-click
        # desktop setting that would open a row the user only meant to select).
        self.table.doubleClicked.connect(self._on_table_double_clicked)
        self.table.installEventFilter(self)
        self.table.selectionModel().selectionChanged.connect(self._update_buttons)

        self.message = QLabel(
            "Only the headers of each quant are read (a few MB), never the tensors."
        )
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.open_button = QPushButton("Open tensor map")
        self.open_button.setEnabled(False)
        self.open_button.clicked.connect(self.open_selected)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        # No default button: Enter belongs to the field (compare) or the table (open). A default
        # button would take the same Enter a second time (comparing again, or comparing after
        # the dialog had opened the row).
        for button in (self.compare_button, self.cancel_button, self.open_button, close):
            button.setAutoDefault(False)
            button.setDefault(False)
        bottom = QHBoxLayout()
        bottom.addStretch(1)
        bottom.addWidget(self.open_button)
        bottom.addWidget(close)

        layout = QVBoxLayout(self)
        self.rig_label = QLabel(_rig_text(rig, settings))
        layout.addWidget(self.rig_label)
        layout.addLayout(top)
        layout.addLayout(busy)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.message)
        layout.addLayout(bottom)
        self.resize(900, 420)

    def set_target(self, rig: Rig, settings: Settings) -> None:
        """Compare on ``rig`` with ``settings`` from now on (the window's, when it reopens the
        dialog); a comparison made for others is cleared."""
        if (rig, settings) == (self._rig, self._settings):
            return
        self.tasks.cancel()
        self._rig, self._settings = rig, settings
        self.rig_label.setText(_rig_text(rig, settings))
        self.model.set_comparison(None)
        self.comparison = None
        self._update_buttons()

    # --- comparing -----------------------------------------------------------------------------

    def start(self) -> None:
        """Compare the quants of the repository typed in (cancels a comparison running)."""
        text = self.repo.text().strip().removeprefix("hf://").strip("/")
        repo, _, revision = text.partition("@")
        if not repo:
            return
        rig, settings, compare = self._rig, self._settings, self._compare

        def work(
            progress: Callable[[float, str], None], cancelled: Callable[[], bool]
        ) -> RepoComparison:
            return compare(
                repo,
                rig,
                settings,
                revision=revision or "main",
                progress=progress,
                cancelled=cancelled,
            )

        self.model.set_comparison(None)
        self.comparison = None
        self.message.setText(f"Reading the headers of every quant of {repo}…")
        self.message.setStyleSheet("")
        self.tasks.start(work, self._on_compared)

    def _on_compared(self, comparison: RepoComparison) -> None:
        self.comparison = comparison
        self.model.set_comparison(comparison)
        best = comparison.best
        n = len(comparison.rows)
        if best:
            self.message.setText(
                f"{n} quants. The largest that fits and loads is {best.quant.label}; download "
                f"it with: {best.download}"
            )
            self.table.selectRow(comparison.rows.index(best))
        else:
            self.message.setText(f"{n} quants; none both fits this rig and loads on the engine.")
        self._update_buttons()

    def _on_tasks_progressed(self, fraction: float, text: str) -> None:
        self.progress.setValue(int(fraction * 1000))
        self.progress.setFormat(f"%p%  {text}")

    def _on_tasks_failed(self, error: object) -> None:
        assert isinstance(error, BaseException)
        message, _ = error_text(error)
        if not isinstance(error, MoeStudioError):
            log.error("comparison failed", exc_info=error)
        self.message.setText(message)
        self.message.setStyleSheet(f"color: {_BAD.name()};")

    def _on_tasks_running_changed(self, running: bool) -> None:
        self.progress.setVisible(running)
        self.cancel_button.setVisible(running)
        self.compare_button.setEnabled(not running)
        if running:
            self.progress.setValue(0)

    def cancel(self) -> None:
        if self.tasks.running:
            self.tasks.cancel()
            self.message.setText("Cancelled; nothing more is read.")

    # --- choosing ------------------------------------------------------------------------------

    def selected_row(self) -> QuantRow | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        row = self.model.row(rows[0].row())
        return row if row.layout is not None else None

    def _update_buttons(self, *_: object) -> None:
        self.open_button.setEnabled(self.selected_row() is not None)

    def _on_table_double_clicked(self, index: QModelIndex) -> None:
        self.table.selectRow(index.row())
        self.open_selected()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if (
            watched is self.table
            and event.type() == QEvent.Type.KeyPress
            and isinstance(event, QKeyEvent)
            and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
            and self.selected_row() is not None
        ):
            self.open_selected()
            return True
        return super().eventFilter(watched, event)

    def open_selected(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        self.open_requested.emit(row.url)
        self.accept()

    def done(self, result: int) -> None:
        self.tasks.cancel()
        super().done(result)
