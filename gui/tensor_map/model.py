"""The tensor map as a table: one row per layer (or range of layers) plus the globals, one column
per tensor group. Adapts the document's plan directly; custom roles return core values."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import (
    QAbstractTableModel,
    QByteArray,
    QMimeData,
    QModelIndex,
    QPersistentModelIndex,
    Qt,
)
from PySide6.QtGui import QBrush, QColor

from moe_studio.core.gguf.model import Cell, ModelLayout
from moe_studio.core.gguf.tensors import GLOBAL_COLUMNS, GLOBAL_LAYER, TensorGroup
from moe_studio.core.plan.placement import cell_devices
from moe_studio.core.units import format_bytes
from moe_studio.gui import theme
from moe_studio.gui.document import Document
from moe_studio.gui.text import keep_units

CELLS_MIME = "application/x-moe-studio-cells"
Index = QModelIndex | QPersistentModelIndex

# Custom roles: core values for views, delegates and tests.
CELLS_ROLE = Qt.ItemDataRole.UserRole + 1  # tuple[Cell, ...]
DEVICE_ROLE = Qt.ItemDataRole.UserRole + 2  # str, or None when the cell is split over devices
PINNED_ROLE = Qt.ItemDataRole.UserRole + 3  # bool: every tensor cell pinned
LOADED_ROLE = Qt.ItemDataRole.UserRole + 4  # bool: the engine loads these tensors
BYTES_ROLE = Qt.ItemDataRole.UserRole + 5  # int
LABEL_ROLE = Qt.ItemDataRole.UserRole + 6  # str: the global row's tensor name


@dataclass(frozen=True, slots=True)
class RowSpec:
    """A grid row: one layer, a range of layers, or the globals (first == last == -1)."""

    first: int
    last: int

    @property
    def is_global(self) -> bool:
        return self.first == GLOBAL_LAYER

    def layers(self) -> range:
        return range(self.first, self.last + 1)

    def label(self) -> str:
        if self.is_global:
            return "Globals"
        return f"{self.first}" if self.first == self.last else f"{self.first}–{self.last}"


@dataclass(frozen=True, slots=True)
class CellInfo:
    cells: tuple[Cell, ...]
    device: str | None
    nbytes: int
    pinned: bool
    loaded: bool
    label: str = ""
    # Worked out once per plan change, not on every repaint.
    background: QColor | None = None
    foreground: QColor | None = None


_EMPTY = CellInfo((), None, 0, False, True)
_NOT_LOADED_BG = QColor("#d9d9d9")
_NOT_LOADED_FG = QColor("#7a7a7a")


def _short(n: int) -> str:
    if n <= 0:
        return ""
    gib = n / 2**30
    if gib >= 10:
        return f"{gib:.0f}G"
    if gib >= 0.1:
        return f"{gib:.1f}G"
    return f"{n / 2**20:.0f}M" if n >= 2**20 else f"{max(1, n // 1024)}K"


class TensorMapModel(QAbstractTableModel):
    """Rows are layers (or collapsed ranges) after a first "Globals" row; columns are groups."""

    def __init__(self, document: Document) -> None:
        super().__init__()
        self._document = document
        self._rows: list[RowSpec] = []
        self._columns: tuple[TensorGroup, ...] = ()
        self._info: list[list[CellInfo]] = []
        self._group_size = 1
        document.model_changed.connect(self._on_document_model_changed)
        # set_rig announces a plan change too (device colours follow the rig).
        document.plan_changed.connect(self._on_document_plan_changed)
        self._rebuild()

    # --- structure -----------------------------------------------------------------------------

    @property
    def layout(self) -> ModelLayout:
        return self._document.layout

    @property
    def rows(self) -> list[RowSpec]:
        return list(self._rows)

    @property
    def columns(self) -> tuple[TensorGroup, ...]:
        return self._columns

    def set_group_size(self, size: int) -> None:
        """Collapse layers into ranges of ``size`` (1 shows every layer)."""
        self._group_size = max(1, size)
        self.beginResetModel()
        self._rows = self._default_rows()
        self._recompute()
        self.endResetModel()

    def collapse(self, rows: list[int]) -> None:
        """Merge the given consecutive layer rows into one range row."""
        chosen = sorted(
            r for r in set(rows) if 0 <= r < len(self._rows) and not self._rows[r].is_global
        )
        if len(chosen) < 2:
            return
        first, last = chosen[0], chosen[-1]
        span = RowSpec(self._rows[first].first, self._rows[last].last)
        self.beginResetModel()
        self._rows[first : last + 1] = [span]
        self._recompute()
        self.endResetModel()

    def expand(self, row: int) -> None:
        """Split a range row back into single layers."""
        spec = self._rows[row]
        if spec.is_global or spec.first == spec.last:
            return
        self.beginResetModel()
        self._rows[row : row + 1] = [RowSpec(i, i) for i in spec.layers()]
        self._recompute()
        self.endResetModel()

    def row_of_layer(self, layer: int) -> int:
        for i, spec in enumerate(self._rows):
            if spec.first <= layer <= spec.last:
                return i
        return -1

    def _default_rows(self) -> list[RowSpec]:
        n = self.layout.n_layer
        size = self._group_size
        rows = [RowSpec(GLOBAL_LAYER, GLOBAL_LAYER)]
        first = 0
        n_kv = self.layout.hparams.n_layer_kv
        while first < n:
            # Never mix loaded and not-loaded (MTP) layers in one range.
            last = min(first + size, n_kv if first < n_kv else n) - 1
            rows.append(RowSpec(first, last))
            first = last + 1
        return rows

    def _rebuild(self) -> None:
        self.beginResetModel()
        self._columns = self.layout.columns
        self._rows = self._default_rows()
        self._recompute()
        self.endResetModel()

    def _cell_keys(self, row: int, column: int) -> tuple[Cell, ...]:
        spec = self._rows[row]
        cells = self.layout.cells
        if spec.is_global:
            if column < len(GLOBAL_COLUMNS):
                key = (GLOBAL_LAYER, GLOBAL_COLUMNS[column])
                return (key,) if key in cells else ()
            return ()
        group = self._columns[column]
        return tuple((layer, group) for layer in spec.layers() if (layer, group) in cells)

    def _compute_info(self, row: int, column: int, order: list[str]) -> CellInfo:
        keys = self._cell_keys(row, column)
        if not keys:
            return _EMPTY
        layout = self.layout
        plan = self._document.plan
        devices: set[str] = set()
        nbytes = 0
        for key in keys:
            per_device = cell_devices(layout, plan, key)
            devices.update(per_device)
            nbytes += layout.cell_bytes.get(key, 0)
        loaded = all(layout.layer_loaded(k[0]) for k in keys)
        device = next(iter(devices)) if len(devices) == 1 else None
        pinned = all(k in plan.pinned for k in keys)
        label = keys[0][1].short_label if self._rows[row].is_global else ""
        if not loaded:
            background, foreground = _NOT_LOADED_BG, _NOT_LOADED_FG
        else:
            background = theme.MIXED_COLOR if device is None else theme.device_color(device, order)
            foreground = theme.text_color_on(background)
        return CellInfo(keys, device, nbytes, pinned, loaded, label, background, foreground)

    def _recompute(self) -> None:
        order = self._device_order()
        self._info = [
            [self._compute_info(r, c, order) for c in range(self.columnCount())]
            for r in range(len(self._rows))
        ]

    # --- Qt model API --------------------------------------------------------------------------

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        if parent.isValid():
            return 0
        return max(len(self._columns), len(GLOBAL_COLUMNS))

    def info(self, index: Index) -> CellInfo:
        if (
            not index.isValid()
            or index.row() >= len(self._info)
            or index.column() >= len(self._info[0])
        ):
            return _EMPTY
        return self._info[index.row()][index.column()]

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        if not index.isValid():
            return None
        info = self.info(index)
        if role == Qt.ItemDataRole.DisplayRole:
            return _short(info.nbytes)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(info) if info.cells else None
        if role == Qt.ItemDataRole.BackgroundRole:
            return QBrush(info.background) if info.background is not None else None
        if role == Qt.ItemDataRole.ForegroundRole:
            return QBrush(info.foreground) if info.foreground is not None else None
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignCenter)
        if role == CELLS_ROLE:
            return info.cells
        if role == DEVICE_ROLE:
            return info.device
        if role == PINNED_ROLE:
            return info.pinned
        if role == LOADED_ROLE:
            return info.loaded
        if role == BYTES_ROLE:
            return info.nbytes
        if role == LABEL_ROLE:
            return info.label
        return None

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> object:
        if role == Qt.ItemDataRole.DisplayRole:
            if orientation == Qt.Orientation.Horizontal:
                if section < len(self._columns):
                    return self._columns[section].short_label
                return GLOBAL_COLUMNS[section].short_label if section < len(GLOBAL_COLUMNS) else ""
            if section < len(self._rows):
                return self._rows[section].label()
        if role != Qt.ItemDataRole.ToolTipRole:
            return None
        if orientation == Qt.Orientation.Horizontal and section < len(self._columns):
            return f"{self._columns[section].label} (click to select the column)"
        if orientation == Qt.Orientation.Vertical and section < len(self._rows):
            spec = self._rows[section]
            if spec.is_global:
                return (
                    "token_embd, output_norm and output (the engine keeps token_embd on the host)"
                )
            if not self.layout.layer_loaded(spec.first):
                return "MTP / nextn block: the engine does not load it (no memory)"
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.ItemIsDropEnabled
        info = self.info(index)
        if not info.cells:
            return Qt.ItemFlag.NoItemFlags
        if not info.loaded:
            return Qt.ItemFlag.ItemIsEnabled
        return (
            Qt.ItemFlag.ItemIsEnabled
            | Qt.ItemFlag.ItemIsSelectable
            | Qt.ItemFlag.ItemIsDragEnabled
            | Qt.ItemFlag.ItemIsDropEnabled
        )

    # --- drag and drop -------------------------------------------------------------------------

    def supportedDropActions(self) -> Qt.DropAction:
        return Qt.DropAction.MoveAction | Qt.DropAction.CopyAction

    def supportedDragActions(self) -> Qt.DropAction:
        return Qt.DropAction.MoveAction | Qt.DropAction.CopyAction

    def mimeTypes(self) -> list[str]:
        return [CELLS_MIME]

    def mimeData(self, indexes: Sequence[QModelIndex]) -> QMimeData:
        cells: list[Cell] = []
        for index in indexes:
            for cell in self.info(index).cells:
                if cell not in cells:
                    cells.append(cell)
        return cells_to_mime(cells)

    def canDropMimeData(
        self, data: QMimeData, action: Qt.DropAction, row: int, column: int, parent: Index
    ) -> bool:
        return data.hasFormat(CELLS_MIME) and self.info(parent).device is not None

    def dropMimeData(
        self, data: QMimeData, action: Qt.DropAction, row: int, column: int, parent: Index
    ) -> bool:
        """A selection dropped on a cell moves to that cell's device."""
        device = self.info(parent).device
        cells = cells_from_mime(data)
        if device is None or not cells:
            return False
        self._document.assign_cells(cells, device)
        return True

    # --- helpers -------------------------------------------------------------------------------

    def _device_order(self) -> list[str]:
        return [d.name for d in self._document.rig.devices]

    def _tooltip(self, info: CellInfo) -> str:
        layout = self.layout
        plan = self._document.plan
        lines = []
        indices = [i for cell in info.cells for i in layout.cells.get(cell, ())]
        title = info.cells[0][1].label if len(info.cells) == 1 else f"{len(info.cells)} cells"
        where = info.device or "several devices"
        pin = ", pinned" if info.pinned else ""
        lines.append(f"<b>{title}</b> — {format_bytes(info.nbytes)} on {where}{pin}")
        if not info.loaded:
            lines.append("<i>not loaded by the engine (MTP block)</i>")
        shown = indices[:14]
        for i in shown:
            t = layout.tensors[i]
            shape = "×".join(map(str, t.shape))
            dev = plan.devices[i] or "—"
            lines.append(
                f"{t.name} &nbsp; {t.type_name} [{shape}] &nbsp; "
                f"{format_bytes(t.nbytes)} &nbsp; → {dev}"
            )
        if len(indices) > len(shown):
            lines.append(f"… and {len(indices) - len(shown)} more tensors")
        # Qt wraps rich tooltips at a fixed width: keep each tensor on one line and every number
        # with its unit ("981.0" / "MiB" was split).
        return "<br>".join(f"<nobr>{keep_units(line)}</nobr>" for line in lines)

    def _on_document_model_changed(self) -> None:
        self._rebuild()

    def _on_document_plan_changed(self, cells: object = None) -> None:
        old = self._info
        self._recompute()
        if not old or len(old) != len(self._info):
            self.beginResetModel()
            self.endResetModel()
            return
        top, bottom = None, None
        for r, (a, b) in enumerate(zip(old, self._info, strict=True)):
            if a != b:
                top = r if top is None else top
                bottom = r
        if top is not None and bottom is not None:
            self.dataChanged.emit(self.index(top, 0), self.index(bottom, self.columnCount() - 1))


def cells_to_mime(cells: list[Cell]) -> QMimeData:
    data = QMimeData()
    payload = json.dumps([[layer, group.value] for layer, group in cells])
    data.setData(CELLS_MIME, QByteArray(payload.encode()))
    return data


def cells_from_mime(data: QMimeData) -> list[Cell]:
    if not data.hasFormat(CELLS_MIME):
        return []
    try:
        raw = json.loads(bytes(data.data(CELLS_MIME).data()).decode())
        return [(int(layer), TensorGroup(group)) for layer, group in raw]
    except (ValueError, TypeError):
        return []
