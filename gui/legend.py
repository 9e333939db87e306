"""Help → Legend: what every colour and mark in the grid and the budget bars means."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QPainter, QPen, QPixmap, QPolygonF
from PySide6.QtWidgets import QDialog, QGridLayout, QLabel, QVBoxLayout, QWidget

from moe_studio.core.hardware.devices import CPU_NAME
from moe_studio.core.plan.memory import COMPUTE_MARGIN
from moe_studio.core.units import format_bytes
from moe_studio.gui import theme
from moe_studio.gui.document import Document

W, H = 44, 18
Paint = Callable[[QPainter, QRectF], None]


def _fill(color: QColor, pattern: Qt.BrushStyle | None = None) -> Paint:
    def paint(p: QPainter, r: QRectF) -> None:
        p.fillRect(r, color)
        if pattern is not None:
            p.fillRect(r, QBrush(QColor(0, 0, 0, 60), pattern))

    return paint


def _pinned(p: QPainter, r: QRectF) -> None:
    p.fillRect(r, theme.device_color("CUDA0", ["CUDA0"]))
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor("#ffffff"))
    p.drawPolygon(
        QPolygonF([QPointF(r.right() - 9, r.top()), r.topRight(), QPointF(r.right(), r.top() + 9)])
    )


def _over(p: QPainter, r: QRectF) -> None:
    p.fillRect(r, QBrush(theme.OVER_COLOR, Qt.BrushStyle.BDiagPattern))
    p.setPen(QPen(theme.OVER_COLOR, 2))
    p.drawRect(r.adjusted(1, 1, -1, -1))


def _line(style: Qt.PenStyle, width: int) -> Paint:
    def paint(p: QPainter, r: QRectF) -> None:
        p.setPen(
            QPen(QColor("#333333") if not theme.is_dark() else QColor("#dddddd"), width, style)
        )
        y = r.center().y()
        p.drawLine(QPointF(r.left(), y), QPointF(r.right(), y))

    return paint


def _selected(p: QPainter, r: QRectF) -> None:
    p.fillRect(r, theme.CPU_COLOR)
    p.setPen(QPen(QColor("#3d7fbf"), 2.5))
    p.drawRect(r.adjusted(1, 1, -2, -2))


def _icon(paint: Paint) -> QPixmap:
    pixmap = QPixmap(W, H)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    paint(painter, QRectF(0, 0, W, H))
    painter.end()
    return pixmap


def legend_entries(document: Document) -> list[tuple[str, str, Paint]]:
    """(section, text, painter) for every colour and mark the window draws."""
    rig = document.rig
    order = [d.name for d in rig.devices]
    grid: list[tuple[str, str, Paint]] = [
        (
            "Tensor map",
            f"{d.name}: {d.display}, {format_bytes(d.memory_total)}",
            _fill(theme.device_color(d.name, order)),
        )
        for d in rig.devices
    ]
    grid += [
        ("Tensor map", f"{CPU_NAME}: host RAM", _fill(theme.CPU_COLOR)),
        (
            "Tensor map",
            "Split cell: its tensors sit on several devices (hatched)",
            _fill(theme.MIXED_COLOR, Qt.BrushStyle.BDiagPattern),
        ),
        (
            "Tensor map",
            "Not loaded by the engine, e.g. MTP / nextn layers (hatched)",
            _fill(theme.CPU_COLOR, Qt.BrushStyle.BDiagPattern),
        ),
        ("Tensor map", "Pinned (corner flag): auto-place never moves it", _pinned),
        ("Tensor map", "Selected cells (outline)", _selected),
    ]
    labels = {
        "weights": "Weights",
        "kv": "KV cache",
        "compute": "Compute buffer",
        "overhead": "CUDA context and overhead",
    }
    bars: list[tuple[str, str, Paint]] = [
        ("Budget bars", text, _fill(theme.SEGMENT_COLORS[key])) for key, text in labels.items()
    ]
    bars += [
        ("Budget bars", "Over budget: beyond the usable memory (hatched, '+X over')", _over),
        ("Budget bars", "Solid line: the device's total memory", _line(Qt.PenStyle.SolidLine, 2)),
        (
            "Budget bars",
            "Dashed line: usable memory (total minus the reserve)",
            _line(Qt.PenStyle.DashLine, 1),
        ),
        (
            "Budget bars",
            f"Hatched cap: the compute estimate's known error (±{COMPUTE_MARGIN:.0%}); "
            "'fits' keeps it under the dashed line. Measured figures ('measured') have none",
            _fill(theme.SEGMENT_COLORS["compute"], Qt.BrushStyle.Dense5Pattern),
        ),
        ("Budget bars", "Diamond: the engine's own total from Check with engine", _diamond),
    ]
    return grid + bars


def _diamond(p: QPainter, r: QRectF) -> None:
    c = r.center()
    p.setPen(QPen(QColor("#000000"), 1.5))
    p.setBrush(QColor("#56B4E9"))
    p.drawPolygon(
        QPolygonF(
            [
                QPointF(c.x(), c.y() - 7),
                QPointF(c.x() + 6, c.y()),
                QPointF(c.x(), c.y() + 7),
                QPointF(c.x() - 6, c.y()),
            ]
        )
    )


class LegendDialog(QDialog):
    """Non-modal; rebuilt when the rig changes (the device rows follow it)."""

    def __init__(self, document: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Legend")
        self._document = document
        self._body = QWidget()
        outer = QVBoxLayout(self)
        outer.addWidget(self._body)
        document.rig_changed.connect(self.rebuild)
        self.rebuild()

    def rebuild(self) -> None:
        old = self._body.layout()
        if old is not None:
            QWidget().setLayout(old)  # reparent the old layout away, deleting its items
        grid = QGridLayout(self._body)
        grid.setHorizontalSpacing(10)
        self.texts: list[str] = []
        row = 0
        section = ""
        for where, text, paint in legend_entries(self._document):
            if where != section:
                section = where
                title = QLabel(f"<b>{where}</b>")
                grid.addWidget(title, row, 0, 1, 2)
                row += 1
            icon = QLabel()
            icon.setPixmap(_icon(paint))
            grid.addWidget(icon, row, 0)
            grid.addWidget(QLabel(text), row, 1)
            self.texts.append(text)
            row += 1
