"""Painting of one tensor-map cell: device colour, size, pin mark, mixed/not-loaded hatching."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QPointF, QRect, Qt
from PySide6.QtGui import QBrush, QColor, QPainter, QPen, QPolygonF
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from moe_studio.gui.tensor_map.model import DEVICE_ROLE, LABEL_ROLE, LOADED_ROLE, PINNED_ROLE


class CellDelegate(QStyledItemDelegate):
    def paint(
        self,
        painter: QPainter,
        option: QStyleOptionViewItem,
        index: QModelIndex | QPersistentModelIndex,
    ) -> None:
        rect: QRect = option.rect
        background = index.data(Qt.ItemDataRole.BackgroundRole)
        painter.save()
        inner = rect.adjusted(1, 1, -1, -1)
        if isinstance(background, QBrush):
            painter.fillRect(inner, background)
            if index.data(DEVICE_ROLE) is None or not index.data(LOADED_ROLE):
                painter.fillRect(inner, QBrush(QColor(0, 0, 0, 40), Qt.BrushStyle.BDiagPattern))
        text = str(index.data(Qt.ItemDataRole.DisplayRole) or "")
        label = str(index.data(LABEL_ROLE) or "")
        if label and text:
            text = f"{label} {text}"
        foreground = index.data(Qt.ItemDataRole.ForegroundRole)
        if text:
            painter.setPen(
                foreground.color()
                if isinstance(foreground, QBrush)
                else option.palette.text().color()
            )
            painter.drawText(inner, int(Qt.AlignmentFlag.AlignCenter), text)
        if index.data(PINNED_ROLE):
            # A small corner flag: pinned cells are never moved by auto-placement.
            size = min(9, inner.height() // 2)
            corner = QPolygonF(
                [
                    QPointF(inner.right() - size, inner.top()),
                    QPointF(inner.right() + 1, inner.top()),
                    QPointF(inner.right() + 1, inner.top() + size),
                ]
            )
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(
                QColor("#222222")
                if isinstance(foreground, QBrush) and foreground.color().value() < 128
                else QColor("#ffffff")
            )
            painter.drawPolygon(corner)
        if option.state & QStyle.StateFlag.State_Selected:
            pen = QPen(option.palette.highlight().color(), 2.5)
            painter.setPen(pen)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(rect.adjusted(1, 1, -2, -2))
        painter.restore()
