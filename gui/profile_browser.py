"""The profile library: every saved profile with its model, rig, date, fit and last speed."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from moe_studio.core.profiles.library import ProfileLibrary, ProfileSummary

Index = QModelIndex | QPersistentModelIndex
COLUMNS = ("Profile", "Model", "Rig", "Engine", "Saved", "Fits", "Tokens/s")
SUMMARY_ROLE = Qt.ItemDataRole.UserRole + 1


class ProfileListModel(QAbstractTableModel):
    def __init__(self, summaries: Sequence[ProfileSummary] = ()) -> None:
        super().__init__()
        self._rows = list(summaries)

    def set_summaries(self, summaries: Sequence[ProfileSummary]) -> None:
        self.beginResetModel()
        self._rows = list(summaries)
        self.endResetModel()

    def summary(self, row: int) -> ProfileSummary:
        return self._rows[row]

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> object:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section] if 0 <= section < len(COLUMNS) else None
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        s = self._rows[index.row()]
        if role == SUMMARY_ROLE:
            return s
        if role == Qt.ItemDataRole.ToolTipRole:
            return s.error or str(s.path)
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if s.error:
            return (s.path.name, s.error, "", "", "", "", "")[index.column()]
        fits = {True: "yes", False: "no", None: "?"}[s.fits]
        speed = f"{s.tokens_per_second:.1f}" if s.tokens_per_second else ""
        saved = s.modified.strftime("%Y-%m-%d %H:%M") if s.modified else ""
        values = (s.title, s.model_name, s.rig_name, s.dialect, saved, fits, speed)
        return values[index.column()]


class ProfileBrowser(QDialog):
    """Pick a profile from the library (``chosen_path`` after ``exec()``)."""

    def __init__(self, library: ProfileLibrary, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Profile library")
        self.library = library
        self.chosen_path: str | None = None
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"Profiles in {library.folder}"))
        self.model = ProfileListModel(library.entries())
        self.view = QTableView()
        self.view.setModel(self.model)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.view.horizontalHeader().setStretchLastSection(True)
        self.view.doubleClicked.connect(self._on_view_double_clicked)
        layout.addWidget(self.view)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.open_button = QPushButton("Open")
        buttons.addButton(self.open_button, QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self._on_accepted)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(900, 400)

    def _on_view_double_clicked(self, index: QModelIndex) -> None:
        self.view.selectRow(index.row())
        self._on_accepted()

    def _on_accepted(self) -> None:
        rows = self.view.selectionModel().selectedRows()
        if not rows:
            return
        summary = self.model.summary(rows[0].row())
        self.chosen_path = str(summary.path)
        self.accept()
