"""Ctrl+Z in a field with nothing of its own to undo is the window's Undo.

A line edit (a spin box's too) claims Undo and Redo whenever it is editable, even with an empty
history of its own: after typing a value and pressing Enter, the change is an undo step of the
document, yet Ctrl+Z in the field did nothing at all. While the field has typing to take back,
the key stays the field's.
"""

from __future__ import annotations

from collections.abc import Iterable

from PySide6.QtCore import QEvent, QObject
from PySide6.QtGui import QKeyEvent, QKeySequence
from PySide6.QtWidgets import QAbstractSpinBox, QComboBox, QLineEdit, QWidget


def _line_edit(widget: QObject) -> QLineEdit | None:
    if isinstance(widget, QLineEdit):
        return widget
    if isinstance(widget, QAbstractSpinBox | QComboBox):
        return widget.findChild(QLineEdit)
    return None


class UndoFallthrough(QObject):
    """Lets Undo/Redo reach the window's actions when the field has nothing to undo/redo."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() != QEvent.Type.ShortcutOverride or not isinstance(event, QKeyEvent):
            return False
        line = _line_edit(watched)
        if line is None or line.isReadOnly():
            return False
        # Returning True leaves the event not accepted: the shortcut (Edit → Undo) gets the key.
        undo = event.matches(QKeySequence.StandardKey.Undo) and not line.isUndoAvailable()
        redo = event.matches(QKeySequence.StandardKey.Redo) and not line.isRedoAvailable()
        return bool(undo or redo)


def undo_falls_through(owner: QObject, fields: Iterable[QWidget]) -> UndoFallthrough:
    """Install :class:`UndoFallthrough` on ``fields``; the filter lives as long as ``owner``."""
    fallthrough = UndoFallthrough(owner)
    for field in fields:
        field.installEventFilter(fallthrough)
    return fallthrough
