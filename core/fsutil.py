"""Never-lose-work file writing.

:func:`atomic_write_bytes` and :func:`atomic_write_text` replace a file so that, at every instant
and whatever crashes (the app, the machine, the power), the path holds either the complete old
content or the complete new content, never a mix, a truncation or nothing:

1. the new content goes to a temporary file in the same folder (same file system, so the final
   rename is atomic), which is flushed and ``fsync``-ed;
2. when ``backup`` is on and the file exists, the current version becomes ``<name>.bak``: a hard
   link (or, where links are not supported, a fsync-ed copy) under a temporary name, renamed over
   the old backup with :func:`os.replace`; the file itself is not touched by this step, and a
   backup that cannot be made is logged and skipped rather than failing the save;
3. :func:`os.replace` moves the temporary file over the path;
4. on POSIX the folder is ``fsync``-ed so the renames survive a power cut.

A crash leaves at most a ``.<name>.<pid>.<random>.tmp`` file behind; the next write to the same
path removes those whose process is gone (POSIX) and any older than an hour.

Errors (permission denied, disk full, missing folder, read-only file system, …) are reported as a
:class:`~moe_studio.core.errors.MoeStudioError` with a sentence the user can act on; callers pick
the subclass with ``error`` (:class:`~moe_studio.core.errors.ProfileError` for profiles,
:class:`~moe_studio.core.errors.ExportError` for exports). The original file is untouched whenever
an error is raised.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import stat
import sys
import time
from pathlib import Path

from moe_studio.core.errors import MoeStudioError, describe_file_kind

log = logging.getLogger(__name__)

BACKUP_SUFFIX = ".bak"
_TMP_SUFFIX = ".tmp"
# A temporary file counts as abandoned after this long even when its writer cannot be checked
# (Windows) or its pid was reused.
_STALE_AFTER_S = 3600.0


class NotARegularFileError(OSError):
    """A path that exists but is a FIFO, device, socket or folder, or a file past a size limit."""


def read_regular_file(path: str | os.PathLike[str], *, limit: int = 64 * 1024 * 1024) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes.

    Checked before opening, so a FIFO never blocks and ``/dev/zero`` is never read.

    Raises:
        FileNotFoundError, OSError: as :func:`open`.
        NotARegularFileError: ``path`` is something else (``strerror`` says what), or too large.
    """
    p = Path(path)
    mode = p.stat().st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "a folder, not a regular file", str(p))
    if not stat.S_ISREG(mode):
        kind = describe_file_kind(mode)
        raise NotARegularFileError(errno.EINVAL, f"{kind}, not a regular file", str(p))
    with p.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise NotARegularFileError(errno.EFBIG, f"larger than {limit} bytes", str(p))
    return data


def backup_path(path: str | os.PathLike[str]) -> Path:
    """Where :func:`atomic_write_bytes` keeps the previous version of ``path``."""
    p = Path(path)
    return p.with_name(p.name + BACKUP_SUFFIX)


def atomic_write_text(
    path: str | os.PathLike[str],
    text: str,
    *,
    encoding: str = "utf-8",
    backup: bool = True,
    error: type[MoeStudioError] = MoeStudioError,
) -> None:
    """Replace the file at ``path`` with ``text``, atomically; see the module docstring.

    The text is encoded as is: no newline translation, so ``"\\r\\n"`` stays ``"\\r\\n"``.

    Args:
        path: The file to write; a symbolic link is followed and its target replaced.
        text: The complete new content.
        encoding: Text encoding (``"utf-8-sig"`` writes a byte order mark).
        backup: Keep the previous version as ``<name>.bak``.
        error: The :class:`MoeStudioError` subclass to raise.

    Raises:
        MoeStudioError: (or ``error``) the file cannot be written; it is left as it was.
    """
    try:
        data = text.encode(encoding)
    except (UnicodeEncodeError, LookupError) as exc:
        raise error(
            f"Could not save {os.fspath(path)}: the text cannot be encoded as {encoding} ({exc})."
        ) from exc
    atomic_write_bytes(path, data, backup=backup, error=error)


def atomic_write_bytes(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    backup: bool = True,
    error: type[MoeStudioError] = MoeStudioError,
    executable: bool = False,
) -> None:
    """Replace the file at ``path`` with ``data``, atomically; see the module docstring.

    Args:
        path: The file to write; a symbolic link is followed and its target replaced.
        data: The complete new content.
        backup: Keep the previous version as ``<name>.bak``.
        error: The :class:`MoeStudioError` subclass to raise.
        executable: Make the file executable (a shell script): whoever may read it may run it,
            as ``chmod +x`` does (a new file gets 0o777 minus the umask, usually 0o755).

    Raises:
        MoeStudioError: (or ``error``) the file cannot be written; it is left as it was.
    """
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise error(
            f"Could not save {target}: the folder {folder} does not exist. "
            "Choose another location or create the folder first."
        )
    if target.is_dir():
        raise error(f"Could not save {target}: a folder with that name is in the way.")
    _remove_stale_temporaries(target)

    tmp = _temporary_name(target)
    try:
        mode = _existing_mode(target)
        if executable and mode is not None:
            mode |= (mode & 0o444) >> 2
        _write_synced(tmp, data, mode, executable=executable)
        if backup and target.exists():
            _refresh_backup(target)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise error(_describe(exc, target), details=f"{type(exc).__name__}: {exc}") from exc
    _sync_folder(folder)


def _temporary_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")


def _existing_mode(target: Path) -> int | None:
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        return None


def _write_synced(path: Path, data: bytes, mode: int | None, *, executable: bool = False) -> None:
    """Create ``path`` (exclusively), write ``data``, fsync, close."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    # 0o666 (0o777 for a script) minus the umask, like a plain open(); an existing file's mode is
    # copied below.
    fd = os.open(path, flags, 0o777 if executable else 0o666)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if mode is not None and sys.platform != "win32":
            # Best effort: some file systems (SMB, FAT via FUSE) refuse modes.
            with contextlib.suppress(OSError):
                os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def _refresh_backup(target: Path) -> None:
    """Make ``<name>.bak`` the current content of ``target`` without touching ``target``.

    A backup that cannot be made (a read-only ``.bak`` of another user, no room for the copy) is
    logged and skipped: the save itself matters more than the safety copy of the old version.
    """
    bak = backup_path(target)
    bak_tmp = _temporary_name(bak)
    try:
        try:
            os.link(target, bak_tmp)
        except OSError:
            # No hard links here (FAT, some network shares): copy instead; slower but just as
            # safe, since only temporaries and the backup are written.
            with contextlib.suppress(OSError):
                bak_tmp.unlink()
            _write_synced(bak_tmp, target.read_bytes(), _existing_mode(target))
        os.replace(bak_tmp, bak)
    except OSError as exc:
        with contextlib.suppress(OSError):
            bak_tmp.unlink()
        log.warning("could not keep the previous version of %s as %s: %s", target, bak, exc)


def _sync_folder(folder: Path) -> None:
    """Make the renames durable (POSIX); some file systems refuse, which is harmless."""
    if sys.platform == "win32":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("fsync of folder %s failed: %s", folder, exc)
    finally:
        os.close(fd)


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporaries that a crashed earlier write of ``target`` (or its backup) left."""
    prefixes = (f".{target.name}.", f".{target.name}{BACKUP_SUFFIX}.")
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    now = time.time()
    for entry in entries:
        name = entry.name
        if not name.endswith(_TMP_SUFFIX) or not name.startswith(prefixes):
            continue
        parts = name.split(".")
        # ".<name>.<pid>.<hex>.tmp" splits into ["", *name parts, pid, hex, "tmp"].
        if len(parts) < 5 or not parts[-3].isdigit():
            continue
        pid = int(parts[-3])
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        # No write takes an hour, so an old temporary is abandoned even if its pid has been
        # reused by another process since.
        if age < _STALE_AFTER_S and (pid == os.getpid() or _process_alive(pid) is not False):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            log.debug("removed leftover temporary file %s", entry.path)


def _process_alive(pid: int) -> bool | None:
    """Whether process ``pid`` exists; ``None`` where that cannot be checked cheaply."""
    if sys.platform == "win32":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    return True


def _describe(exc: OSError, target: Path) -> str:
    where = f"Could not save {target}"
    kept = "The previous version is unchanged."
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM) or isinstance(exc, PermissionError):
        return (
            f"{where}: permission denied. Check that you may write to {target.parent} "
            f"and that no other program has the file locked. {kept}"
        )
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        free = _free_space_text(target.parent)
        return f"{where}: the disk is full{free}. Free some space and save again. {kept}"
    if code == errno.EROFS:
        return f"{where}: the file system is read-only. Choose another location. {kept}"
    if code == errno.ENOENT:
        return f"{where}: the folder {target.parent} disappeared while saving. {kept}"
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}. {kept}"


def _free_space_text(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    from moe_studio.core.units import format_bytes

    return f" ({format_bytes(free)} free)"
