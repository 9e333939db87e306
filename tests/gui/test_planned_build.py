"""The window plans for the engine the Server tab runs: its build sets Settings.engine_build.

An old ik build (the stand-in printing ``version: 3737 (58f08e43)``) gets a command it accepts
(a bare ``-fa``, ``-fmoe``) and the line "Planned for ik_llama.cpp build 3737"; Undo of an earlier
settings change keeps the engine's build; the newest build comes back with the next engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_studio.gui.main_window import MainWindow
from moe_studio.gui.settings_panel import planned_for
from tests.support.standin_tools import install_standin, isolate_engine_env

from .conftest import save_screenshot

OLD = "version: 3737 (58f08e43)\nbuilt with cc (Debian 12.2.0-14+deb12u1) 12.2.0 for x86_64"


def _use_engine(qtbot: object, window: MainWindow, path: Path) -> None:
    panel = window.process_panel
    with qtbot.waitSignal(panel.engine_changed, timeout=30000):  # type: ignore[attr-defined]
        panel.use_engine_path(str(path))


def test_the_window_plans_for_the_servers_engine(
    qtbot: object, window: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate_engine_env(monkeypatch, tmp_path, STANDIN_VERSION=OLD)
    old_engine = install_standin(tmp_path / "old", "ik")
    document = window.document
    label = window.settings_panel.planned_build
    assert document.settings.engine_build is None
    assert label.text() == "Planned for the newest ik_llama.cpp build"
    argv = document.result().command.argv  # type: ignore[union-attr]
    assert argv[argv.index("-fa") + 1] == "on" and "-fmoe" not in argv

    document.set_settings(document.settings.with_(ctx=4096))  # an undo step before the engine
    _use_engine(qtbot, window, old_engine)
    assert document.settings.engine_build == 3737
    assert label.text() == "Planned for ik_llama.cpp build 3737"
    assert window.settings_panel.mla.itemText(0) == "default (0)"  # -mla 3 came with 3983
    assert window.settings_panel.flash.text() == "Flash attention (-fa)"
    argv = document.result().command.argv  # type: ignore[union-attr]
    assert "-fa" in argv and "on" not in argv and "-fmoe" in argv
    # Undo takes back the context, not the engine: the plan stays for build 3737.
    document.undo_stack.undo()
    assert document.settings.ctx != 4096 and document.settings.engine_build == 3737
    window.tabs.setCurrentIndex(
        window.tabs.indexOf(window.settings_panel.parentWidget().parentWidget())
    )
    window.tabs.currentWidget().ensureWidgetVisible(label)  # type: ignore[attr-defined]
    qtbot.waitUntil(label.isVisible)  # type: ignore[attr-defined]
    save_screenshot(window, "planned-build-3737.png", tmp_path)

    monkeypatch.delenv("STANDIN_VERSION")  # the stand-in prints the newest build's line again
    _use_engine(qtbot, window, install_standin(tmp_path / "new", "ik"))
    assert document.settings.engine_build == 4840
    assert label.text() == planned_for(document.settings) == "Planned for ik_llama.cpp build 4840"
    # A build number counts in its own engine's history: mainline settings plan for its newest.
    mainline = document.settings.for_dialect("mainline")
    document.set_settings(mainline)
    assert document.settings.engine_build is None
    assert label.text() == "Planned for the newest llama.cpp build"
    argv = document.result().command.argv  # type: ignore[union-attr]
    assert argv[argv.index("-fa") + 1] == "on" and "-fmoe" not in argv
