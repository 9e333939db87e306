"""Profiles in the window: save/open round trip, dirty marker, unsaved prompt, autosave and
recovery, exports, the library browser."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QFileDialog, QMessageBox

from moe_studio.core.plan.placement import expert_cells
from moe_studio.core.profiles.library import ProfileLibrary
from moe_studio.core.profiles.schema import load_profile, save_profile
from moe_studio.gui.app import demo_document
from moe_studio.gui.main_window import MainWindow
from moe_studio.gui.profile_browser import ProfileBrowser, ProfileListModel


def _save_as(window: MainWindow, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(path), ""))
    assert window.profiles.save_as()


def test_save_open_round_trip_and_dirty_marker(
    window: MainWindow, qtbot: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = window.document
    doc.assign_cells(expert_cells(doc.layout, 3, 5), "CUDA0")
    assert window.isWindowModified()
    path = tmp_path / "my-deepseek.json"
    _save_as(window, path, monkeypatch)
    assert path.exists() and not window.isWindowModified()
    assert window.windowTitle().startswith("my-deepseek")
    saved_plan, saved_settings = doc.plan, doc.settings
    doc.assign_cells(expert_cells(doc.layout, 6, 6), "CUDA0")
    assert window.isWindowModified()
    doc.undo_stack.undo()
    assert not window.isWindowModified()  # back at the saved state
    # Reopen into a fresh window: the plan (pins included) and settings come back exactly.
    other = MainWindow(
        demo_document(),
        QSettings(str(tmp_path / "o.ini"), QSettings.Format.IniFormat),
        profile_library=ProfileLibrary(tmp_path / "lib2"),
        autosave_folder=tmp_path / "a2",
    )
    qtbot.addWidget(other)  # type: ignore[attr-defined]
    other.profiles.open_profile(str(path))
    qtbot.waitUntil(lambda: other.document.profile_path == str(path), timeout=10000)  # type: ignore[attr-defined]
    assert other.document.plan == saved_plan
    assert other.document.settings == saved_settings
    assert not other.isWindowModified()


def test_closing_with_unsaved_changes_asks_first(window: MainWindow, tmp_path: Path) -> None:
    doc = window.document
    doc.assign_cells(expert_cells(doc.layout, 3, 3), "CUDA0")
    answers: list[str] = []
    window.profiles.ask_unsaved = lambda what: answers.append(what) or "cancel"  # type: ignore[func-returns-value]
    assert not window.close()
    assert window.isVisible() and answers
    window.profiles.ask_unsaved = lambda what: "discard"
    assert window.close()


def test_autosave_and_recovery_at_next_start(
    window: MainWindow, qtbot: object, tmp_path: Path, library: ProfileLibrary
) -> None:
    doc = window.document
    doc.assign_cells(expert_cells(doc.layout, 7, 9), "CUDA0")
    written = window.profiles.autosave_now()
    assert written is not None and written.exists()
    lost_plan = doc.plan
    # The app "crashes": a new window with the same folders finds the work and restores it.
    fresh = MainWindow(
        demo_document(),
        QSettings(str(tmp_path / "n.ini"), QSettings.Format.IniFormat),
        profile_library=library,
        autosave_folder=tmp_path / "autosave",
    )
    qtbot.addWidget(fresh)  # type: ignore[attr-defined]
    offered: list[str] = []
    fresh.profiles.ask_recovery = lambda text: offered.append(text) or True  # type: ignore[func-returns-value]
    assert fresh.profiles.offer_recovery()
    qtbot.waitUntil(lambda: fresh.document.plan == lost_plan, timeout=10000)  # type: ignore[attr-defined]
    assert offered and fresh.isWindowModified()
    fresh.profiles.ask_unsaved = lambda what: "discard"
    fresh.close()
    assert not written.exists()  # discarded on purpose: not offered again


def test_a_changed_model_file_is_refused_and_nothing_changes(
    window: MainWindow,
    qtbot: object,
    tmp_path: Path,
    tiny_qwen3moe: Path,
    tiny_deepseek2: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    window.open_path(str(tiny_qwen3moe))
    qtbot.waitUntil(lambda: window.document.layout.source == str(tiny_qwen3moe), timeout=10000)  # type: ignore[attr-defined]
    path = tmp_path / "tiny.json"
    _save_as(window, path, monkeypatch)
    profile = load_profile(path)
    moved = tmp_path / "moved.gguf"
    moved.write_bytes(
        tiny_deepseek2.read_bytes()
    )  # "the same file", re-quantized into another model
    save_profile(path, replace(profile, model=replace(profile.model, source=str(moved))))
    before = path.read_bytes()
    layout_before, plan_before = window.document.layout, window.document.plan
    window.profiles.open_profile(str(path))
    qtbot.waitUntil(lambda: window.last_error_dialog is not None, timeout=10000)  # type: ignore[attr-defined]
    assert "not the one this profile was made for" in window.last_error_dialog.text()  # type: ignore[union-attr]
    assert window.document.layout is layout_before and window.document.plan == plan_before
    assert path.read_bytes() == before


def test_exports_from_the_menu(window: MainWindow, tmp_path: Path) -> None:
    sh = tmp_path / "run.sh"
    window.profiles.export_to("sh", str(sh))
    text = sh.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert "exec" in text and "-ngl 999" in text
    config = tmp_path / "llama-swap.yaml"
    config.write_text(
        yaml.safe_dump({"models": {"other": {"cmd": "llama-server -m o.gguf --port ${PORT}"}}})
    )
    window.profiles.export_to("llama-swap", str(config))
    merged = yaml.safe_load(config.read_text())
    assert "other" in merged["models"] and len(merged["models"]) == 2
    ours = next(v for k, v in merged["models"].items() if k != "other")
    assert (
        "${PORT}" in ours["cmd"]
        and shlex.split(ours["cmd"].replace("${PORT}", "1"))[0] == "llama-server"
    )


def test_profile_library_lists_saved_profiles(
    window: MainWindow,
    qtmodeltester: object,
    library: ProfileLibrary,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    library.folder.mkdir(parents=True, exist_ok=True)
    _save_as(window, library.path_for("demo one"), monkeypatch)
    (library.folder / "broken.json").write_text("{ not json")
    model = ProfileListModel(library.entries())
    qtmodeltester.check(model)  # type: ignore[attr-defined]
    rows = [model.index(r, 0).data() for r in range(model.rowCount())]
    assert "demo-one" in rows and "broken.json" in rows
    fits = [model.index(r, 5).data() for r in range(model.rowCount())]
    assert "yes" in fits
    browser = ProfileBrowser(library, window)
    assert browser.model.rowCount() == 2
    browser.close()


def test_error_dialog_is_message_first_details_folded(window: MainWindow, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "moe-studio-profile", "schema": 99}')
    window.profiles.open_profile(str(bad))
    dialog = window.last_error_dialog
    assert isinstance(dialog, QMessageBox)
    assert "format 99" in dialog.text() or "newer" in dialog.text() or "99" in dialog.text()
    assert bad.read_text() == '{"format": "moe-studio-profile", "schema": 99}'
    dialog.close()
