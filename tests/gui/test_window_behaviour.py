"""Issue 11: the window behaves as a user expects. Each test drives the real window the way a
user does (key sequences through the real shortcuts, wheel events, menu actions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, QPointF, QSettings, Qt, QTimer
from PySide6.QtGui import QColor, QKeySequence, QWheelEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QComboBox, QDialog, QPlainTextEdit

from moe_studio.core.gguf.tensors import TensorGroup
from moe_studio.core.hardware.devices import CPU_NAME, HostInfo, Rig
from moe_studio.core.plan.placement import cell_device, device_bytes, expert_cells
from moe_studio.core.units import GiB
from moe_studio.gui import main_window, theme
from moe_studio.gui.app import _parser, build_window
from moe_studio.gui.document import Document
from moe_studio.gui.main_window import MainWindow

from .conftest import save_screenshot

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
    engine = window.command_view.dialect
    engine.setFocus()
    QTimer.singleShot(0, fill_and_accept)
    QTest.keyClick(engine, Qt.Key.Key_I, CTRL)
    qtbot.waitUntil(lambda: window.document.settings.ctx == 4096)  # type: ignore[attr-defined]
    QApplication.processEvents()
    # What takes the keys once the window is active again (offscreen has no window manager).
    focus = window.focusWidget()
    assert focus is window.tensor_view
    assert not window.settings_panel.isAncestorOf(focus)
    assert focus is not engine
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
    # The Engine combo above the command preview ignores the wheel too until focused.
    window.tabs.setCurrentIndex(0)
    engine = window.command_view.dialect
    _wheel(engine)
    assert window.document.settings == settings
    assert engine.focusPolicy() == Qt.FocusPolicy.StrongFocus
    window.tabs.setCurrentIndex(1)
    # A focused field still takes the wheel.
    panel.mla.setFocus()
    qtbot.waitUntil(panel.mla.hasFocus)  # type: ignore[attr-defined]
    _wheel(panel.mla)
    assert window.document.settings != settings
    assert isinstance(panel.mla, QComboBox)


def _used(window: MainWindow) -> set[str]:
    return {d for d, n in device_bytes(window.document.layout, window.document.plan).items() if n}


def _assert_no_stale_state(window: MainWindow) -> None:
    doc = window.document
    names = {d.name for d in doc.rig.devices} | {CPU_NAME}
    assert _used(window) <= names
    QApplication.processEvents()  # the command preview refreshes on a zero timer
    window.command_view.refresh()
    assert "does not have" not in window.command_view.command_text()
    _, est = doc.estimate()
    assert ("· fits" in window.status_label.text()) == est.fits
    advice = window.command_view.advice.text()
    if doc.rig.devices:
        assert "has no GPU" not in advice


def test_changing_hardware_replans_as_one_undoable_step(
    window: MainWindow, qtbot: object, tmp_path: Path
) -> None:
    doc = window.document
    _activate(window, qtbot)
    pinned = (10, G.ATTENTION)
    doc.pin_cells([pinned], True)
    assert cell_device(doc.layout, doc.plan, pinned) == "CUDA0"
    doc.mark_clean()
    start_rig, start_plan = doc.rig, doc.plan
    save_screenshot(window, "11-hardware-before.png", tmp_path)

    _menu_action(window, "Hardware", "Presets", "4x3090-tr-512g").trigger()  # type: ignore[attr-defined]
    assert len(doc.rig.gpus) == 4
    assert {"CUDA0", "CUDA1", "CUDA2", "CUDA3"} <= _used(window)  # new GPUs filled at once
    assert cell_device(doc.layout, doc.plan, pinned) == "CUDA0"
    assert pinned in doc.plan.pinned  # a pin whose device remains stays
    assert doc.is_dirty and window.isWindowModified()
    _assert_no_stale_state(window)
    save_screenshot(window, "11-hardware-after-4x3090.png", tmp_path)

    _menu_action(window, "Hardware", "Presets", "cpu-128g").trigger()  # type: ignore[attr-defined]
    assert _used(window) == {CPU_NAME}
    assert pinned not in doc.plan.pinned  # its device vanished
    _assert_no_stale_state(window)
    assert "has no GPU" in window.command_view.advice.text()

    _menu_action(window, "Hardware", "Presets", "2x3090-256g").trigger()  # type: ignore[attr-defined]
    assert {"CUDA0", "CUDA1"} <= _used(window)
    _assert_no_stale_state(window)

    for _ in range(3):
        QTest.keyClick(window.tensor_view, Qt.Key.Key_Z, CTRL)
    assert doc.rig == start_rig and doc.plan == start_plan
    assert not doc.is_dirty
    _assert_no_stale_state(window)


def test_detected_hardware_replans(
    window: MainWindow, qtbot: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moe_studio.core.hardware import detect

    no_gpu = Rig("detected", HostInfo(64 * GiB, cores_physical=8), (), source="test")
    monkeypatch.setattr(detect, "detect_rig", lambda: no_gpu)
    doc = window.document
    before = doc.plan
    _menu_action(window, "Hardware", "Detected hardware").trigger()  # type: ignore[attr-defined]
    qtbot.waitUntil(lambda: doc.rig == no_gpu)  # type: ignore[attr-defined]
    assert _used(window) == {CPU_NAME}
    _assert_no_stale_state(window)
    assert doc.is_dirty
    doc.undo_stack.undo()
    assert doc.plan == before and doc.rig.gpus


def test_undo_of_an_import_removes_the_devices_it_created(
    window: MainWindow, qtbot: object
) -> None:
    doc = window.document
    _activate(window, qtbot)
    start_rig, start_plan = doc.rig, doc.plan
    assert window.import_command_text(
        'llama-server -m m.gguf -ngl 99 -ot "blk\\.(3|4)\\.ffn_.*=CUDA3"'
    )
    assert any(d.name == "CUDA3" for d in doc.rig.devices)
    QTest.keyClick(window.tensor_view, Qt.Key.Key_Z, CTRL)
    assert doc.rig == start_rig
    assert doc.plan == start_plan
    assert not any(d.name == "CUDA3" for d in doc.rig.devices)
    QTest.keyClick(window.tensor_view, Qt.Key.Key_Y, CTRL)
    assert any(d.name == "CUDA3" for d in doc.rig.devices)


def test_reset_all_returns_to_the_opening_layout(window: MainWindow, qtbot: object) -> None:
    doc = window.document
    _activate(window, qtbot)
    opened = doc.plan
    doc.assign_cells(expert_cells(doc.layout, 20, 29), "CUDA0")
    doc.pin_cells([(10, G.ATTENTION)], True)
    _menu_action(window, "Edit", "Reset all").trigger()  # type: ignore[attr-defined]
    assert doc.plan == opened
    assert cell_device(doc.layout, doc.plan, (10, G.ATTENTION)) == "CUDA0"  # not all on CPU
    QTest.keyClick(window.tensor_view, Qt.Key.Key_Z, CTRL)
    assert doc.plan != opened  # one undo step
    # After a switch to a rig without CUDA0, the opening layout is auto-placed for this rig.
    _menu_action(window, "Hardware", "Presets", "2x3090-256g").trigger()  # type: ignore[attr-defined]
    _menu_action(window, "Edit", "Reset all").trigger()  # type: ignore[attr-defined]
    assert {"CUDA0", "CUDA1"} <= _used(window)
    assert not doc.plan.pinned


def _distance(a: QColor, b: QColor) -> float:
    """CIELAB ΔE (CIE76) between two sRGB colours."""

    def lab(c: QColor) -> tuple[float, float, float]:
        lin = [
            v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4
            for v in (c.redF(), c.greenF(), c.blueF())
        ]
        r, g, bl = lin
        x = (0.4124 * r + 0.3576 * g + 0.1805 * bl) / 0.95047
        y = 0.2126 * r + 0.7152 * g + 0.0722 * bl
        z = (0.0193 * r + 0.1192 * g + 0.9505 * bl) / 1.08883

        def f(t: float) -> float:
            return float(t ** (1 / 3)) if t > 0.008856 else 7.787 * t + 16 / 116

        return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))

    return float(sum((p - q) ** 2 for p, q in zip(lab(a), lab(b), strict=True)) ** 0.5)


def test_device_colours_never_reuse_a_budget_colour(window: MainWindow) -> None:
    _menu_action(window, "Hardware", "Presets", "4x3090-tr-512g").trigger()  # type: ignore[attr-defined]
    order = [f"CUDA{i}" for i in range(8)]
    devices = [theme.device_color(n, order) for n in [*order, CPU_NAME]]
    marks = [*theme.SEGMENT_COLORS.values(), theme.OVER_COLOR]
    for d in devices:
        for m in marks:
            assert _distance(d, m) >= 20, (d.name(), m.name())
    # The palette buttons show the same colours as the grid.
    for name in ("CUDA0", "CUDA3", CPU_NAME):
        assert name in window.device_palette.buttons


def test_help_legend_explains_every_mark(window: MainWindow, qtbot: object, tmp_path: Path) -> None:
    _menu_action(window, "Hardware", "Presets", "2x3090-256g").trigger()  # type: ignore[attr-defined]
    _menu_action(window, "Help", "Legend").trigger()  # type: ignore[attr-defined]
    dialog = window.legend_dialog
    assert dialog is not None
    qtbot.waitExposed(dialog)  # type: ignore[attr-defined]
    text = "\n".join(dialog.texts)
    for needle in (
        "CUDA0",
        "CUDA1",
        "CPU",
        "Pinned",
        "Split cell",
        "Not loaded",
        "Weights",
        "KV cache",
        "Compute buffer",
        "overhead",
        "Over budget",
        "Dashed line",
        "Solid line",
    ):
        assert needle in text, needle
    save_screenshot(dialog, "11-legend.png", tmp_path)
    _menu_action(window, "Hardware", "Presets", "4x3090-tr-512g").trigger()  # type: ignore[attr-defined]
    assert "CUDA3" in "\n".join(dialog.texts)


def test_start_up_with_another_rig_is_placed_for_it(qtbot: object, qsettings: QSettings) -> None:
    window = build_window(_parser().parse_args(["--rig", "2x3090-256g"]), qsettings)
    qtbot.addWidget(window)  # type: ignore[attr-defined]
    assert {"CUDA0", "CUDA1"} <= _used(window)
    _assert_no_stale_state(window)
    assert not window.document.is_dirty


def test_auto_place_with_pins_that_cannot_fit_says_what_to_unpin(
    window: MainWindow, qtbot: object
) -> None:
    doc = window.document
    _activate(window, qtbot)
    doc.assign_cells(expert_cells(doc.layout, 20, 29), "CUDA0")  # pinned, 10 layers of experts
    QTest.keyClick(window.tensor_view, Qt.Key.Key_A, CTRL | SHIFT)  # Auto-place the rest
    qtbot.waitUntil(  # type: ignore[attr-defined]
        lambda: "cannot hold what is pinned" in window.command_view.advice.text()
    )
    assert "Unpin layer" in window.command_view.advice.text()
