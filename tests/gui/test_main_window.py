"""The main window: start-up demo, budgets follow every change, preview = core command, errors,
settings, import, screenshots."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QPointF, QSettings, Qt
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QApplication, QMessageBox

from moe_studio.core.gguf.tensors import TensorGroup
from moe_studio.core.plan.cmdline import build_command
from moe_studio.core.plan.placement import cell_device, expert_cells
from moe_studio.core.units import GiB
from moe_studio.gui.app import _parser, build_window, demo_document
from moe_studio.gui.main_window import MainWindow

from .conftest import drag_enter_event, drag_move_event, rig_of, save_screenshot

G = TensorGroup


def _assert_bars_equal_estimate(window: MainWindow) -> None:
    _, estimate = window.document.estimate()
    drawn = window.budget.bar_heights()
    for d in estimate.devices:
        for segment in ("weights", "kv", "compute", "overhead"):
            assert drawn[d.name][segment] == pytest.approx(getattr(d, segment), rel=1e-9, abs=1.0)
    assert sorted(window.budget.overflowing()) == sorted(
        d.name for d in estimate.devices if not d.fits
    )


def test_start_up_shows_the_auto_placed_demo(
    qtbot: object, qsettings: QSettings, tmp_path: Path
) -> None:
    window = build_window(_parser().parse_args([]), qsettings)
    qtbot.addWidget(window)  # type: ignore[attr-defined]
    window.show()
    doc = window.document
    assert doc.layout.source == "catalog:deepseek-v3@IQ2_KS"
    assert doc.rig.gpus[0].memory_total == 24 * 10**9 or doc.rig.gpus[0].memory_total == 24 * GiB
    assert doc.rig.host.ram_total >= 250 * 10**9
    assert window.tensor_model.rowCount() == 62
    assert cell_device(doc.layout, doc.plan, (10, G.ATTENTION)) == "CUDA0"
    _, est = doc.estimate()
    assert est.fits
    assert window.command_view.command_text().startswith("llama-server -m deepseek-v3-IQ2_KS")
    _assert_bars_equal_estimate(window)
    save_screenshot(window, "01-demo-start.png", tmp_path)


def test_budget_bars_follow_every_change_and_undo(window: MainWindow, tmp_path: Path) -> None:
    doc = window.document
    _assert_bars_equal_estimate(window)
    first = doc.plan
    # Move 10 expert layers to CUDA0: over budget, drawn as overflow.
    doc.assign_cells(expert_cells(doc.layout, 20, 29), "CUDA0")
    _assert_bars_equal_estimate(window)
    _, est = doc.estimate()
    assert not est.device("CUDA0").fits  # type: ignore[union-attr]
    assert "CUDA0" in window.budget.overflowing()
    QApplication.processEvents()
    save_screenshot(window, "02-ten-expert-layers-on-cuda0-over-budget.png", tmp_path)
    doc.undo_stack.undo()
    assert doc.plan == first
    _assert_bars_equal_estimate(window)
    doc.undo_stack.redo()
    _assert_bars_equal_estimate(window)


def test_ten_expert_layers_on_a_bigger_gpu(
    qtbot: object, qsettings: QSettings, tmp_path: Path
) -> None:
    doc = demo_document()
    doc.set_rig(rig_of(96, ram=256))
    window = MainWindow(doc, qsettings)
    qtbot.addWidget(window)  # type: ignore[attr-defined]
    window.resize(1280, 800)
    window.show()
    doc.assign_cells(expert_cells(doc.layout, 10, 19), "CUDA0")
    _assert_bars_equal_estimate(window)
    assert doc.estimate()[1].device("CUDA0").fits  # type: ignore[union-attr]
    QApplication.processEvents()
    save_screenshot(window, "03-ten-expert-layers-on-cuda0.png", tmp_path)


def test_preview_equals_the_core_command_builder(window: MainWindow, qtbot: object) -> None:
    doc = window.document

    def core_command() -> str:
        return build_command(
            doc.layout, doc.plan, doc.rig, doc.settings, executable=doc.executable
        ).shell()

    assert window.command_view.command_text() == core_command()
    doc.assign_cells(expert_cells(doc.layout, 4, 6), "CUDA0")
    qtbot.waitUntil(lambda: window.command_view.command_text() == core_command())  # type: ignore[attr-defined]
    window.settings_panel.ctx.setValue(16384)
    assert doc.settings.ctx == 16384
    qtbot.waitUntil(lambda: "-c 16384" in window.command_view.command_text())  # type: ignore[attr-defined]
    assert window.command_view.command_text() == core_command()
    window.command_view.dialect.setCurrentIndex(1)  # mainline
    assert doc.settings.dialect == "mainline"
    qtbot.waitUntil(lambda: "-fit off" in window.command_view.command_text())  # type: ignore[attr-defined]
    assert window.command_view.command_text() == core_command()
    doc.undo_stack.undo()
    assert doc.settings.dialect == "ik"


def test_settings_changes_feed_the_estimate(window: MainWindow) -> None:
    doc = window.document
    kv_before = doc.estimate()[1].device("CUDA0").kv  # type: ignore[union-attr]
    window.settings_panel.ctx.setValue(doc.settings.ctx * 2)
    kv_after = doc.estimate()[1].device("CUDA0").kv  # type: ignore[union-attr]
    assert kv_after > kv_before * 1.9
    _assert_bars_equal_estimate(window)
    window.settings_panel.cache_k.setCurrentText("f16")
    window.settings_panel.cache_v.setCurrentText("f16")
    assert doc.settings.cache_type_k == "f16"


def test_drop_cells_on_a_budget_bar(window: MainWindow) -> None:
    doc = window.document
    model = window.tensor_model
    column = model.columns.index(G.EXPS_DOWN)
    mime = model.mimeData([model.index(1 + 40, column)])  # experts down, layer 40 (on the CPU)
    plot = window.budget
    pos = None
    for x in range(0, plot.viewport().width(), 4):
        for y in range(0, plot.viewport().height(), 8):
            if plot.device_at(QPointF(x, y)) == "CUDA0":
                pos = QPointF(x, y)
                break
        if pos:
            break
    assert pos is not None
    enter = drag_enter_event(pos, mime)
    QApplication.sendEvent(plot.viewport(), enter)  # a scroll area gets drops on its viewport
    assert enter.isAccepted()
    move = drag_move_event(pos, mime)
    QApplication.sendEvent(plot.viewport(), move)  # Qt delivers a drop only after an accepted move
    assert move.isAccepted()
    drop = QDropEvent(
        pos,
        Qt.DropAction.MoveAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(plot.viewport(), drop)
    assert cell_device(doc.layout, doc.plan, (40, G.EXPS_DOWN)) == "CUDA0"


def test_opening_a_corrupt_file_shows_one_error_and_keeps_the_model(
    window: MainWindow, qtbot: object, tmp_path: Path
) -> None:
    bad = tmp_path / "broken-00001-of-00002.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 12)
    before_layout, before_plan = window.document.layout, window.document.plan
    window.open_path(str(bad))
    qtbot.waitUntil(lambda: getattr(window, "last_error_dialog", None) is not None, timeout=10000)  # type: ignore[attr-defined]
    dialog = window.last_error_dialog
    assert isinstance(dialog, QMessageBox)
    assert "broken-00001-of-00002.gguf" in dialog.text()
    assert "Traceback" not in dialog.text()
    assert window.document.layout is before_layout and window.document.plan == before_plan
    dialog.close()


def test_opening_a_real_file_off_the_gui_thread(
    window: MainWindow, qtbot: object, tiny_qwen3moe: Path
) -> None:
    window.open_path(str(tiny_qwen3moe))
    qtbot.waitUntil(lambda: window.document.layout.source == str(tiny_qwen3moe), timeout=10000)  # type: ignore[attr-defined]
    assert window.tensor_model.rowCount() == window.document.layout.n_layer + 1
    assert window.recent()[0] == str(tiny_qwen3moe)
    assert window.document.undo_stack.count() == 0


def test_import_command_pins_what_it_decides(window: MainWindow) -> None:
    doc = window.document
    assert window.import_command_text(
        r'llama-server -m x.gguf -ngl 999 -ot "blk\.(3|4|5)\.ffn_.*_exps=CUDA0" '
        "-ot exps=CPU -c 8192 -ub 2048"
    )
    assert cell_device(doc.layout, doc.plan, (4, G.EXPS_UP)) == "CUDA0"
    assert cell_device(doc.layout, doc.plan, (6, G.EXPS_UP)) == "CPU"
    assert doc.plan.pinned == frozenset(doc.layout.cells)
    assert doc.settings.ctx == 8192 and doc.settings.ubatch == 2048
    assert not window.import_command_text(
        "llama-server -c 4096"
    )  # no -m: an error dialog, no change
    assert "no -m" in window.last_error_dialog.text()
    window.last_error_dialog.close()


def test_window_geometry_is_remembered(qtbot: object, qsettings: QSettings) -> None:
    doc = demo_document()
    first = MainWindow(doc, qsettings)
    qtbot.addWidget(first)  # type: ignore[attr-defined]
    first.resize(700, 500)
    first.show()
    remembered = first.size()
    first.close()
    second = MainWindow(demo_document(), qsettings)
    qtbot.addWidget(second)  # type: ignore[attr-defined]
    assert second.size() == remembered
    assert remembered != MainWindow(demo_document(), QSettings()).size()


def test_dark_palette_and_full_hd(window: MainWindow, tmp_path: Path) -> None:
    window.set_palette_mode("dark")
    window.resize(1920, 1080)
    QApplication.processEvents()
    save_screenshot(window, "04-dark-1920x1080.png", tmp_path)
    window.set_palette_mode("light")


def test_switching_to_mainline_turns_ik_options_off(window: MainWindow) -> None:
    doc = window.document
    panel = window.settings_panel
    panel.rtr.setChecked(True)
    panel.amb.setValue(512)
    assert doc.settings.rtr and doc.settings.amb == 512
    panel.dialect.setCurrentText("mainline")
    s = doc.settings
    assert s.dialect == "mainline" and not s.rtr and s.amb is None
    assert not panel.rtr.isChecked() and not panel.rtr.isEnabled()
    assert doc.result().command is not None  # the command can be built
    doc.undo_stack.undo()
    assert doc.settings.dialect == "ik" and doc.settings.rtr


def test_typing_a_batch_size_is_one_change(window: MainWindow, qtbot: object) -> None:
    from PySide6.QtTest import QTest

    doc = window.document
    steps = doc.undo_stack.count()
    combo = window.settings_panel.batch
    line = combo.lineEdit()
    assert line is not None
    line.selectAll()
    QTest.keyClicks(line, "3072")
    assert doc.undo_stack.count() == steps  # nothing yet while typing
    line.editingFinished.emit()
    assert doc.settings.batch == 3072 and doc.undo_stack.count() == steps + 1


def test_an_import_is_one_undo_step_and_bad_cache_types_are_refused(window: MainWindow) -> None:
    doc = window.document
    before_plan, before_settings = doc.plan, doc.settings
    assert window.import_command_text("llama-server -m x.gguf -ngl 999 -ot exps=CPU -c 4096")
    doc.undo_stack.undo()
    assert doc.plan == before_plan and doc.settings == before_settings
    assert not window.import_command_text("llama-server -m x.gguf -ctk bogus -fa on")
    assert "not a KV cache type" in window.last_error_dialog.text()  # type: ignore[union-attr]
    assert doc.settings == before_settings
    window.last_error_dialog.close()  # type: ignore[union-attr]


def test_graph_split_mode_shows_each_gpus_share(window: MainWindow, tmp_path: Path) -> None:
    doc = window.document
    doc.set_rig(rig_of(24, 24))
    doc.replace_plan(doc.opening_plan(), "Place on both GPUs")
    n = doc.layout.n_layer
    doc.assign_cells([(il, G.ATTENTION) for il in range(n // 2, n)], "CUDA1")
    doc.set_settings(doc.settings.with_(split_mode_graph=True))
    window.show()
    window.command_view.refresh()
    _assert_bars_equal_estimate(window)
    _, est = doc.estimate()
    kv = [d.kv for d in est.devices if d.name.startswith("CUDA")]
    assert kv[0] == kv[1] > 0  # DeepSeek's MLA cache is replicated on both GPUs
    assert " -sm graph " in window.command_view.command_text()
    assert "not measured on CUDA" in window.command_view.advice.text()
    save_screenshot(window, "graph-split-mode.png", tmp_path)
