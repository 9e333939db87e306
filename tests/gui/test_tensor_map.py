"""The tensor map: model contract, painting with the mouse, drag and drop, keyboard, undo."""

from __future__ import annotations

from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt
from PySide6.QtGui import QDropEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from moe_studio.core.gguf.tensors import GLOBAL_LAYER, TensorGroup
from moe_studio.core.hardware.devices import CPU_NAME
from moe_studio.core.plan.placement import as_mapping, cell_device
from moe_studio.gui.document import Document
from moe_studio.gui.palette import DevicePalette
from moe_studio.gui.tensor_map.model import (
    CELLS_MIME,
    CELLS_ROLE,
    DEVICE_ROLE,
    LOADED_ROLE,
    PINNED_ROLE,
    TensorMapModel,
)
from moe_studio.gui.tensor_map.view import TensorMapView

from .conftest import drag_enter_event

G = TensorGroup


def _view(qtbot: object, document: Document) -> TensorMapView:
    model = TensorMapModel(document)
    view = TensorMapView(document, model)
    qtbot.addWidget(view)  # type: ignore[attr-defined]
    view.resize(900, 1200)
    view.show()
    return view


def test_model_passes_qtmodeltester_filled_and_after_changes(
    qtmodeltester: object, document: Document
) -> None:
    model = TensorMapModel(document)
    qtmodeltester.check(model)  # type: ignore[attr-defined]
    document.assign_cells([(5, G.EXPS_UP), (6, G.ATTENTION)], "CUDA0")
    qtmodeltester.check(model)  # type: ignore[attr-defined]
    model.set_group_size(4)
    qtmodeltester.check(model)  # type: ignore[attr-defined]
    model.collapse([1, 2])
    model.expand(1)
    qtmodeltester.check(model)  # type: ignore[attr-defined]


def test_rows_columns_and_roles(document: Document) -> None:
    model = TensorMapModel(document)
    layout = document.layout
    assert model.rowCount() == layout.n_layer + 1  # the globals row first
    assert model.headerData(0, Qt.Orientation.Vertical) == "Globals"
    assert [model.headerData(c, Qt.Orientation.Horizontal) for c in range(model.columnCount())] == [
        "Attn",
        "Router",
        "Exp gate",
        "Exp up",
        "Exp down",
    ]
    index = model.index(1 + 7, 3)  # layer 7, experts up
    assert index.data(CELLS_ROLE) == ((7, G.EXPS_UP),)
    assert index.data(DEVICE_ROLE) == CPU_NAME and index.data(PINNED_ROLE) is False
    assert "blk.7.ffn_up_exps.weight" in index.data(Qt.ItemDataRole.ToolTipRole)
    assert "IQ4_KS" in index.data(Qt.ItemDataRole.ToolTipRole) or "Q4_K" in index.data(
        Qt.ItemDataRole.ToolTipRole
    )
    globals_row = [model.index(0, c).data(CELLS_ROLE) for c in range(3)]
    assert globals_row == [
        ((GLOBAL_LAYER, G.TOKEN_EMBD),),
        ((GLOBAL_LAYER, G.OUTPUT_NORM),),
        ((GLOBAL_LAYER, G.OUTPUT),),
    ]
    assert not model.flags(model.index(0, 4)) & Qt.ItemFlag.ItemIsSelectable  # no such global cell


def test_glm_mtp_rows_are_greyed_and_not_selectable(document: Document) -> None:
    from moe_studio.core.gguf import catalog

    document.set_model(catalog.load_catalog("glm-4.6"))
    model = TensorMapModel(document)
    row = model.row_of_layer(92)
    index = model.index(row, 0)
    assert index.data(LOADED_ROLE) is False
    assert not model.flags(index) & Qt.ItemFlag.ItemIsSelectable


def test_a_paint_stroke_changes_exactly_the_cells_crossed_and_is_one_undo_step(
    qtbot: object, document: Document
) -> None:
    view = _view(qtbot, document)
    before = document.plan
    view.set_brush("CUDA0")
    column = 3  # experts up
    rows = [1 + layer for layer in range(10, 16)]
    QTest.mousePress(
        view.viewport(),
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
        view.cell_center(rows[0], column),
    )
    for row in rows[1:]:  # one mouseMove is one event: pass through every cell
        QTest.mouseMove(view.viewport(), view.cell_center(row, column))
    QTest.mouseRelease(
        view.viewport(),
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
        view.cell_center(rows[-1], column),
    )
    layout = document.layout
    changed = {
        t.name
        for t, a, b in zip(layout.tensors, before.devices, document.plan.devices, strict=True)
        if a != b
    }
    assert changed == {f"blk.{layer}.ffn_up_exps.weight" for layer in range(10, 16)}
    assert document.undo_stack.count() == 1
    assert {(layer, G.EXPS_UP) for layer in range(10, 16)} <= document.plan.pinned
    document.undo_stack.undo()
    assert document.plan == before  # byte for byte, pins included
    document.undo_stack.redo()
    assert all(
        cell_device(layout, document.plan, (layer, G.EXPS_UP)) == "CUDA0" for layer in range(10, 16)
    )
    # A second stroke is a second undo step.
    QTest.mouseClick(
        view.viewport(),
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
        view.cell_center(1 + 20, 4),
    )
    assert document.undo_stack.count() == 2


def test_drop_on_a_cell_through_the_models_mime_data(document: Document) -> None:
    model = TensorMapModel(document)
    document.assign_cells([(0, G.ATTENTION)], "CUDA0")
    sources = [model.index(1 + layer, 3) for layer in (4, 5)]
    mime = model.mimeData(sources)
    assert mime.hasFormat(CELLS_MIME)
    target = model.index(1 + 0, 0)  # a CUDA0 cell
    assert model.canDropMimeData(mime, Qt.DropAction.MoveAction, -1, -1, target)
    assert model.dropMimeData(mime, Qt.DropAction.MoveAction, -1, -1, target)
    assert cell_device(document.layout, document.plan, (4, G.EXPS_UP)) == "CUDA0"
    assert cell_device(document.layout, document.plan, (5, G.EXPS_UP)) == "CUDA0"
    assert cell_device(document.layout, document.plan, (6, G.EXPS_UP)) == CPU_NAME


def _drop(widget: object, pos: QPoint, mime: QMimeData) -> tuple[bool, bool]:
    enter = drag_enter_event(QPointF(pos), mime)
    QApplication.sendEvent(widget, enter)  # type: ignore[arg-type]
    drop = QDropEvent(
        QPointF(pos),
        Qt.DropAction.MoveAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(widget, drop)  # type: ignore[arg-type]
    return enter.isAccepted(), drop.isAccepted()


def test_synthetic_drag_and_drop_on_the_viewport(qtbot: object, document: Document) -> None:
    view = _view(qtbot, document)
    document.assign_cells([(1, G.ATTENTION)], "CUDA0")
    mime = view.tensor_model.mimeData([view.tensor_model.index(1 + 30, 4)])
    entered, dropped = _drop(view.viewport(), view.cell_center(1 + 1, 0), mime)
    assert entered and dropped
    assert cell_device(document.layout, document.plan, (30, G.EXPS_DOWN)) == "CUDA0"


def test_drop_on_a_palette_device(qtbot: object, document: Document) -> None:
    palette = DevicePalette(document)
    qtbot.addWidget(palette)  # type: ignore[attr-defined]
    palette.show()
    model = TensorMapModel(document)
    mime = model.mimeData([model.index(1 + 12, 2), model.index(1 + 12, 3)])
    button = palette.buttons["CUDA0"]
    entered, dropped = _drop(button, button.rect().center(), mime)
    assert entered and dropped
    assert cell_device(document.layout, document.plan, (12, G.EXPS_GATE)) == "CUDA0"
    assert cell_device(document.layout, document.plan, (12, G.EXPS_UP)) == "CUDA0"


def test_keyboard_digits_c_and_p(qtbot: object, document: Document) -> None:
    view = _view(qtbot, document)
    view.setFocus()
    index = view.tensor_model.index(1 + 9, 4)
    view.selectionModel().select(index, view.selectionModel().SelectionFlag.ClearAndSelect)
    QTest.keyClick(view, Qt.Key.Key_0)
    assert cell_device(document.layout, document.plan, (9, G.EXPS_DOWN)) == "CUDA0"
    QTest.keyClick(view, Qt.Key.Key_C)
    assert cell_device(document.layout, document.plan, (9, G.EXPS_DOWN)) == CPU_NAME
    QTest.keyClick(view, Qt.Key.Key_P)
    assert (9, G.EXPS_DOWN) not in document.plan.pinned  # moving pinned it; P toggles it off
    QTest.keyClick(view, Qt.Key.Key_7)  # no CUDA7 on this rig: nothing happens
    assert cell_device(document.layout, document.plan, (9, G.EXPS_DOWN)) == CPU_NAME


def test_context_menu_offers_moves_pins_auto_place_and_reset(
    qtbot: object, document: Document
) -> None:
    view = _view(qtbot, document)
    view.selectionModel().select(
        view.tensor_model.index(1 + 3, 0), view.selectionModel().SelectionFlag.ClearAndSelect
    )
    menu = view.build_menu()
    titles = [a.text() for a in menu.actions()]
    assert {
        "Move to",
        "Pin",
        "Unpin",
        "Auto-place the rest",
        "Reset selected cells",
        "Reset all",
    } <= set(titles)
    move = next(a for a in menu.actions() if a.text() == "Move to").menu()
    next(a for a in move.actions() if a.text() == "CUDA0").trigger()
    assert cell_device(document.layout, document.plan, (3, G.ATTENTION)) == "CUDA0"
    next(a for a in menu.actions() if a.text() == "Reset all").trigger()
    assert set(as_mapping(document.layout, document.plan).values()) == {CPU_NAME}
    assert not document.plan.pinned
