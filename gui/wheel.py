"""Fields that take the mouse wheel only once focused: over an unfocused field the wheel scrolls
the page (or does nothing), so wheeling past a combo box never edits a setting."""

from __future__ import annotations

from collections.abc import Iterable

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import QAbstractScrollArea, QApplication, QWidget


class WheelGuard(QObject):
    """Lets the wheel scroll the page over a field that has no focus (instead of changing it):
    a field takes the wheel only once the user clicked or tabbed into it (KDE/Qt convention)."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if (
            event.type() == QEvent.Type.Wheel
            and isinstance(watched, QWidget)
            and not watched.hasFocus()
        ):
            # Hand the wheel to the enclosing page's scroll bar ourselves: Qt propagates only
            # spontaneous wheel events to the parent, and this must work the same for both.
            parent = watched.parentWidget()
            while parent is not None and not isinstance(parent, QAbstractScrollArea):
                parent = parent.parentWidget()
            if parent is not None:
                QApplication.sendEvent(parent.verticalScrollBar(), event)
            return True
        return False


def guard_wheel(owner: QObject, fields: Iterable[QWidget]) -> WheelGuard:
    """Give ``fields`` focus by click or Tab only (not by the wheel) and the wheel only while
    focused; the filter lives as long as ``owner``."""
    guard = WheelGuard(owner)
    for field in fields:
        field.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        field.installEventFilter(guard)
    return guard
