"""The device palette: pick a brush (a device) to paint cells with, or "Select" to drag instead.

Each device button is also a drop target: drop a selection from the grid on it to move the cells.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QDragEnterEvent, QDropEvent, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import QButtonGroup, QHBoxLayout, QLabel, QToolButton, QWidget

from moe_studio.core.hardware.devices import CPU_NAME
from moe_studio.core.units import format_bytes
from moe_studio.gui import theme
from moe_studio.gui.document import Document
from moe_studio.gui.tensor_map.model import CELLS_MIME, cells_from_mime
from moe_studio.gui.text import keep_units

SELECT = ""


def swatch(color: QColor, size: int = 14) -> QIcon:
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setBrush(color)
    painter.setPen(color.darker(140))
    painter.drawRoundedRect(1, 1, size - 2, size - 2, 3, 3)
    painter.end()
    return QIcon(pixmap)


class _DeviceButton(QToolButton):
    def __init__(self, document: Document, device: str, parent: QWidget) -> None:
        super().__init__(parent)
        self.device = device
        self._document = document
        self.setCheckable(True)
        self.setAcceptDrops(bool(device))
        self.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if self.device and event.mimeData().hasFormat(CELLS_MIME):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        cells = cells_from_mime(event.mimeData())
        if self.device and cells:
            self._document.assign_cells(cells, self.device)
            event.acceptProposedAction()


class DevicePalette(QWidget):
    """Signals:
    brush_changed(str): the chosen device ("" for the selection tool).
    """

    brush_changed = Signal(str)

    def __init__(self, document: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._document = document
        self._group = QButtonGroup(self)
        self._group.setExclusive(True)
        self._layout = QHBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(4)
        self.buttons: dict[str, _DeviceButton] = {}
        self._group.buttonToggled.connect(self._on_group_button_toggled)
        document.rig_changed.connect(self.rebuild)
        self.rebuild()

    def rebuild(self) -> None:
        current = self.brush()
        for button in list(self.buttons.values()):
            self._group.removeButton(button)
            button.deleteLater()
        self.buttons.clear()
        while self._layout.count():
            item = self._layout.takeAt(0)
            widget = item.widget() if item else None
            if widget is not None:
                widget.deleteLater()
        label = QLabel("Paint with:")
        self._layout.addWidget(label)
        order = [d.name for d in self._document.rig.devices]
        entries: list[tuple[str, str, str | None]] = [(SELECT, "Select", None)]
        for dev in self._document.rig.devices:
            short = (
                dev.name if dev.kind.value != "rpc" else dev.name.split("[")[0] + " " + dev.endpoint
            )
            tip = f"{dev.display}, {format_bytes(dev.memory_total)}"
            entries.append((dev.name, short, tip))
        entries.append(
            (CPU_NAME, "CPU", f"host RAM, {format_bytes(self._document.rig.host.ram_total)}")
        )
        for key, text, tooltip in entries:
            button = _DeviceButton(self._document, key, self)
            button.setText(text)
            if key:
                button.setIcon(swatch(theme.device_color(key, order)))
                button.setToolTip(
                    keep_units(
                        f"{tooltip}. Click to paint cells onto it; drop a selection here to "
                        "move it."
                    )
                )
            else:
                button.setToolTip("Select cells and drag them onto a device (no painting)")
            self._group.addButton(button)
            self._layout.addWidget(button)
            self.buttons[key] = button
        self._layout.addStretch(1)
        keep = current if current in self.buttons else SELECT
        self.buttons[keep].setChecked(True)

    def brush(self) -> str:
        checked = self._group.checkedButton()
        return checked.device if isinstance(checked, _DeviceButton) else SELECT

    def set_brush(self, device: str) -> None:
        if device in self.buttons:
            self.buttons[device].setChecked(True)

    def _on_group_button_toggled(self, button: QToolButton, checked: bool) -> None:
        if checked and isinstance(button, _DeviceButton):
            self.brush_changed.emit(button.device)
