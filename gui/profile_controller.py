"""Profiles in the window: New / Open / Save / Save As / Recent, the library, exports, autosave
and recovery, and the unsaved-changes prompt. Never loses work: saves are atomic with a backup,
unsaved work is autosaved every ``AUTOSAVE_MS`` and offered back at the next start."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QLockFile, QObject, QSettings, QTimer, Signal
from PySide6.QtWidgets import QFileDialog, QMainWindow, QMenu, QMessageBox, QWidget

from moe_studio.core.cli.export import FORMATS, launch_spec, render
from moe_studio.core.errors import MoeStudioError, ProfileError
from moe_studio.core.fsutil import atomic_write_bytes
from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.model import ModelLayout, open_model
from moe_studio.core.gguf.reader import IsCancelled, Progress
from moe_studio.core.profiles.exports import ExportFormat, encode_export
from moe_studio.core.profiles.library import (
    ProfileLibrary,
    Recovery,
    autosave,
    autosave_path,
    default_autosave_folder,
    discard_autosave,
    pending_recovery,
)
from moe_studio.core.profiles.plans import bind_model, planner_from_profile, require_model
from moe_studio.core.profiles.schema import PROFILE_SUFFIX, Profile, load_profile, save_profile
from moe_studio.core.remote.urls import is_remote
from moe_studio.gui.profile_browser import ProfileBrowser
from moe_studio.gui.tasks import Work

if TYPE_CHECKING:
    from moe_studio.gui.command_view import CommandView
    from moe_studio.gui.document import Document

log = logging.getLogger(__name__)
AUTOSAVE_MS = 30_000
# In the autosave folder: held by the running instance that offers recovery (QLockFile: a lock
# whose process died is taken over); a second instance autosaves into instance-<pid>/ instead.
INSTANCE_LOCK = "instance.lock"
INSTANCE_FOLDER_PREFIX = "instance-"
MAX_RECENT = 10
EXPORT_LABELS = {
    "sh": "Shell script (.sh)…",
    "bat": "Windows batch file (.bat)…",
    "ps1": "PowerShell script (.ps1)…",
    "llama-swap": "llama-swap config (.yaml, merges into an existing one)…",
    "router-ini": "llama-server router preset (.ini)…",
    "json": "Launch JSON…",
}
EXPORT_SUFFIX = {
    "sh": ".sh",
    "bat": ".bat",
    "ps1": ".ps1",
    "llama-swap": ".yaml",
    "router-ini": ".ini",
    "json": ".json",
}

# Runs work off the GUI thread: (work, status text, done callback, error title) — the main
# window's TaskRunner, which shows the error dialog itself.
RunTask = Callable[[Work, str, Callable[[Any], None], str], None]
# Asks the user what to do with unsaved changes: "save", "discard" or "cancel".
UnsavedPrompt = Callable[[str], str]
# Asks whether to restore autosaved work (its description) → True to restore.
RecoveryPrompt = Callable[[str], bool]


def _ask_unsaved(window: QWidget, what: str) -> str:
    box = QMessageBox(window)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Unsaved changes")
    box.setText(f"Save the changes to {what}?")
    box.setInformativeText("Your changes will be lost if you don't save them.")
    box.setStandardButtons(
        QMessageBox.StandardButton.Save
        | QMessageBox.StandardButton.Discard
        | QMessageBox.StandardButton.Cancel
    )
    answer = box.exec()
    return {
        QMessageBox.StandardButton.Save: "save",
        QMessageBox.StandardButton.Discard: "discard",
    }.get(QMessageBox.StandardButton(answer), "cancel")


def _ask_recovery(window: QWidget, description: str) -> bool:
    answer = QMessageBox.question(
        window,
        "Recover unsaved work",
        f"MoE Studio found unsaved work from a previous session:\n\n{description}\n\nRestore it?",
    )
    return answer == QMessageBox.StandardButton.Yes


class ProfileController(QObject):
    """Owned by the main window; talks to it only through what it is given (no import of it)."""

    # (title, exception): a profile could not be opened, saved, listed or exported.
    failed = Signal(str, object)

    def __init__(
        self,
        window: QMainWindow,
        document: Document,
        command_view: CommandView,
        run_task: RunTask,
        qsettings: QSettings,
        *,
        library: ProfileLibrary | None = None,
        autosave_folder: Path | None = None,
        ask_unsaved: UnsavedPrompt | None = None,
        ask_recovery: RecoveryPrompt | None = None,
    ) -> None:
        super().__init__(window)
        self.window = window
        self.document = document
        self.command_view = command_view
        self.run_task = run_task
        self.qsettings = qsettings
        self.library = library or ProfileLibrary()
        self.autosave_folder = autosave_folder or default_autosave_folder()
        self.ask_unsaved: UnsavedPrompt = ask_unsaved or partial(_ask_unsaved, window)
        self.ask_recovery: RecoveryPrompt = ask_recovery or partial(_ask_recovery, window)
        self.last_autosave: Path | None = None
        self._instance_lock: QLockFile | None = None
        self.timer = QTimer(self)
        self.timer.setInterval(AUTOSAVE_MS)
        self.timer.timeout.connect(self.autosave_now)
        self.timer.start()
        self.recent_menu: QMenu | None = None

    # --- menus ---------------------------------------------------------------------------------

    def add_actions(self, menu: QMenu) -> None:
        menu.addAction("&New profile", self.new_profile).setShortcut("Ctrl+N")
        menu.addAction("Open &profile…", self.open_profile_dialog).setShortcut("Ctrl+Shift+O")
        menu.addAction("Profile &library…", self.open_library)
        self.recent_menu = menu.addMenu("Recent p&rofiles")
        self._fill_recent()
        menu.addAction("&Save profile", self.save).setShortcut("Ctrl+S")
        menu.addAction("Save profile &as…", self.save_as).setShortcut("Ctrl+Shift+S")
        export = menu.addMenu("&Export")
        for key, label in EXPORT_LABELS.items():
            export.addAction(label, partial(self.export_dialog, key))

    # --- title ---------------------------------------------------------------------------------

    def title(self) -> str:
        doc = self.document
        if doc.profile_path:
            return Path(doc.profile_path).stem
        return doc.layout.name

    # --- new / open ----------------------------------------------------------------------------

    def confirm_discard(self) -> bool:
        """True when there is nothing unsaved or the user saved or discarded it."""
        if not self.document.is_dirty:
            return True
        answer = self.ask_unsaved(self.title())
        if answer == "save":
            return self.save()
        return answer == "discard"

    def new_profile(self) -> None:
        """Start a new, untitled profile of the current model (auto-placed afresh)."""
        if not self.confirm_discard():
            return
        self.discard_own_autosave()
        doc = self.document
        placed = doc.planner.auto_place(doc.planner.initial())
        doc.set_model(doc.layout, placed.plan, doc.settings)
        doc.set_profile(None, None)

    def open_profile_dialog(self) -> None:
        start = str(self.qsettings.value("paths/profiles", str(self.library.folder)))
        path, _ = QFileDialog.getOpenFileName(
            self.window,
            "Open a profile",
            start,
            f"MoE Studio profiles (*{PROFILE_SUFFIX});;All files (*)",
        )
        if path:
            self.qsettings.setValue("paths/profiles", str(Path(path).parent))
            self.open_profile(path)

    def open_library(self) -> None:
        try:
            browser = ProfileBrowser(self.library, self.window)
        except MoeStudioError as exc:
            self.failed.emit("Cannot list the profiles", exc)
            return
        browser.renamed.connect(self._on_browser_renamed)
        browser.deleted.connect(self._on_browser_deleted)
        if browser.exec() and browser.chosen_path:
            self.open_profile(browser.chosen_path)

    def _same_file(self, a: str | None, b: str) -> bool:
        return a is not None and Path(a).absolute() == Path(b).absolute()

    def _on_browser_renamed(self, old: str, new: str) -> None:
        """The open profile was renamed: it is now edited under its new file."""
        if self._same_file(self.document.profile_path, old):
            profile = self.document.profile
            self.document.set_profile(profile, new)
        self._replace_recent(old, new)

    def _on_browser_deleted(self, path: str) -> None:
        """The open profile's file was deleted: the work stays open, as unsaved."""
        if self._same_file(self.document.profile_path, path):
            self.document.set_profile(self.document.profile, None)
            self.document.undo_stack.resetClean()  # Ctrl+S now asks where to save it
        self._replace_recent(path, None)

    def open_profile(self, path: str) -> None:
        """Open a profile and its model off the GUI thread; on error nothing changes."""
        if not self.confirm_discard():
            return
        try:
            profile = load_profile(path)
        except MoeStudioError as exc:
            self.failed.emit("Cannot open the profile", exc)
            return
        self._open_loaded(profile, path)

    def _open_loaded(self, profile: Profile, path: str | None, *, dirty: bool = False) -> None:
        source = profile.model.source

        def work(progress: Progress, cancelled: IsCancelled) -> ModelLayout:
            if source.startswith(catalog.PREFIX):
                layout = catalog.load_catalog(source)
            elif is_remote(source):  # planned before the download: its cached headers
                from moe_studio.core.remote.model import open_remote_model

                layout = open_remote_model(source, progress=progress, cancelled=cancelled)
            else:
                layout = open_model(source, progress=progress, cancelled=cancelled)
            require_model(profile, layout)
            return layout

        def done(layout: ModelLayout) -> None:
            try:
                planner, plan = planner_from_profile(profile, layout)
            except MoeStudioError as exc:
                self.failed.emit("Cannot open the profile", exc)
                return
            doc = self.document
            doc.set_rig(planner.rig)
            doc.set_model(layout, plan, planner.settings)
            doc.executable = profile.engine or doc.executable
            doc.set_profile(profile, path)
            if dirty:
                # Recovered work: keep it marked unsaved so closing asks before dropping it.
                doc.undo_stack.resetClean()
            if path:
                self._add_recent(path)
            if profile.warnings:
                self.command_view.extra_notes = list(profile.warnings)
                self.command_view.refresh()

        self.run_task(
            work,
            f"Opening {Path(path).name if path else profile.title}",
            done,
            "Cannot open the profile",
        )

    # --- a download arrives --------------------------------------------------------------------

    def binds_to(self, layout: ModelLayout) -> bool:
        """Whether ``layout``, a local file, is the download of the remote model being planned
        (same identity): then it takes the model's place and the plan stays."""
        current = self.document.layout
        return (
            is_remote(current.source)
            and not is_remote(layout.source)
            and layout.identity == current.identity
        )

    def bind(self, layout: ModelLayout) -> str:
        """Put ``layout`` in place of the remote model it was downloaded from, keeping placement,
        pins, settings and the profile (which remembers the URL); returns a sentence for the
        status bar. The work becomes unsaved: a saved profile still names the URL."""
        doc = self.document
        url = doc.layout.source
        profile = bind_model(doc.to_profile(), layout)
        doc.rebind_model(layout)
        doc.set_profile(profile, doc.profile_path)
        doc.undo_stack.resetClean()
        return f"{layout.source} is the download of {url}: the plan is kept and now uses it."

    # --- save ----------------------------------------------------------------------------------

    def save(self) -> bool:
        doc = self.document
        if not doc.profile_path:
            return self.save_as()
        return self._save_to(doc.profile_path)

    def save_as(self) -> bool:
        self.library.folder.mkdir(parents=True, exist_ok=True)
        suggested = str(self.library.path_for(self.title()))
        path, _ = QFileDialog.getSaveFileName(
            self.window, "Save the profile", suggested, f"MoE Studio profiles (*{PROFILE_SUFFIX})"
        )
        if not path:
            return False
        if not path.endswith(PROFILE_SUFFIX):
            path += PROFILE_SUFFIX
        return self._save_to(path)

    def _save_to(self, path: str) -> bool:
        doc = self.document
        try:
            profile = doc.to_profile(Path(path).stem)
            saved = save_profile(path, profile)
        except MoeStudioError as exc:
            self.failed.emit("Cannot save the profile", exc)
            return False
        old_autosave = self.last_autosave
        doc.set_profile(saved, path)
        doc.mark_clean()
        self._add_recent(path)
        for stale in {old_autosave, autosave_path(self.autosave_folder, None)}:
            if stale is not None:
                discard_autosave(stale)
        self.last_autosave = None
        return True

    # --- autosave and recovery -----------------------------------------------------------------

    def autosave_now(self) -> Path | None:
        """Autosave unsaved work (nothing to do when the document is clean)."""
        doc = self.document
        if not doc.is_dirty:
            return None
        previous = self.last_autosave
        try:
            self.last_autosave = autosave(
                doc.to_profile(), self.autosave_folder, saved_path=doc.profile_path
            )
        except MoeStudioError as exc:
            log.warning("autosave failed: %s", exc)
            return None
        if previous is not None and previous != self.last_autosave:
            discard_autosave(previous)  # restored from there, or saved under another name since
        return self.last_autosave

    def discard_own_autosave(self) -> None:
        if self.last_autosave is not None:
            discard_autosave(self.last_autosave)
            self.last_autosave = None

    def _claim_autosave_folder(self) -> int | None:
        """Lock the autosave folder for this instance; the pid of the instance that holds it
        when another does (this one then autosaves into a folder of its own inside)."""
        root = self.autosave_folder
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("cannot create the autosave folder %s: %s", root, exc)
            return None
        lock = QLockFile(str(root / INSTANCE_LOCK))
        lock.setStaleLockTime(0)  # held for as long as the instance runs; a dead pid frees it
        if lock.tryLock(0):
            self._instance_lock = lock
            return None
        info = lock.getLockInfo()  # (pid, host name, application name) in PySide6
        pid = info[0] if isinstance(info, tuple) and info and isinstance(info[0], int) else 0
        own = root / f"{INSTANCE_FOLDER_PREFIX}{os.getpid()}"
        try:
            own.mkdir(exist_ok=True)
        except OSError as exc:
            log.warning("cannot create %s: %s", own, exc)
            return int(pid) or -1
        self.autosave_folder = own
        self._instance_lock = QLockFile(str(own / INSTANCE_LOCK))
        self._instance_lock.setStaleLockTime(0)
        self._instance_lock.tryLock(0)
        return int(pid) or -1

    def _pending_recovery(self) -> list[Recovery]:
        """Autosaves in this folder and in the folders of other instances that have ended."""
        root = self.autosave_folder
        found = list(pending_recovery(root))
        for folder in sorted(root.glob(f"{INSTANCE_FOLDER_PREFIX}*")):
            lock = QLockFile(str(folder / INSTANCE_LOCK))
            lock.setStaleLockTime(0)
            if not folder.is_dir() or not lock.tryLock(0):
                continue  # that instance still runs
            items = pending_recovery(folder)
            lock.unlock()
            for item in items:
                # Into this instance's folder (beside this folder's own autosave of the same
                # document, never over it), so it is discarded from here.
                target = root / f"{item.autosave_path.stem}-{folder.name}{PROFILE_SUFFIX}"
                try:
                    os.replace(item.autosave_path, target)
                except OSError as exc:
                    log.warning("cannot move %s: %s", item.autosave_path, exc)
                    continue
                found.append(replace(item, autosave_path=target))
            with contextlib.suppress(OSError):
                for leftover in folder.iterdir():
                    leftover.unlink()
                folder.rmdir()
        oldest = datetime.min.replace(tzinfo=UTC)
        return sorted(found, key=lambda r: r.autosaved or oldest, reverse=True)

    def offer_recovery(self) -> bool:
        """At start-up: offer the newest unsaved work, if any; True when it was restored.

        Only the first running instance offers it: a second one would restore the same work
        twice. It says so in the status bar and autosaves into a folder of its own, which the
        first instance started after it ends looks into.
        """
        other = self._claim_autosave_folder()
        if other is not None:
            self.window.statusBar().showMessage(
                f"Another MoE Studio is running (process {other}): it offers any autosaved "
                "work, not this window. This window autosaves its own work separately.",
                30000,
            )
            return False
        try:
            found = self._pending_recovery()
        except MoeStudioError as exc:
            log.warning("could not look for autosaves: %s", exc)
            return False
        for item in found:
            if item.profile is None:
                log.warning("unreadable autosave %s: %s", item.autosave_path, item.error)
                continue
            when = item.autosaved.strftime("%Y-%m-%d %H:%M") if item.autosaved else "earlier"
            what = item.saved_path or "an unsaved profile"
            description = f"{item.profile.title} ({what}), autosaved {when}"
            if self.ask_recovery(description):
                self.last_autosave = item.autosave_path
                self._open_loaded(
                    item.profile, str(item.saved_path) if item.saved_path else None, dirty=True
                )
                return True
            discard_autosave(item.autosave_path)
            return False
        return False

    # --- export --------------------------------------------------------------------------------

    def export_dialog(self, key: str) -> None:
        suffix = EXPORT_SUFFIX[key]
        suggested = str(
            Path(str(self.qsettings.value("paths/exports", str(Path.home()))))
            / (self.title() + suffix)
        )
        fmt = FORMATS[key]
        options = QFileDialog.Option(0)
        if fmt is ExportFormat.LLAMA_SWAP:
            # Merging into an existing config is the point: do not ask "replace?".
            options = QFileDialog.Option.DontConfirmOverwrite
        path, _ = QFileDialog.getSaveFileName(
            self.window, "Export", suggested, f"*{suffix}", options=options
        )
        if path:
            self.qsettings.setValue("paths/exports", str(Path(path).parent))
            self.export_to(key, path)

    def export_to(self, key: str, path: str) -> list[str]:
        """Write the current plan as ``key`` (a ``moe-studio export --to`` name) to ``path``."""
        fmt = FORMATS[key]
        doc = self.document
        try:
            existing = ""
            if fmt is ExportFormat.LLAMA_SWAP and Path(path).exists():
                existing = Path(path).read_text(encoding="utf-8-sig")
            profile = doc.to_profile(self.title())
            spec = launch_spec(profile, doc.layout)
            text, notes = render(fmt, profile, spec, existing=existing)
            atomic_write_bytes(
                path, encode_export(fmt, text), error=ProfileError, executable=fmt.executable
            )
        except (MoeStudioError, OSError, UnicodeDecodeError) as exc:
            self.failed.emit("Cannot export", exc)
            return []
        notes = [*spec.notes, *notes]
        self.window.statusBar().showMessage(f"Exported to {path}", 8000)
        return notes

    # --- recent --------------------------------------------------------------------------------

    def recent(self) -> list[str]:
        value = self.qsettings.value("recent/profiles", [])
        if isinstance(value, str):
            return [value]
        return [str(v) for v in value] if isinstance(value, list) else []

    def _add_recent(self, path: str) -> None:
        items = [p for p in self.recent() if p != path]
        self.qsettings.setValue("recent/profiles", [path, *items][:MAX_RECENT])
        self._fill_recent()

    def _replace_recent(self, old: str, new: str | None) -> None:
        items = [new if p == old else p for p in self.recent()]
        self.qsettings.setValue("recent/profiles", [p for p in items if p])
        self._fill_recent()

    def _fill_recent(self) -> None:
        if self.recent_menu is None:
            return
        self.recent_menu.clear()
        for path in self.recent():
            self.recent_menu.addAction(path, partial(self.open_profile, path))
        self.recent_menu.setEnabled(bool(self.recent()))
