"""The profile library: every saved profile with its model, rig, date, fit and last speed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import (
    QAbstractTableModel,
    QEvent,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QAction, QKeyEvent, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QInputDialog,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from moe_studio.core.errors import MoeStudioError
from moe_studio.core.profiles.library import ProfileLibrary, ProfileSummary
from moe_studio.gui.messages import show_error

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
    """Pick a profile from the library (``chosen_path`` after ``exec()``); rename or delete one.

    Signals:
        renamed(old, new): a profile file moved to a new path.
        deleted(path): a profile file was deleted.
    """

    renamed = Signal(str, str)
    deleted = Signal(str)

    def __init__(self, library: ProfileLibrary, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Profile library")
        self.library = library
        self.chosen_path: str | None = None
        self.last_error_dialog: QMessageBox | None = None
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
        self.rename_button = QPushButton("Rename…")
        self.rename_button.setToolTip("Give the selected profile another name (F2)")
        self.rename_button.clicked.connect(self.rename_selected)
        buttons.addButton(self.rename_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.delete_button = QPushButton("Delete…")
        self.delete_button.setToolTip("Delete the selected profile's file (Del)")
        self.delete_button.clicked.connect(self.delete_selected)
        buttons.addButton(self.delete_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.accepted.connect(self._on_accepted)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        # The keys file managers use (KDE and GNOME: F2 renames, Delete deletes).
        rename_key = QAction(self)
        rename_key.setShortcut(QKeySequence(Qt.Key.Key_F2))
        rename_key.triggered.connect(self.rename_selected)
        self.addAction(rename_key)
        # Delete as a key press of the list: the table claims Del before shortcuts see it.
        self.view.installEventFilter(self)
        self.view.selectionModel().selectionChanged.connect(self._update_buttons)
        self._update_buttons()
        self.resize(900, 400)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if (
            watched is self.view
            and isinstance(event, QKeyEvent)
            and event.type() == QEvent.Type.KeyPress
            and event.matches(QKeySequence.StandardKey.Delete)
        ):
            self.delete_selected()
            return True
        return super().eventFilter(watched, event)

    def selected(self) -> ProfileSummary | None:
        rows = self.view.selectionModel().selectedRows()
        return self.model.summary(rows[0].row()) if rows else None

    def _update_buttons(self, *_: object) -> None:
        chosen = self.selected() is not None
        self.open_button.setEnabled(chosen)
        self.rename_button.setEnabled(chosen)
        self.delete_button.setEnabled(chosen)

    def _reload(self, select: Path | None = None) -> None:
        self.model.set_summaries(self.library.entries())
        for row in range(self.model.rowCount()):
            if select is not None and self.model.summary(row).path == select:
                self.view.selectRow(row)
        self._update_buttons()

    def rename_selected(self) -> None:
        """Ask for a new name for the selected profile; a name already taken is refused."""
        summary = self.selected()
        if summary is None:
            return
        name, ok = QInputDialog.getText(
            self, "Rename profile", f"New name for “{summary.title}”:", text=summary.title
        )
        if not ok or not name.strip() or name.strip() == summary.title:
            return
        try:
            new = self.library.rename(summary.path, name)
        except MoeStudioError as exc:
            self.last_error_dialog = show_error(self, "Cannot rename the profile", exc)
            return
        self._reload(select=new)
        self.renamed.emit(str(summary.path), str(new))

    def delete_selected(self) -> None:
        """Delete the selected profile after the user confirms."""
        summary = self.selected()
        if summary is None:
            return
        answer = QMessageBox.question(
            self,
            "Delete profile",
            f"Delete the profile “{summary.title}”?\n\n{summary.path} will be removed; "
            "this cannot be undone.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        try:
            self.library.delete(summary.path)
        except MoeStudioError as exc:
            self.last_error_dialog = show_error(self, "Cannot delete the profile", exc)
            return
        self._reload()
        self.deleted.emit(str(summary.path))

    def _on_view_double_clicked(self, index: QModelIndex) -> None:
        self.view.selectRow(index.row())
        self._on_accepted()

    def _on_accepted(self) -> None:
        summary = self.selected()
        if summary is None:
            return
        self.chosen_path = str(summary.path)
        self.accept()
