"""A scroll area that scrolls only when the window is smaller than its page's minimum size.

A page with word-wrapped labels has height-for-width, and ``QScrollArea`` then sizes it from its
size hint (pyqtgraph plots ask for 600×480), so scroll bars appear although everything fits. Here
the page sits in a holder without a layout that reports its minimum size and stretches it to the
viewport: at 1280×800 the Server and Benchmarks tabs show no scroll bar, their plots get the
room, and a smaller window still reaches every control.
"""

from __future__ import annotations

from PySide6.QtCore import QSize
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import QFrame, QScrollArea, QWidget


class _Holder(QWidget):
    def __init__(self, page: QWidget) -> None:
        super().__init__()
        self.page = page
        page.setParent(self)

    def minimumSizeHint(self) -> QSize:
        return self.page.minimumSizeHint()

    def sizeHint(self) -> QSize:
        return self.page.sizeHint()

    def resizeEvent(self, event: QResizeEvent) -> None:
        self.page.setGeometry(self.rect())
        super().resizeEvent(event)


def fit_area(page: QWidget) -> QScrollArea:
    """``page`` in a frameless scroll area that fits it to the viewport (see the module doc)."""
    area = QScrollArea()
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidgetResizable(True)
    area.setWidget(_Holder(page))
    return area
