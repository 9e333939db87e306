"""The main window: palette and tensor map on the left, budgets and command/settings on the
right."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QActionGroup, QCloseEvent, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from moe_studio import resources
from moe_studio.core.errors import MoeStudioError
from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.model import ModelLayout, open_model
from moe_studio.core.gguf.reader import IsCancelled, Progress
from moe_studio.core.hardware.devices import Rig
from moe_studio.core.hardware.rigs import list_presets, load_preset, load_rig_file
from moe_studio.core.plan.autoplace import AutoPlacement
from moe_studio.core.plan.cmdline import import_command, parse_command
from moe_studio.core.plan.placement import initial_plan
from moe_studio.core.plan.planning import Planner
from moe_studio.core.plan.settings import Settings
from moe_studio.core.profiles.library import ProfileLibrary
from moe_studio.core.remote.urls import is_remote
from moe_studio.core.units import format_bytes, format_params
from moe_studio.gui import theme
from moe_studio.gui.budget.budget_plot import BudgetPlot
from moe_studio.gui.budget.engine_check import EngineCheck
from moe_studio.gui.command_view import CommandView
from moe_studio.gui.dialogs import ImportCommandDialog, MachineDialog, RpcDialog
from moe_studio.gui.document import Document
from moe_studio.gui.fit_area import fit_area
from moe_studio.gui.keys import undo_falls_through
from moe_studio.gui.legend import LegendDialog
from moe_studio.gui.messages import show_error
from moe_studio.gui.palette import DevicePalette
from moe_studio.gui.process.process_panel import ProcessPanel
from moe_studio.gui.profile_controller import ProfileController
from moe_studio.gui.settings_panel import SettingsPanel
from moe_studio.gui.tasks import Background, TaskRunner, Work
from moe_studio.gui.tensor_map.model import TensorMapModel
from moe_studio.gui.tensor_map.view import TensorMapView

if TYPE_CHECKING:
    from moe_studio.gui.hub_dialog import HubDialog
    from moe_studio.gui.tune import TuneDialog

log = logging.getLogger(__name__)
MAX_RECENT = 10
# Ctrl+Y is the other redo key users know (KDE and GNOME bind only Ctrl+Shift+Z to Redo).
EXTRA_REDO_KEYS = ("Ctrl+Y",)
Opened = tuple[ModelLayout, Settings, AutoPlacement]
SPLITTER_STYLE = (
    "QSplitter::handle { background: palette(mid); margin: 1px; border-radius: 2px; }"
    "QSplitter::handle:hover { background: palette(highlight); }"
)


def key_bindings(key: QKeySequence.StandardKey) -> list[QKeySequence]:
    """The platform's bindings for a standard key (a seam: tests pass another platform's)."""
    return list(QKeySequence.keyBindings(key))


def shortcuts(key: QKeySequence.StandardKey, *extra: str) -> list[QKeySequence]:
    """The platform's bindings for ``key`` plus ``extra``, each once: a sequence bound twice is
    an "Ambiguous shortcut overload" that Qt then ignores."""
    result: list[QKeySequence] = []
    for sequence in [*key_bindings(key), *(QKeySequence(e) for e in extra)]:
        if not sequence.isEmpty() and sequence not in result:
            result.append(sequence)
    return result


def _label_recipes(menu: QMenu, key: str) -> None:
    """Name each quantization recipe with its size: "IQ2_KS — 2.66 bits/weight, 208.4 GiB"."""
    for action in menu.actions():
        recipe = action.text().split(" — ", 1)[0]
        if " — " in action.text():
            continue
        layout = catalog.load_catalog(f"{key}@{recipe}")
        bits = layout.total_bytes * 8 / max(1, layout.total_params)
        action.setText(f"{recipe} — {bits:.2f} bits/weight, {format_bytes(layout.total_bytes)}")


def prepare_plan(
    layout: ModelLayout, rig: Rig, settings: Settings
) -> tuple[Settings, AutoPlacement]:
    """Advisor-chosen -b/-ub, then auto-placement: what a newly opened model starts with."""
    planner = Planner(layout, rig, settings)
    tuned = planner.advise_batch(initial_plan(layout))
    planner.update(settings=tuned)
    return tuned, planner.auto_place(initial_plan(layout))


class MainWindow(QMainWindow):
    def __init__(
        self,
        document: Document,
        qsettings: QSettings | None = None,
        *,
        profile_library: ProfileLibrary | None = None,
        autosave_folder: Path | None = None,
        auto_detect_engine: bool = True,
    ) -> None:
        super().__init__()
        self.document = document
        self.qsettings = qsettings or QSettings()
        self.tasks = TaskRunner(self)
        self.last_error_dialog: QMessageBox | None = None
        self.legend_dialog: LegendDialog | None = None
        self.tune_dialog: TuneDialog | None = None
        self.hub_dialog: HubDialog | None = None
        self._task_error_title = "Cannot open the model"
        # Short jobs that must not cancel an opening model (hardware detection).
        self.background = Background(self)
        self.setWindowIcon(QIcon(str(resources.path("icons/moe-studio.svg"))))
        self.tensor_model = TensorMapModel(document)
        self.tensor_view = TensorMapView(document, self.tensor_model)
        self.device_palette = DevicePalette(document)
        self.budget = BudgetPlot(document)
        self.command_view = CommandView(document)
        self.profiles = ProfileController(
            self,
            document,
            self.command_view,
            self.run_task,
            self.qsettings,
            library=profile_library,
            autosave_folder=autosave_folder,
        )
        self.profiles.failed.connect(self._show_error)
        self.settings_panel = SettingsPanel(document)
        self.process_panel = ProcessPanel(document, auto_detect=auto_detect_engine, bench_tab=False)
        self.engine_check = EngineCheck(
            document,
            self.budget,
            self.tasks,
            lambda: self.process_panel.engine_info,
            blocker=self._check_blocker,
        )
        # A finished run has added its calibration record (the panel's own slot runs first).
        self.process_panel.server.finished.connect(self._on_server_finished)
        # What one engine measured is not another's: the marks go, the learning is redone.
        self.process_panel.engine_changed.connect(self.engine_check.forget)
        self._build_layout()
        self._build_menus()
        # Ctrl+Z in a field with nothing typed to take back undoes the last change.
        self._undo_fallthrough = undo_falls_through(
            self,
            self.findChildren(QLineEdit)
            + self.findChildren(QAbstractSpinBox)
            + [c for c in self.findChildren(QComboBox) if c.isEditable()],
        )
        self._build_status()
        self.device_palette.brush_changed.connect(self._on_palette_brush_changed)
        self.tensor_view.auto_place_requested.connect(self.auto_place)
        document.dirty_changed.connect(self.setWindowModified)
        document.model_changed.connect(self._update_title)
        document.profile_changed.connect(self._update_title)
        document.plan_changed.connect(self._update_status)
        document.rig_changed.connect(self._update_status)
        document.settings_changed.connect(self._update_status)
        self.tasks.progressed.connect(self._on_tasks_progressed)
        self.tasks.failed.connect(self._on_tasks_failed)
        self.tasks.running_changed.connect(self._on_tasks_running_changed)
        self._update_title()
        self._update_status()
        self.resize(1280, 800)
        geometry = self.qsettings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)

    # --- construction --------------------------------------------------------------------------

    def _build_layout(self) -> None:
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(6, 6, 0, 6)
        left_layout.addWidget(self.device_palette)
        left_layout.addWidget(self.tensor_view, 1)
        hint = QLabel(
            "Pick a device above and click or drag across cells to paint them; or select cells "
            "and drag them onto a device or its bar. Keys: digits = CUDA n, C = CPU, P = pin."
        )
        hint.setWordWrap(True)
        hint.setStyleSheet("color: palette(placeholder-text); font-size: 11px;")
        left_layout.addWidget(hint)

        tabs = QTabWidget()
        tabs.addTab(self.command_view, "Command")
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.settings_panel)
        tabs.addTab(scroll, "Settings")
        # A scroll area keeps Settings usable at 1280×800. Server and Benchmarks fit there with
        # no scroll bar (their plots and logs share the room in tabs and splitters); they scroll
        # only in a smaller window.
        self.server_tab = fit_area(self.process_panel)
        tabs.addTab(self.server_tab, "Server")
        self.bench_tab = fit_area(self.process_panel.bench)
        tabs.addTab(self.bench_tab, "Benchmarks")
        self.tabs = tabs

        right = QSplitter(Qt.Orientation.Vertical)
        budget_panel = QWidget()
        budget_layout = QVBoxLayout(budget_panel)
        budget_layout.setContentsMargins(0, 0, 0, 0)
        budget_layout.addWidget(self.budget, 1)
        budget_layout.addWidget(self.engine_check)
        right.addWidget(budget_panel)
        right.addWidget(tabs)
        right.setStretchFactor(0, 2)
        right.setStretchFactor(1, 3)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 11)
        split.setStretchFactor(1, 9)
        split.setSizes([700, 580])
        # Handles a user can see and grab (the default style draws them invisible).
        for splitter in (split, right):
            splitter.setHandleWidth(6)
            splitter.setStyleSheet(SPLITTER_STYLE)
        self.splitter = split
        self.right_splitter = right
        self.setCentralWidget(split)

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file = bar.addMenu("&File")
        open_action = file.addAction("&Open model…", self.open_model_dialog)
        open_action.setShortcut(QKeySequence.StandardKey.Open)
        file.addAction("Open from &Hugging Face…", self.open_hub_dialog)
        builtin = file.addMenu("Open &built-in model")
        for key, entry in catalog.CATALOG.items():
            sub = builtin.addMenu(entry.title)
            for recipe in entry.recipes:
                sub.addAction(recipe, partial(self.open_catalog, f"{key}@{recipe}"))
            # Sizes are worked out when the menu first opens (not at start-up).
            sub.aboutToShow.connect(partial(_label_recipes, sub, key))
        self.recent_menu = file.addMenu("Open &recent")
        self._fill_recent()
        file.addSeparator()
        self.profiles.add_actions(file)
        file.addSeparator()
        file.addAction("&Import command…", self.import_command_dialog).setShortcut("Ctrl+I")
        file.addSeparator()
        quit_action = file.addAction("&Quit", self.close)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)

        edit = bar.addMenu("&Edit")
        undo = self.document.undo_stack.createUndoAction(self, "&Undo")
        undo.setShortcuts(shortcuts(QKeySequence.StandardKey.Undo))
        redo = self.document.undo_stack.createRedoAction(self, "&Redo")
        redo.setShortcuts(shortcuts(QKeySequence.StandardKey.Redo, *EXTRA_REDO_KEYS))
        edit.addAction(undo)
        edit.addAction(redo)
        edit.addSeparator()
        edit.addAction("&Auto-place the rest", self.auto_place).setShortcut("Ctrl+Shift+A")
        edit.addAction("&Reset all", self.document.reset_all).setToolTip(
            "Back to the layout the model opened with (pins included)"
        )
        edit.addAction("Select &all", self.tensor_view.selectAll).setShortcut(
            QKeySequence.StandardKey.SelectAll
        )
        self.undo_action, self.redo_action = undo, redo

        view = bar.addMenu("&View")
        rows = view.addMenu("Rows")
        # Exclusive, checkable groups: the menu shows which choice is in force (radio marks).
        row_group = QActionGroup(self)
        for size in (1, 2, 4, 8):
            label = "One row per layer" if size == 1 else f"{size} layers per row"
            action = rows.addAction(label, partial(self.tensor_model.set_group_size, size))
            action.setCheckable(True)
            action.setChecked(size == 1)
            row_group.addAction(action)
        look = view.addMenu("Palette")
        look_group = QActionGroup(self)
        current = str(self.qsettings.value("view/palette", "system"))
        for mode in ("system", "light", "dark"):
            action = look.addAction(mode.capitalize(), partial(self.set_palette_mode, mode))
            action.setCheckable(True)
            action.setChecked(mode == current)
            look_group.addAction(action)

        hardware = bar.addMenu("&Hardware")
        hardware.addAction("&Detected hardware", self.detect_hardware)
        presets = hardware.addMenu("&Presets")
        for name in list_presets():
            presets.addAction(name, partial(self.use_preset, name))
        hardware.addAction("Open rig &file…", self.open_rig_file)
        hardware.addAction("Plan for &another machine…", self.plan_for_another_machine)
        hardware.addAction("Add &RPC device…", self.add_rpc_device)

        tools = bar.addMenu("&Tools")
        tools.addAction("&Tune…", self.show_tune).setToolTip(
            "Measure -ub/-b, threads and expert layers per GPU and apply the fastest"
        )

        help_menu = bar.addMenu("&Help")
        help_menu.addAction("&Legend", self.show_legend)
        help_menu.addAction("&About MoE Studio", self._about)

    def _build_status(self) -> None:
        status = self.statusBar()
        self.status_label = QLabel()
        status.addWidget(self.status_label, 1)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setRange(0, 1000)
        self.progress.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.hide()
        self.cancel_button.clicked.connect(self.tasks.cancel)
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.progress)
        row.addWidget(self.cancel_button)
        status.addPermanentWidget(box)

    # --- model ---------------------------------------------------------------------------------

    def open_model_dialog(self) -> None:
        start = str(self.qsettings.value("paths/models", str(Path.home())))
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a GGUF model (any shard)", start, "GGUF models (*.gguf);;All files (*)"
        )
        if path:
            self.qsettings.setValue("paths/models", str(Path(path).parent))
            self.open_path(path)

    def open_path(self, path: str) -> None:
        """Open a model file off the GUI thread; errors leave the current model open."""
        # The download of a remote model being planned keeps the plan: ask once it is read.
        ask_later = is_remote(self.document.layout.source)
        if not ask_later and not self.profiles.confirm_discard():
            return
        rig = self.document.rig
        settings = self.document.settings

        def work(
            progress: Progress, cancelled: IsCancelled
        ) -> tuple[ModelLayout, object, AutoPlacement]:
            if is_remote(path):  # headers only, over HTTP (cached after the first time)
                from moe_studio.core.remote.model import open_remote_model

                layout = open_remote_model(path, progress=progress, cancelled=cancelled)
            else:
                layout = open_model(path, progress=progress, cancelled=cancelled)
            tuned, placed = prepare_plan(layout, rig, settings)
            return layout, tuned, placed

        self.run_task(
            work,
            f"Opening {Path(path).name}",
            lambda result: self._on_model_opened(result, path, ask=ask_later),
        )

    def open_hub_dialog(self) -> None:
        """Compare a Hugging Face repository's quants; the chosen one opens here."""
        from moe_studio.gui.hub_dialog import HubDialog

        doc = self.document
        if self.hub_dialog is None:  # one dialog, reused: each holds a task runner
            self.hub_dialog = HubDialog(doc.rig, doc.settings, self)
            self.hub_dialog.open_requested.connect(self.open_path)
        else:
            self.hub_dialog.set_target(doc.rig, doc.settings)
        self.hub_dialog.open()

    def open_catalog(self, spec: str) -> None:
        if not self.profiles.confirm_discard():
            return
        rig = self.document.rig
        settings = self.document.settings

        def work(
            progress: Progress, cancelled: IsCancelled
        ) -> tuple[ModelLayout, object, AutoPlacement]:
            layout = catalog.load_catalog(spec)
            tuned, placed = prepare_plan(layout, rig, settings)
            return layout, tuned, placed

        self.run_task(work, f"Opening {spec}", lambda result: self._on_model_opened(result, None))

    def run_task(
        self,
        work: Work,
        text: str,
        done: Callable[[Any], None],
        error_title: str = "Cannot open the model",
    ) -> None:
        """Run ``work`` in the background (cancelling the previous task); ``done`` on success,
        an error dialog titled ``error_title`` on failure."""
        self.status_label.setText(text + "…")
        self._task_error_title = error_title
        self.tasks.start(work, done)

    def _on_model_opened(self, result: Opened, path: str | None, *, ask: bool = False) -> None:
        layout, settings, placed = result
        if path and self.profiles.binds_to(layout):
            self.statusBar().showMessage(self.profiles.bind(layout), 15000)
            self._add_recent(path)
            return
        if ask and not self.profiles.confirm_discard():
            return
        self.document.set_model(layout, placed.plan, settings)
        self.document.set_profile(None, None)
        self.command_view.extra_notes = list(placed.notes) + [
            f"would help: {s}" for s in placed.suggestions
        ]
        self.command_view.refresh()
        for warning in layout.warnings:
            log.warning("%s", warning)
        if path:
            self._add_recent(path)
        self._update_status()

    def _show_error(self, title: str, error: object) -> None:
        assert isinstance(error, BaseException)
        self.last_error_dialog = show_error(self, title, error)

    def _on_tasks_failed(self, error: object) -> None:
        self._update_status()
        assert isinstance(error, BaseException)
        self.last_error_dialog = show_error(self, self._task_error_title, error)

    def _on_server_finished(self, info: object) -> None:
        self.engine_check.relearn()

    def _on_tasks_progressed(self, fraction: float, text: str) -> None:
        self.progress.setValue(int(fraction * 1000))
        self.progress.setFormat(text)

    def _on_tasks_running_changed(self, running: bool) -> None:
        self.progress.setVisible(running)
        self.cancel_button.setVisible(running)
        if not running:
            self._update_status()

    # --- recent files --------------------------------------------------------------------------

    def recent(self) -> list[str]:
        value = self.qsettings.value("recent/models", [])
        if isinstance(value, str):
            return [value]
        return [str(v) for v in value] if isinstance(value, list) else []

    def _add_recent(self, path: str) -> None:
        items = [p for p in self.recent() if p != path]
        self.qsettings.setValue("recent/models", [path, *items][:MAX_RECENT])
        self._fill_recent()

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        items = self.recent()
        for path in items:
            self.recent_menu.addAction(path, partial(self.open_path, path))
        self.recent_menu.setEnabled(bool(items))

    # --- editing -------------------------------------------------------------------------------

    def auto_place(self) -> None:
        placed = self.document.auto_place()
        self.command_view.extra_notes = list(placed.notes) + [
            f"would help: {s}" for s in placed.suggestions
        ]
        self.command_view.refresh()

    def import_command_dialog(self) -> None:
        dialog = ImportCommandDialog(self)
        accepted = dialog.exec()
        # Keys typed next belong to the grid, never to a settings field that Qt picked when the
        # dialog closed (typing "m" there switched the engine to mainline).
        self.tensor_view.setFocus(Qt.FocusReason.OtherFocusReason)
        if accepted:
            self.import_command_text(dialog.command())

    def import_command_text(self, text: str) -> bool:
        try:
            # Read it for the planned build when it is that engine's command (the build number
            # counts in one engine's history).
            settings = self.document.settings
            same = parse_command(text).settings.dialect == settings.dialect
            plan, imported, rig = import_command(
                text,
                self.document.layout,
                self.document.rig,
                engine_build=settings.engine_build if same else None,
            )
        except MoeStudioError as exc:
            self.last_error_dialog = show_error(self, "Cannot import the command", exc)
            return False
        self.document.replace_plan_and_settings(plan, imported.settings, "Import command", rig)
        self.command_view.extra_notes = list(imported.notes)
        self.command_view.refresh()
        return True

    # --- hardware ------------------------------------------------------------------------------

    def detect_hardware(self) -> None:
        from moe_studio.core.hardware.detect import detect_rig

        self.statusBar().showMessage("Detecting hardware…", 5000)
        self.background.call(detect_rig, self._on_rig_ready, self._on_detect_failed)

    def _on_detect_failed(self, error: BaseException) -> None:
        self.last_error_dialog = show_error(self, "Cannot detect the hardware", error)

    def _on_rig_ready(self, rig: object) -> None:
        assert isinstance(rig, Rig)
        self.change_rig(rig, "Use detected hardware")

    def change_rig(self, rig: Rig, text: str) -> None:
        """Switch hardware as one undoable step that re-plans; the notes and advice shown are
        about the new rig only."""
        placed = self.document.change_rig(rig, text)
        self.command_view.extra_notes = (
            list(rig.notes) + list(placed.notes) + [f"would help: {s}" for s in placed.suggestions]
        )
        self.command_view.refresh()
        self._update_status()

    def use_preset(self, name: str) -> None:
        try:
            self.change_rig(load_preset(name), f"Use the {name} preset")
        except MoeStudioError as exc:
            self.last_error_dialog = show_error(self, "Cannot use the preset", exc)

    def open_rig_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a rig file", str(Path.home()), "Rig files (*.toml);;All files (*)"
        )
        if not path:
            return
        try:
            self.change_rig(load_rig_file(path), f"Use rig file {Path(path).name}")
        except MoeStudioError as exc:
            self.last_error_dialog = show_error(self, "Cannot use the rig file", exc)

    def plan_for_another_machine(self) -> None:
        dialog = MachineDialog(self.document.rig, self)
        if dialog.exec() and dialog.result_rig is not None:
            self.change_rig(dialog.result_rig, "Plan for another machine")

    def add_rpc_device(self) -> None:
        dialog = RpcDialog(self.document.rig, self)
        if dialog.exec() and dialog.result_rig is not None:
            self.change_rig(dialog.result_rig, "Add an RPC device")

    # --- look ----------------------------------------------------------------------------------

    def set_palette_mode(self, mode: str) -> None:
        app = QApplication.instance()
        if isinstance(app, QApplication):
            theme.apply_palette(app, mode)
            self.qsettings.setValue("view/palette", mode)
            self.budget.refresh()

    def _update_title(self) -> None:
        self.setWindowTitle(f"{self.profiles.title()} — MoE Studio[*]")
        self.setWindowModified(self.document.is_dirty)

    def _update_status(self, *args: object) -> None:
        layout = self.document.layout
        rig = self.document.rig
        _, estimate = self.document.estimate()
        gpus = (
            ", ".join(f"{d.name} {format_bytes(d.memory_total, precision=0)}" for d in rig.devices)
            or "no GPU"
        )
        fits = "fits" if estimate.fits else "does NOT fit"
        problem = self.document.planner.engine_problem()
        self.status_label.setText(
            f"{layout.name}: {format_params(layout.total_params)} params, "
            f"{format_bytes(layout.total_bytes)} · {rig.name}: {gpus}, "
            f"{format_bytes(rig.host.ram_total, precision=0)} RAM · {fits}"
            + (f" · ⚠ {problem.partition(':')[0]} (see Command)" if problem else "")
        )
        self.status_label.setToolTip(problem)

    def show_legend(self) -> None:
        """What every colour and mark means (non-modal, beside the window)."""
        if self.legend_dialog is None:
            self.legend_dialog = LegendDialog(self.document, self)
        self.legend_dialog.show()
        self.legend_dialog.activateWindow()

    def show_tune(self) -> None:
        """The Tune dialog (non-modal; its run goes on while the window is used)."""
        if self.tune_dialog is None:
            from moe_studio.gui.tune import TuneDialog

            self.tune_dialog = TuneDialog(
                self.document,
                lambda: self.process_panel.engine_info,
                self,
                blocker=self._tune_blocker,
            )
            tune = self.tune_dialog
            self.process_panel.tune_running = lambda: tune.running
            tune.tasks.running_changed.connect(self.process_panel.others_changed)
            # Undo and Redo work while the dialog is the active window ("Apply best" says
            # Undo takes it back; the user is still in the dialog when reading that).
            self.tune_dialog.addActions([self.undo_action, self.redo_action])
        self.tune_dialog.show()
        self.tune_dialog.activateWindow()

    def _check_blocker(self) -> str:
        """Why "Check with engine" cannot run now: ik's --dry-run allocates every buffer, so a
        server, benchmark or Tune on the same devices would make it measure their memory too."""
        if self.process_panel.server.running:
            return (
                "The server is running: stop it first (Server tab); the check allocates the "
                "plan's buffers on the same devices."
            )
        if self.process_panel.bench.is_running or self.process_panel.tune_running():
            return "A benchmark or Tune is running: let it finish (or stop it) first."
        return ""

    def _tune_blocker(self) -> str:
        """Why Tune cannot start now: the server or a benchmark holds the devices."""
        panel = self.process_panel
        if panel.server.running:
            return (
                "The server is running: stop it first (Server tab). Tune loads the model on the "
                "same devices; its figures would be wrong, or it would run out of memory."
            )
        if panel.bench.is_running:
            return "A benchmark is running (Benchmarks): cancel it or let it finish first."
        return ""

    def _about(self) -> None:
        from moe_studio.core import __version__

        QMessageBox.about(
            self,
            "About MoE Studio",
            f"MoE Studio {__version__}\n\nPlan, launch and monitor Mixture-of-Experts models "
            "on ik_llama.cpp and llama.cpp.",
        )

    def _on_palette_brush_changed(self, device: str) -> None:
        self.tensor_view.set_brush(device or None)

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self.profiles.confirm_discard():
            event.ignore()
            return
        self.profiles.discard_own_autosave()
        self.process_panel.shutdown()
        if self.tune_dialog is not None:
            self.tune_dialog.shutdown()
        self.tasks.cancel()
        self.background.wait(3000)
        self.qsettings.setValue("window/geometry", self.saveGeometry())
        super().closeEvent(event)
