"""File → Open from Hugging Face…: the comparison table, progress, cancel, and opening a row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from moe_studio.core.plan.settings import Settings
from moe_studio.gui.hub_dialog import ROW_ROLE, HubDialog
from moe_studio.gui.main_window import MainWindow
from tests.gui.conftest import rig_of, save_screenshot
from tests.support.hf_server import HubServer
from tests.support.sparse import write_quant_repo

REPO = "org/DeepSeek-V3-GGUF"


@pytest.fixture(scope="module")
def quant_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_quant_repo(tmp_path_factory.mktemp("hub-files"))


@pytest.fixture
def hub(
    quant_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[HubServer]:
    with HubServer() as server:
        server.add_repo(REPO, quant_files)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no headers cached yet
        yield server


@pytest.fixture
def dialog(qtbot: object) -> Iterator[HubDialog]:
    box = HubDialog(rig_of(24, 24, ram=256), Settings(ctx=32768))
    qtbot.addWidget(box)  # type: ignore[attr-defined]
    box.show()
    yield box
    box.tasks.cancel()
    box.tasks.wait(10000)


def _compare(qtbot: object, dialog: HubDialog, repo: str = REPO) -> None:
    dialog.repo.setText(repo)
    with qtbot.waitSignal(dialog.tasks.running_changed, timeout=60000):  # type: ignore[attr-defined]
        dialog.compare_button.click()
    qtbot.waitUntil(lambda: not dialog.tasks.running, timeout=60000)  # type: ignore[attr-defined]


def test_comparison_table_of_four_quants(
    qtbot: object, qtmodeltester: object, hub: HubServer, dialog: HubDialog, tmp_path: Path
) -> None:
    seen: list[int] = []
    dialog.tasks.progressed.connect(lambda fraction, text: seen.append(int(fraction * 1000)))
    _compare(qtbot, dialog)
    model = dialog.model
    qtmodeltester.check(model)  # type: ignore[attr-defined]
    assert model.rowCount() == 4
    labels = [model.index(r, 0).data() for r in range(4)]
    assert labels == ["Q4_K_M", "IQ4_KS", "IQ2_KS", "IQ2_KT"]
    assert model.headerData(6, Qt.Orientation.Horizontal) == "Loads on ik_llama.cpp"
    q4 = model.index(0, 0).data(ROW_ROLE)
    assert q4.placement is not None and not q4.placement.fits  # 377 GiB > 48 GiB + 256 GiB
    assert model.index(0, 4).data() == "no"
    assert model.index(2, 4).data() == "yes"
    assert model.index(2, 5).data().endswith("%")
    assert seen and seen[-1] == 1000 and seen == sorted(seen)
    assert not dialog.progress.isVisible()
    # The largest quant that fits is selected and its download command shown.
    assert dialog.selected_row() is not None and dialog.selected_row().quant.label == "IQ2_KS"
    assert "hf download org/DeepSeek-V3-GGUF --include" in dialog.message.text()
    save_screenshot(dialog, "compare.png", tmp_path)


def test_choosing_a_row_asks_to_open_it(qtbot: object, hub: HubServer, dialog: HubDialog) -> None:
    _compare(qtbot, dialog)
    dialog.table.selectRow(2)
    with qtbot.waitSignal(dialog.open_requested) as blocker:  # type: ignore[attr-defined]
        dialog.open_button.click()
    assert blocker.args[0].startswith(f"hf://{REPO}/DeepSeek-V3-IQ2_KS-00001-of-0000")


def test_cancel_stops_the_comparison(qtbot: object, hub: HubServer, dialog: HubDialog) -> None:
    hub.behaviour.hang = "/resolve/"  # every header read waits until the test ends
    dialog.repo.setText(REPO)
    dialog.compare_button.click()
    assert dialog.cancel_button.isVisible()
    qtbot.waitUntil(lambda: bool(hub.file_requests()), timeout=30000)  # type: ignore[attr-defined]
    dialog.cancel_button.click()
    assert not dialog.tasks.running and not dialog.progress.isVisible()
    assert dialog.model.rowCount() == 0
    assert dialog.message.text().startswith("Cancelled")
    hub.release.set()
    dialog.tasks.wait(30000)
    assert dialog.model.rowCount() == 0  # the cancelled result never lands


def test_a_missing_repository_is_a_sentence(
    qtbot: object, hub: HubServer, dialog: HubDialog
) -> None:
    _compare(qtbot, dialog, "org/nothing-here")
    assert f"org/nothing-here was not found at {hub.url}/org/nothing-here" in dialog.message.text()
    assert dialog.model.rowCount() == 0


def test_main_window_opens_the_chosen_quant(
    qtbot: object, hub: HubServer, window: MainWindow
) -> None:
    actions = [a.text() for a in window.menuBar().actions()[0].menu().actions()]
    assert "Open from &Hugging Face…" in actions
    window.open_hub_dialog()
    dialog = window.hub_dialog
    _compare(qtbot, dialog)
    dialog.table.selectRow(3)
    url = dialog.selected_row().url  # type: ignore[union-attr]
    dialog.open_button.click()
    qtbot.waitUntil(lambda: window.document.layout.source == url, timeout=60000)  # type: ignore[attr-defined]
    assert window.document.layout.architecture == "deepseek2"
    assert window.tensor_model.rowCount() > 60
    # The command names the file the download writes; launching says the files are needed.
    argv = window.document.result().command.argv  # type: ignore[union-attr]
    assert argv[argv.index("-m") + 1].startswith("DeepSeek-V3-GGUF/IQ2_KT/DeepSeek-V3-IQ2_KT-0000")
    assert window.process_panel.launch() is False
    assert "needs the model on disk" in window.process_panel.last_error.text()
    # Reopened: the same dialog, for the window's rig and settings of now.
    window.document.set_settings(window.document.settings.with_(ctx=8192))
    window.open_hub_dialog()
    assert window.hub_dialog is dialog and dialog.model.rowCount() == 0
    assert "context 8192" in dialog.rig_label.text()
    dialog.reject()


def _open_remote(qtbot: object, window: MainWindow, url: str) -> None:
    window.open_path(url)
    qtbot.waitUntil(lambda: window.document.layout.source == url, timeout=60000)  # type: ignore[attr-defined]


def test_the_download_takes_the_remote_models_place_and_keeps_the_plan(
    qtbot: object, hub: HubServer, window: MainWindow, quant_files: dict[str, Path]
) -> None:
    first = next(p for p in sorted(quant_files) if p.startswith("IQ2_KT/"))
    url = f"hf://{REPO}/{first}"
    _open_remote(qtbot, window, url)
    doc = window.document
    doc.assign_cells([(3, doc.layout.columns[0])], "CUDA0")
    doc.pin_cells([(3, doc.layout.columns[0])], True)
    plan, settings = doc.plan, doc.settings
    local = str(quant_files[first])
    window.open_path(local)
    qtbot.waitUntil(lambda: doc.layout.source == local, timeout=60000)  # type: ignore[attr-defined]
    assert doc.plan == plan and doc.settings == settings
    assert (3, doc.layout.columns[0]) in doc.plan.pinned
    assert doc.is_dirty  # a saved profile would still name the URL
    profile = doc.to_profile()
    assert profile.model.source == local and profile.model.url == url
    assert "is the download of" in window.statusBar().currentMessage()


def test_another_local_model_replaces_the_plan(
    qtbot: object, hub: HubServer, window: MainWindow, quant_files: dict[str, Path]
) -> None:
    first = next(p for p in sorted(quant_files) if p.startswith("IQ2_KT/"))
    _open_remote(qtbot, window, f"hf://{REPO}/{first}")
    other = str(
        next(v for k, v in sorted(quant_files.items()) if k.startswith("DeepSeek-V3-IQ2_KS"))
    )
    window.open_path(other)
    qtbot.waitUntil(lambda: window.document.layout.source == other, timeout=60000)  # type: ignore[attr-defined]
    assert window.document.profile is None  # a new plan, not a binding


def test_a_profile_planned_remotely_reopens_from_the_cached_headers(
    qtbot: object, hub: HubServer, window: MainWindow, quant_files: dict[str, Path], tmp_path: Path
) -> None:
    first = next(p for p in sorted(quant_files) if p.startswith("IQ2_KT/"))
    url = f"hf://{REPO}/{first}"
    _open_remote(qtbot, window, url)
    path = str(tmp_path / "remote.json")
    assert window.profiles._save_to(path)
    window.document.set_model(window.document.layout)  # something else in between
    window.profiles.open_profile(path)
    qtbot.waitUntil(lambda: window.document.profile_path == path, timeout=60000)  # type: ignore[attr-defined]
    assert window.document.layout.source == url
    assert window.document.profile.model.url == url  # type: ignore[union-attr]
