"""The folder of saved profiles (:class:`ProfileLibrary`) and the autosave that keeps unsaved
work across a crash (:func:`autosave`, :func:`pending_recovery`, :func:`discard_autosave`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from moe_studio.core.errors import ProfileError
from moe_studio.core.fsutil import atomic_write_bytes, atomic_write_text, backup_path
from moe_studio.core.profiles.schema import (
    APP_NAME,
    AUTOSAVE_FORMAT,
    PROFILE_SUFFIX,
    Mismatch,
    Profile,
    dumps,
    from_json,
    load_profile,
    now_utc,
    read_timestamp,
    save_profile,
    timestamp_text,
    to_document,
)

log = logging.getLogger(__name__)


# --- the library ---------------------------------------------------------------------------------


def default_library_folder() -> Path:
    """``<user data folder>/moe-studio/profiles`` (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "profiles"


def default_autosave_folder() -> Path:
    """``<user data folder>/moe-studio/autosave`` (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "autosave"


@dataclass(frozen=True, slots=True)
class ProfileSummary:
    """One line of the library: read from the profile file alone, no model opened.

    ``error`` is set (and the rest mostly empty) for a file that cannot be read as a profile.
    """

    path: Path
    title: str
    model_name: str = ""
    model_source: str = ""
    rig_name: str = ""
    dialect: str = ""
    modified: datetime | None = None
    fits: bool | None = None
    tokens_per_second: float | None = None
    error: str = ""


def summarize(path: str | os.PathLike[str]) -> ProfileSummary:
    """The library line of the profile at ``path`` (errors become :attr:`ProfileSummary.error`)."""
    p = Path(path)
    try:
        profile = load_profile(p)
    except ProfileError as exc:
        return ProfileSummary(p, p.name.removesuffix(PROFILE_SUFFIX), error=str(exc))
    return ProfileSummary(
        path=p,
        title=profile.title,
        model_name=profile.model.name,
        model_source=profile.model.source,
        rig_name=profile.rig.name,
        dialect=profile.dialect,
        modified=profile.modified,
        fits=profile.fits,
        tokens_per_second=profile.tokens_per_second,
    )


_UNSAFE_NAME = re.compile(r"[^\w.+-]+")


def _file_stem(name: str) -> str:
    stem = _UNSAFE_NAME.sub("-", name.strip()).strip("-.")
    return stem[:80] or "profile"


class ProfileLibrary:
    """The folder of saved profiles (``*.json``), by default :func:`default_library_folder`."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_library_folder()

    def paths(self) -> list[Path]:
        """Profile files in the folder (backups and temporaries left out), by name."""
        try:
            return sorted(
                p
                for p in self.folder.iterdir()
                if p.name.endswith(PROFILE_SUFFIX) and not p.name.startswith(".") and p.is_file()
            )
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ProfileError(f"Could not list the profiles in {self.folder}: {exc}.") from None

    def entries(self) -> list[ProfileSummary]:
        """A summary of every profile, most recently modified first (unreadable ones last)."""
        summaries = [summarize(p) for p in self.paths()]
        return sorted(
            summaries,
            key=lambda s: (
                s.modified is None,
                -s.modified.timestamp() if s.modified else 0.0,
                s.title.casefold(),
            ),
        )

    def path_for(self, name: str) -> Path:
        """Where a profile called ``name`` is saved (the name made safe as a file name)."""
        return self.folder / (_file_stem(name) + PROFILE_SUFFIX)

    def _free_path(self, name: str) -> Path:
        candidate = self.path_for(name)
        n = 2
        while candidate.exists():
            candidate = self.path_for(f"{name}-{n}")
            n += 1
        return candidate

    def _ensure_folder(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProfileError(
                f"Could not create the profile folder {self.folder}: {exc.strerror or exc}."
            ) from None

    def save(self, profile: Profile, path: str | os.PathLike[str] | None = None) -> Path:
        """Save into the library (at ``path``, else under the profile's title); the path used."""
        self._ensure_folder()
        target = Path(path) if path is not None else self.path_for(profile.title)
        save_profile(target, profile)
        return target

    def import_file(self, source: str | os.PathLike[str]) -> Path:
        """Copy a profile file into the library under a free name, after checking that it reads.

        The bytes are copied unchanged (an older schema stays as it is until saved).

        Raises:
            ProfileError: the file is not a usable profile, or cannot be copied.
        """
        src = Path(source)
        profile = load_profile(src)
        self._ensure_folder()
        target = self._free_path(profile.name or src.name.removesuffix(PROFILE_SUFFIX))
        atomic_write_bytes(target, src.read_bytes(), backup=False, error=ProfileError)
        return target

    def _member(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        if p.parent.resolve() != self.folder.resolve() or not p.name.endswith(PROFILE_SUFFIX):
            raise ProfileError(f"{p} is not a profile in the library folder {self.folder}.")
        return p

    def delete(self, path: str | os.PathLike[str]) -> None:
        """Delete the library profile at ``path`` (and its ``.bak``).

        Raises:
            ProfileError: ``path`` is not in the library, or cannot be deleted.
        """
        p = self._member(path)
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ProfileError(f"Could not delete {p}: {exc.strerror or exc}.") from None
        with contextlib.suppress(OSError):
            backup_path(p).unlink(missing_ok=True)

    def rename(self, path: str | os.PathLike[str], name: str) -> Path:
        """Give the library profile at ``path`` the name ``name``; returns its new path.

        The file follows the name (:meth:`path_for`). Never overwrites another profile: a name
        whose file exists is refused.

        Raises:
            ProfileError: an empty name, a name taken by another profile, an unreadable profile,
                or a file that cannot be written.
        """
        p = self._member(path)
        name = name.strip()
        if not name:
            raise ProfileError("A profile needs a name; type one.")
        profile = load_profile(p)
        target = self.path_for(name)
        same_file = target.exists() and os.path.samefile(target, p)
        if not same_file:
            try:
                # Claim the name first, atomically: a file that appears meanwhile is not lost.
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                raise ProfileError(
                    f"A profile is already saved as {target.name}; choose another name "
                    "or delete that profile first."
                ) from None
            except OSError as exc:
                raise ProfileError(f"Could not create {target}: {exc.strerror or exc}.") from None
        try:
            save_profile(target, replace(profile, name=name), stamp=False)
        except ProfileError:
            if not same_file:
                with contextlib.suppress(OSError):
                    target.unlink()
            raise
        if not same_file:
            with contextlib.suppress(OSError):
                backup_path(target).unlink(missing_ok=True)  # the empty claim, saved as backup
            self.delete(p)
        return target

    def export_file(self, path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
        """Copy the library profile at ``path`` to ``dest`` (atomically, keeping a backup).

        Raises:
            ProfileError: the profile is unreadable or ``dest`` cannot be written.
        """
        src = Path(path)
        load_profile(src)
        try:
            data = src.read_bytes()
        except OSError as exc:
            raise ProfileError(f"Could not read {src}: {exc.strerror or exc}.") from None
        atomic_write_bytes(dest, data, error=ProfileError)


# --- autosave and recovery -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recovery:
    """Unsaved work found at start-up.

    Attributes:
        autosave_path: The autosave file (pass it to :func:`discard_autosave`).
        saved_path: The profile file the work belongs to; ``None`` for work never saved.
        autosaved: When it was autosaved.
        profile: The work, or ``None`` when the autosave cannot be read (see ``error``).
    """

    autosave_path: Path
    saved_path: Path | None
    autosaved: datetime | None
    profile: Profile | None
    error: str = ""


def autosave_path(
    folder: str | os.PathLike[str], saved_path: str | os.PathLike[str] | None
) -> Path:
    """The autosave file for the document saved at ``saved_path`` (``None``: untitled)."""
    if saved_path is None:
        key = "untitled"
    else:
        resolved = os.path.abspath(os.fspath(saved_path))
        key = hashlib.sha256(resolved.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return Path(folder) / f"autosave-{key}{PROFILE_SUFFIX}"


def autosave(
    profile: Profile,
    folder: str | os.PathLike[str],
    *,
    saved_path: str | os.PathLike[str] | None = None,
    now: datetime | None = None,
) -> Path:
    """Write unsaved work atomically to the autosave file of its document; returns that file.

    Raises:
        ProfileError: the autosave cannot be written.
    """
    target = autosave_path(folder, saved_path)
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProfileError(f"Could not create the autosave folder {folder}: {exc}.") from None
    document = {
        "format": AUTOSAVE_FORMAT,
        "saved_path": None if saved_path is None else os.path.abspath(os.fspath(saved_path)),
        "autosaved": timestamp_text(now or now_utc()),
        "profile": to_document(profile),
    }
    try:
        text = dumps(document) + "\n"
    except ValueError as exc:
        raise ProfileError(f"Could not autosave to {target}: {exc}.") from None
    atomic_write_text(target, text, backup=False, error=ProfileError)
    return target


def _read_autosave(path: Path) -> Recovery:
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return Recovery(path, None, None, None, f"{path}: the autosave cannot be read ({exc}).")
    if not isinstance(raw, dict) or raw.get("format") != AUTOSAVE_FORMAT:
        return Recovery(path, None, None, None, f"{path} is not a MoE Studio autosave.")
    saved = raw.get("saved_path")
    saved_path = Path(saved) if isinstance(saved, str) and saved else None
    try:
        moment: datetime | None = read_timestamp(raw.get("autosaved"), ("autosaved",))
    except Mismatch:
        moment = None
    try:
        profile = from_json(json.dumps(raw.get("profile")), source=f"{path} (autosave)")
    except ProfileError as exc:
        return Recovery(path, saved_path, moment, None, str(exc))
    return Recovery(path, saved_path, moment, profile)


def pending_recovery(folder: str | os.PathLike[str]) -> list[Recovery]:
    """Autosaves newer than the file they belong to (or whose file is gone), newest first."""
    root = Path(folder)
    try:
        candidates = sorted(
            p
            for p in root.iterdir()
            if p.name.startswith("autosave-") and p.name.endswith(PROFILE_SUFFIX)
        )
    except OSError:
        return []
    out: list[Recovery] = []
    for path in candidates:
        recovery = _read_autosave(path)
        if recovery.saved_path is not None:
            try:
                if recovery.saved_path.stat().st_mtime_ns >= path.stat().st_mtime_ns:
                    continue  # saved after the autosave: nothing to recover
            except FileNotFoundError:
                pass
            except OSError:
                continue
        out.append(recovery)
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(out, key=lambda r: r.autosaved or oldest, reverse=True)


def discard_autosave(path: str | os.PathLike[str]) -> None:
    """Delete an autosave file (after a save, or when the user declines the recovery)."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove the autosave %s: %s", path, exc)
