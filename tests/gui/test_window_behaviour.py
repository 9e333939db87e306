"""Issue 11: the window behaves as a user expects. Each test drives the real window the way a
user does (key sequences through the real shortcuts, wheel events, menu actions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, QPointF, QSettings, Qt, QTimer
from PySide6.QtGui import QKeySequence, QWheelEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QComboBox, QDialog, QPlainTextEdit

from moe_studio.core.gguf.tensors import TensorGroup
from moe_studio.core.plan.placement import expert_cells
from moe_studio.gui import main_window
from moe_studio.gui.document import Document
from moe_studio.gui.main_window import MainWindow

G = TensorGroup
CTRL = Qt.KeyboardModifier.ControlModifier
SHIFT = Qt.KeyboardModifier.ShiftModifier


def _activate(window: MainWindow, qtbot: object) -> None:
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window)  # type: ignore[attr-defined]
    window.tensor_view.setFocus()


def _menu_action(window: MainWindow, *path: str) -> object:
    """The action at ``path`` in the menu bar ("&Hardware", "&Presets", "2x3090")."""
    actions = window.menuBar().actions()
    for i, name in enumerate(path):
        found = next(a for a in actions if a.text().replace("&", "") == name.replace("&", ""))
        if i == len(path) - 1:
            return found
        actions = found.menu().actions()
    raise AssertionError(path)


@pytest.mark.parametrize(
    "platform_redo",
    [
        ["Ctrl+Shift+Z"],  # KDE, GNOME
        ["Ctrl+Y", "Alt+Shift+Backspace", "Ctrl+Shift+Z"],  # Windows-like (offscreen)
    ],
)
def test_undo_and_redo_by_keyboard(
    qtbot: object,
    demo_document: Document,
    qsettings: QSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    platform_redo: list[str],
) -> None:
    real = main_window.key_bindings

    def bindings(key: QKeySequence.StandardKey) -> list[QKeySequence]:
        if key == QKeySequence.StandardKey.Redo:
            return [QKeySequence(k) for k in platform_redo]
        return real(key)

    monkeypatch.setattr(main_window, "key_bindings", bindings)
    window = MainWindow(
        demo_document, qsettings, autosave_folder=tmp_path / "a", auto_detect_engine=False
    )
    qtbot.addWidget(window)  # type: ignore[attr-defined]
    window.show()
    doc = window.document
    _activate(window, qtbot)
    before = doc.plan
    doc.assign_cells(expert_cells(doc.layout, 20, 21), "CUDA0")
    after = doc.plan
    QTest.keyClick(window.tensor_view, Qt.Key.Key_Z, CTRL)
    assert doc.plan == before
    QTest.keyClick(window.tensor_view, Qt.Key.Key_Z, CTRL | SHIFT)
    assert doc.plan == after
    QTest.keyClick(window.tensor_view, Qt.Key.Key_Z, CTRL)
    assert doc.plan == before
    QTest.keyClick(window.tensor_view, Qt.Key.Key_Y, CTRL)
    assert doc.plan == after
    texts = [k.toString() for k in window.redo_action.shortcuts()]
    assert len(texts) == len(set(texts)), texts


def test_focus_does_not_land_in_a_settings_field_after_an_import(
    window: MainWindow, qtbot: object
) -> None:
    _activate(window, qtbot)
    window.tabs.setCurrentIndex(1)  # Settings visible, as when the user saw it happen

    def fill_and_accept() -> None:
        dialog = QApplication.activeModalWidget()
        assert isinstance(dialog, QDialog)
        dialog.findChild(QPlainTextEdit).setPlainText(  # type: ignore[union-attr]
            "llama-server -m x.gguf -ngl 999 -ot exps=CPU -c 4096"
        )
        dialog.accept()

    # Last touched: the Engine combo (as after a wheel gave it focus on today's main).
    window.settings_panel.dialect.setFocus()
    QTimer.singleShot(0, fill_and_accept)
    QTest.keyClick(window.settings_panel.dialect, Qt.Key.Key_I, CTRL)
    qtbot.waitUntil(lambda: window.document.settings.ctx == 4096)  # type: ignore[attr-defined]
    QApplication.processEvents()
    # What takes the keys once the window is active again (offscreen has no window manager).
    focus = window.focusWidget()
    assert focus is window.tensor_view
    assert not window.settings_panel.isAncestorOf(focus)
    dialect = window.document.settings.dialect
    QTest.keyClick(focus, Qt.Key.Key_M)
    assert window.document.settings.dialect == dialect


def _wheel(widget: object, delta: int = -120) -> None:
    pos = QPointF(widget.rect().center())  # type: ignore[attr-defined]
    global_pos = QPointF(widget.mapToGlobal(pos.toPoint()))  # type: ignore[attr-defined]
    event = QWheelEvent(
        pos,
        global_pos,
        QPoint(0, 0),
        QPoint(0, delta),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(widget, event)  # type: ignore[arg-type]


def test_the_wheel_scrolls_the_settings_instead_of_editing_them(
    window: MainWindow, qtbot: object
) -> None:
    _activate(window, qtbot)
    window.tabs.setCurrentIndex(1)
    panel = window.settings_panel
    scroll = window.tabs.currentWidget()
    bar = scroll.verticalScrollBar()  # type: ignore[attr-defined]
    assert bar.maximum() > 0
    steps = window.document.undo_stack.count()
    settings = window.document.settings
    for field in (panel.mla, panel.ctx, panel.cache_k, panel.amb, panel.threads):
        bar.setValue(0)
        _wheel(field)
        _wheel(field)
        assert window.document.settings == settings, field
        assert window.document.undo_stack.count() == steps
    assert bar.value() > 0  # the page scrolled instead
    # A focused field still takes the wheel.
    panel.mla.setFocus()
    qtbot.waitUntil(panel.mla.hasFocus)  # type: ignore[attr-defined]
    _wheel(panel.mla)
    assert window.document.settings != settings
    assert isinstance(panel.mla, QComboBox)
