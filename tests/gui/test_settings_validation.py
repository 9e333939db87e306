"""Numbers typed in the Settings panel go through core's LIMITS (issue 12): a refused value says
why next to the fields and never reaches the plan or the undo stack."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QAbstractSpinBox, QComboBox, QLineEdit

from moe_studio.gui.document import Document
from moe_studio.gui.settings_panel import SettingsPanel


def _type(widget: QLineEdit, text: str) -> None:
    widget.setFocus()
    widget.selectAll()
    QTest.keyClicks(widget, text)
    QTest.keyClick(widget, Qt.Key.Key_Return)


@pytest.fixture
def panel(qtbot: object, document: Document) -> SettingsPanel:
    widget = SettingsPanel(document)
    qtbot.addWidget(widget)  # type: ignore[attr-defined]
    widget.show()
    return widget


def _line(field: QAbstractSpinBox | QComboBox) -> QLineEdit:
    line = field.lineEdit()
    assert line is not None
    return line


@pytest.mark.parametrize(
    ("field", "text", "reason"),
    [
        ("port", "70000", "--port 70000 is out of range: the engine accepts 1..65535"),
        ("port", "0", "--port 0 is out of range"),
        ("parallel", "5000", "--parallel 5000 is out of range: the engine accepts 1..4096"),
        ("threads", "99999", "--threads 99999 is out of range"),
        ("ctx", "-1", "--ctx -1 is out of range"),
        ("batch", "0", "--batch 0 is out of range"),
        ("ubatch", "lots", "--ubatch 'lots': a whole number is needed"),
    ],
)
def test_a_bad_number_shows_the_reason_and_changes_nothing(
    panel: SettingsPanel, document: Document, field: str, text: str, reason: str
) -> None:
    before = document.settings
    steps = document.undo_stack.count()
    widget = getattr(panel, field)
    _type(_line(widget), text)
    assert panel.error.isVisible()
    assert reason in panel.error.text()
    assert document.settings == before
    assert document.undo_stack.count() == steps
    assert panel.invalid_field is widget
    # The field shows the document's value again; a good value clears the message.
    good = {"port": "8081", "parallel": "2", "threads": "8", "ctx": "4096"}.get(field, "256")
    _type(_line(widget), good)
    assert not panel.error.isVisible()
    assert document.undo_stack.count() == steps + 1


def test_a_bad_host_or_key_is_refused_the_same_way(
    panel: SettingsPanel, document: Document
) -> None:
    steps = document.undo_stack.count()
    _type(panel.host, "my host")
    assert "--host" in panel.error.text()
    _type(panel.api_key, "a,b")
    assert "--api-key" in panel.error.text()
    assert document.undo_stack.count() == steps


def test_a_host_beyond_this_machine_warns_and_offers_a_key(
    panel: SettingsPanel, document: Document
) -> None:
    assert not panel.exposure.isVisible() and not panel.generate_key.isVisible()
    _type(panel.host, "0.0.0.0")
    assert panel.exposure.isVisible() and "No authentication" in panel.exposure.text()
    assert panel.generate_key.isVisible()
    QTest.mouseClick(panel.generate_key, Qt.MouseButton.LeftButton)
    key = document.settings.api_key
    assert len(key) == 32 and panel.api_key.text() == key
    assert not panel.exposure.isVisible()
