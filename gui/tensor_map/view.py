"""The grid: paint with the chosen device, drag a selection, keyboard and context menu.

Every gesture becomes a request to the document. A paint stroke (press, move across cells,
release) carries one stroke number so the document merges it into a single undo step.

In Select mode the mouse works as in a spreadsheet: press-and-drag from an unselected cell (or
from the empty area) draws a rubber band and selects the rectangle (Shift extends, Ctrl
toggles); press-and-drag on a selected cell moves the selection.
"""

from __future__ import annotations

import itertools

from PySide6.QtCore import QModelIndex, QPoint, QRect, Qt, Signal
from PySide6.QtGui import QAction, QContextMenuEvent, QKeyEvent, QMouseEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QMenu,
    QRubberBand,
    QTableView,
    QWidget,
)

from moe_studio.core.gguf.model import Cell
from moe_studio.core.hardware.devices import CPU_NAME
from moe_studio.gui.document import Document
from moe_studio.gui.tensor_map.delegate import CellDelegate
from moe_studio.gui.tensor_map.model import CELLS_ROLE, LOADED_ROLE, PINNED_ROLE, TensorMapModel

_strokes = itertools.count(1)


class TensorMapView(QTableView):
    """Signals:
    auto_place_requested: the user asked to auto-place the free cells.
    """

    auto_place_requested = Signal()

    def __init__(
        self, document: Document, model: TensorMapModel, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._document = document
        self._brush: str | None = None
        self._stroke = 0
        self._stroke_cells: set[tuple[int, int]] = set()
        self._band_origin: QPoint | None = None
        self.rubber_band = QRubberBand(QRubberBand.Shape.Rectangle, self.viewport())
        self.setModel(model)
        self.setItemDelegate(CellDelegate(self))
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectItems)
        self.setDragEnabled(True)
        self.setAcceptDrops(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DragDrop)
        self.setDefaultDropAction(Qt.DropAction.MoveAction)
        self.setDropIndicatorShown(False)
        self.setShowGrid(False)
        self.setMouseTracking(True)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.horizontalHeader().setHighlightSections(False)
        self.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.verticalHeader().setDefaultSectionSize(20)
        self.verticalHeader().setMinimumWidth(44)
        self.setAlternatingRowColors(False)

    @property
    def tensor_model(self) -> TensorMapModel:
        model = self.model()
        assert isinstance(model, TensorMapModel)
        return model

    # --- brush (the palette's device) ----------------------------------------------------------

    @property
    def brush(self) -> str | None:
        return self._brush

    def set_brush(self, device: str | None) -> None:
        """Paint mode with ``device``; ``None`` selects and drags instead."""
        self._brush = device
        self.setDragEnabled(device is None)
        self.viewport().setCursor(
            Qt.CursorShape.CrossCursor if device else Qt.CursorShape.ArrowCursor
        )

    # --- selection helpers ---------------------------------------------------------------------

    def selected_cells(self) -> list[Cell]:
        cells: list[Cell] = []
        for index in self.selectionModel().selectedIndexes():
            for cell in index.data(CELLS_ROLE) or ():
                if cell not in cells:
                    cells.append(cell)
        return cells

    def _paintable(self, index: QModelIndex) -> bool:
        return index.isValid() and bool(index.data(CELLS_ROLE)) and bool(index.data(LOADED_ROLE))

    # --- painting ------------------------------------------------------------------------------

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            index = self.indexAt(event.position().toPoint())
            if self._brush:
                if self._paintable(index):
                    self._stroke = next(_strokes)
                    self._stroke_cells = set()
                    self._paint_at(index)
                    event.accept()
                    return
            elif self._starts_rubber_band(index, event):
                # Qt's own drag-select does the selecting (with its Shift/Ctrl rules) once drag
                # and drop is off for this gesture; the band shows the rectangle being chosen.
                self.setDragEnabled(False)
                self._band_origin = event.position().toPoint()
                self.rubber_band.setGeometry(QRect(self._band_origin, self._band_origin))
                self.rubber_band.show()
        super().mousePressEvent(event)

    def _starts_rubber_band(self, index: QModelIndex, event: QMouseEvent) -> bool:
        """A press that selects rather than moves: off the selection, or with Shift/Ctrl."""
        modifiers = event.modifiers() & (
            Qt.KeyboardModifier.ShiftModifier | Qt.KeyboardModifier.ControlModifier
        )
        on_selection = index.isValid() and self.selectionModel().isSelected(index)
        return not on_selection or modifiers != Qt.KeyboardModifier.NoModifier

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._stroke and event.buttons() & Qt.MouseButton.LeftButton:
            self._paint_at(self.indexAt(event.position().toPoint()))
            event.accept()
            return
        if self._band_origin is not None:
            self.rubber_band.setGeometry(
                QRect(self._band_origin, event.position().toPoint()).normalized()
            )
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self._stroke:
            self._stroke = 0
            self._stroke_cells = set()
            event.accept()
            return
        super().mouseReleaseEvent(event)
        if self._band_origin is not None:
            self._band_origin = None
            self.rubber_band.hide()
            self.setDragEnabled(self._brush is None)

    @property
    def rubber_banding(self) -> bool:
        """Whether a rubber-band selection is in progress."""
        return self._band_origin is not None

    def _paint_at(self, index: QModelIndex) -> None:
        if not self._paintable(index) or self._brush is None:
            return
        key = (index.row(), index.column())
        if key in self._stroke_cells:
            return
        self._stroke_cells.add(key)
        self._document.assign_cells(index.data(CELLS_ROLE), self._brush, stroke=self._stroke)

    # --- keyboard ------------------------------------------------------------------------------

    def keyPressEvent(self, event: QKeyEvent) -> None:
        text = event.text().lower()
        cells = self.selected_cells()
        if cells and text.isdigit():
            name = f"CUDA{text}"
            if self._document.rig.device(name) is not None:
                self._document.assign_cells(cells, name)
            event.accept()
            return
        if cells and text == "c":
            self._document.assign_cells(cells, CPU_NAME)
            event.accept()
            return
        if cells and text == "p":
            pinned = not all(self._index_pinned(cell) for cell in cells)
            self._document.pin_cells(cells, pinned)
            event.accept()
            return
        super().keyPressEvent(event)

    def _index_pinned(self, cell: Cell) -> bool:
        return cell in self._document.plan.pinned

    # --- context menu --------------------------------------------------------------------------

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        index = self.indexAt(event.pos())
        if (
            index.isValid()
            and not self.selectionModel().isSelected(index)
            and self._paintable(index)
        ):
            self.selectionModel().select(index, self.selectionModel().SelectionFlag.ClearAndSelect)
        menu = self.build_menu()
        menu.exec(self.viewport().mapToGlobal(event.pos()))
        menu.deleteLater()

    def build_menu(self) -> QMenu:
        """The context menu for the current selection (separate so tests can inspect it)."""
        menu = QMenu(self)
        cells = self.selected_cells()
        move = menu.addMenu("Move to")
        move.setEnabled(bool(cells))
        for device in [d.name for d in self._document.rig.devices] + [CPU_NAME]:
            action = QAction(device, move)
            action.triggered.connect(
                lambda _=False, d=device: self._document.assign_cells(self.selected_cells(), d)
            )
            move.addAction(action)
        pin = menu.addAction("Pin")
        pin.setEnabled(bool(cells))
        pin.triggered.connect(lambda: self._document.pin_cells(self.selected_cells(), True))
        unpin = menu.addAction("Unpin")
        unpin.setEnabled(bool(cells))
        unpin.triggered.connect(lambda: self._document.pin_cells(self.selected_cells(), False))
        menu.addSeparator()
        auto = menu.addAction("Auto-place the rest")
        auto.triggered.connect(self.auto_place_requested.emit)
        reset_sel = menu.addAction("Reset selected cells")
        reset_sel.setEnabled(bool(cells))
        reset_sel.triggered.connect(lambda: self._document.reset_cells(self.selected_cells()))
        reset_all = menu.addAction("Reset all")
        reset_all.triggered.connect(self._document.reset_all)
        menu.addSeparator()
        rows = sorted({i.row() for i in self.selectionModel().selectedIndexes()})
        collapse = menu.addAction("Collapse rows into a range")
        collapse.setEnabled(len(rows) > 1)
        collapse.triggered.connect(lambda: self.tensor_model.collapse(rows))
        expand = menu.addAction("Expand range")
        expand.setEnabled(
            any(self.tensor_model.rows[r].first != self.tensor_model.rows[r].last for r in rows)
        )
        expand.triggered.connect(lambda: self._expand_rows(rows))
        return menu

    def _expand_rows(self, rows: list[int]) -> None:
        for row in reversed(rows):  # from the bottom, so earlier row numbers stay valid
            self.tensor_model.expand(row)

    def cell_center(self, row: int, column: int) -> QPoint:
        """Viewport coordinates of a cell's centre (for tests and drag helpers)."""
        return self.visualRect(self.model().index(row, column)).center()

    def pinned_at(self, row: int, column: int) -> bool:
        return bool(self.model().index(row, column).data(PINNED_ROLE))
