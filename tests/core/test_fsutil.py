"""Atomic, backed-up file writing (core.fsutil), including a SIGKILL crash test."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moe_studio.core.errors import ExportError, MoeStudioError, ProfileError
from moe_studio.core.fsutil import atomic_write_bytes, atomic_write_text, backup_path

ROOT = Path(__file__).resolve().parents[2]
CHILD = ROOT / "tests" / "support" / "fsutil_child.py"


def _temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_writes_a_new_file_without_backup(tmp_path: Path) -> None:
    target = tmp_path / "profile.json"
    atomic_write_text(target, '{"a": 1}\n')
    assert target.read_text(encoding="utf-8") == '{"a": 1}\n'
    assert not backup_path(target).exists()
    assert _temporaries(tmp_path) == []


def test_second_write_keeps_the_previous_version_as_backup(tmp_path: Path) -> None:
    target = tmp_path / "profile.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text(encoding="utf-8") == "two"
    assert backup_path(target) == tmp_path / "profile.json.bak"
    assert backup_path(target).read_text(encoding="utf-8") == "one"
    atomic_write_text(target, "three")
    assert backup_path(target).read_text(encoding="utf-8") == "two"
    assert _temporaries(tmp_path) == []


def test_backup_off_leaves_an_existing_backup_alone(tmp_path: Path) -> None:
    target = tmp_path / "p.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    atomic_write_text(target, "three", backup=False)
    assert target.read_text(encoding="utf-8") == "three"
    assert backup_path(target).read_text(encoding="utf-8") == "one"


def test_backup_is_an_independent_file_after_the_write(tmp_path: Path) -> None:
    # The backup starts as a hard link; once the new file is in place they must not share data.
    target = tmp_path / "p.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    with target.open("a", encoding="utf-8") as f:
        f.write(" appended")
    assert backup_path(target).read_text(encoding="utf-8") == "one"


def test_backup_falls_back_to_a_copy_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    target = tmp_path / "p.json"
    atomic_write_text(target, "one")
    monkeypatch.setattr(os, "link", no_links)
    atomic_write_text(target, "two")
    assert backup_path(target).read_text(encoding="utf-8") == "one"
    assert _temporaries(tmp_path) == []


def test_a_backup_that_cannot_be_made_does_not_block_the_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "p.json"
    atomic_write_text(target, "one")
    (tmp_path / "p.json.bak").mkdir()  # something in the backup's way
    (tmp_path / "p.json.bak" / "keep").write_text("x", encoding="utf-8")
    atomic_write_text(target, "two")
    assert target.read_text(encoding="utf-8") == "two"
    assert "could not keep the previous version" in caplog.text
    assert _temporaries(tmp_path) == []


def test_text_is_written_byte_exact(tmp_path: Path) -> None:
    target = tmp_path / "run.bat"
    atomic_write_text(target, "@echo off\r\nmodèle 模型\r\n")
    assert target.read_bytes() == "@echo off\r\nmodèle 模型\r\n".encode()
    atomic_write_text(target, "x", encoding="utf-8-sig")
    assert target.read_bytes() == b"\xef\xbb\xbfx"
    atomic_write_bytes(target, b"\x00\xff")
    assert target.read_bytes() == b"\x00\xff"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_existing_file_mode_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "run.sh"
    target.write_text("old", encoding="utf-8")
    target.chmod(0o750)
    atomic_write_text(target, "new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o750


@pytest.mark.skipif(sys.platform == "win32", reason="Windows has no executable bit")
def test_an_executable_write_can_be_run(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        script = tmp_path / "new.sh"
        atomic_write_bytes(script, b"#!/bin/sh\nexit 3\n", executable=True)
        assert stat.S_IMODE(script.stat().st_mode) == 0o755
        assert subprocess.run([str(script)], check=False).returncode == 3
        private = tmp_path / "private.sh"
        private.write_bytes(b"old")
        private.chmod(0o640)
        atomic_write_bytes(private, b"#!/bin/sh\n", executable=True)
        assert stat.S_IMODE(private.stat().st_mode) == 0o750  # +x where it may be read
        plain = tmp_path / "plain.txt"
        atomic_write_bytes(plain, b"text")
        assert stat.S_IMODE(plain.stat().st_mode) == 0o644
    finally:
        os.umask(umask)


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")
def test_symlink_target_is_replaced_and_link_kept(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("old", encoding="utf-8")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink()
    assert real.read_text(encoding="utf-8") == "new"
    assert backup_path(real).read_text(encoding="utf-8") == "old"


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "nowhere" / "p.json"
    with pytest.raises(ProfileError, match="does not exist") as info:
        atomic_write_text(target, "x", error=ProfileError)
    assert str(tmp_path / "nowhere") in str(info.value)
    assert not (tmp_path / "nowhere").exists()


def test_default_error_is_the_base_class(tmp_path: Path) -> None:
    with pytest.raises(MoeStudioError):
        atomic_write_text(tmp_path / "missing" / "p.json", "x")


def test_a_folder_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "p.json").mkdir()
    with pytest.raises(ExportError, match="folder with that name"):
        atomic_write_text(tmp_path / "p.json", "x", error=ExportError)


def test_unencodable_text_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "p.bat"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(ExportError, match="cannot be encoded"):
        atomic_write_text(target, "模型", encoding="ascii", error=ExportError)
    assert target.read_text(encoding="utf-8") == "old"


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="needs POSIX permissions, not root"
)
def test_permission_denied_leaves_the_file_untouched(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    target = folder / "p.json"
    target.write_text("old", encoding="utf-8")
    folder.chmod(0o500)
    try:
        with pytest.raises(ProfileError, match="permission denied"):
            atomic_write_text(target, "new", error=ProfileError)
        assert target.read_text(encoding="utf-8") == "old"
        assert _temporaries(folder) == []
    finally:
        folder.chmod(0o700)


def test_locked_file_on_replace_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What Windows reports when another program holds the file open.
    target = tmp_path / "p.json"
    atomic_write_text(target, "old")

    def locked(src: object, dst: object) -> None:
        raise PermissionError(errno.EACCES, "Access is denied")

    monkeypatch.setattr(os, "replace", locked)
    with pytest.raises(ProfileError, match="permission denied") as info:
        atomic_write_text(target, "new", error=ProfileError)
    assert "previous version is unchanged" in str(info.value)
    assert "Access is denied" in info.value.details
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in _temporaries(tmp_path)] == []


def test_disk_full_leaves_the_file_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "p.json"
    atomic_write_text(target, "old")
    real_write = os.write

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 4:
            return real_write(fd, bytes(data[:4]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(ExportError, match="disk is full") as info:
        atomic_write_text(target, "much newer content", error=ExportError)
    monkeypatch.undo()
    assert "free" in str(info.value)
    assert target.read_text(encoding="utf-8") == "old"
    assert _temporaries(tmp_path) == []


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(proc.stdout)


@pytest.mark.skipif(sys.platform == "win32", reason="process check is POSIX-only")
def test_leftovers_of_dead_writers_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "p.json"
    dead = _dead_pid()
    leftover = tmp_path / f".p.json.{dead}.0badc0de.tmp"
    leftover_bak = tmp_path / f".p.json.bak.{dead}.0badc0de.tmp"
    alive = tmp_path / f".p.json.{os.getppid()}.0badc0de.tmp"
    unrelated = tmp_path / ".other.json.1.0badc0de.tmp"
    for p in (leftover, leftover_bak, alive, unrelated):
        p.write_text("partial", encoding="utf-8")
    atomic_write_text(target, "x")
    assert not leftover.exists()
    assert not leftover_bak.exists()
    assert alive.exists()  # its writer may still be running
    assert unrelated.exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.mark.skipif(sys.platform == "win32", reason="mtime-based ageing checked on POSIX")
def test_old_leftovers_are_removed_even_if_their_pid_is_in_use(tmp_path: Path) -> None:
    old = tmp_path / f".p.json.{os.getppid()}.0badc0de.tmp"
    old.write_text("partial", encoding="utf-8")
    an_hour_ago = time.time() - 3700
    os.utime(old, (an_hour_ago, an_hour_ago))
    atomic_write_text(tmp_path / "p.json", "x")
    assert not old.exists()


# --- the crash test ------------------------------------------------------------------------------

KILLS = 200


def _profile_json(tag: str, count: int) -> str:
    """A profile-like document of a few hundred KB."""
    tensors = [
        {
            "name": f"blk.{i // 8}.ffn_{('up', 'down', 'gate')[i % 3]}_exps.weight",
            "device": f"CUDA{i % 4}" if tag == "A" else "CPU",
            "bytes": 1_409_286_144 + i,
            "note": f"{tag}-{i}",
        }
        for i in range(count)
    ]
    return json.dumps({"schema": 1, "name": f"profile {tag}", "tensors": tensors}, indent=1)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_sigkill_at_random_moments_never_loses_the_file(tmp_path: Path) -> None:
    a_text, b_text = _profile_json("A", 2500), _profile_json("B", 2300)
    assert 150_000 < len(a_text) < 600_000
    assert 150_000 < len(b_text) < 600_000
    (tmp_path / "a.txt").write_text(a_text, encoding="utf-8")
    (tmp_path / "b.txt").write_text(b_text, encoding="utf-8")
    folder = tmp_path / "profiles"
    folder.mkdir()
    target = folder / "profile.json"
    atomic_write_text(target, a_text)

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    left_temporaries = 0
    started = time.monotonic()
    for kill in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(target), str(tmp_path / "a.txt"),
             str(tmp_path / "b.txt")],
            stdout=subprocess.PIPE, cwd=ROOT, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline() == b"ready\n", f"child failed to start (seed {seed})"
            time.sleep(rng.uniform(0.0, 0.030))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()  # a no-op when already dead; reaps nothing by itself
            proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL, f"child exited on its own (seed {seed})"

        content = target.read_text(encoding="utf-8")
        assert content in (a_text, b_text), f"kill {kill}: torn file (seed {seed})"
        json.loads(content)
        bak = backup_path(target)
        if bak.exists():
            assert bak.read_text(encoding="utf-8") in (a_text, b_text), f"kill {kill} (seed {seed})"
        if _temporaries(folder):
            left_temporaries += 1
        # A kill leaves at most two temporaries (data and backup link); the next child removes
        # them on its first write, so they cannot pile up (a few survive only when a child is
        # killed before that first write).
        assert len(_temporaries(folder)) <= 8, f"kill {kill}: leftovers pile up (seed {seed})"

    elapsed = time.monotonic() - started
    # Evidence that kills landed mid-write, not only between writes.
    assert left_temporaries > 0, f"no kill interrupted a write in {KILLS} tries (seed {seed})"
    atomic_write_text(target, b_text)
    # Every leftover is gone, except (rarely) one whose pid another process got since: pids wrap
    # at 32768 on many systems, and such files go once that process ends or after an hour.
    for leftover in _temporaries(folder):
        pid = int(leftover.name.split(".")[-3])
        assert _alive(pid), f"{leftover.name} survived the next write (seed {seed})"
    assert target.read_text(encoding="utf-8") == b_text
    print(f"{KILLS} kills in {elapsed:.1f} s, {left_temporaries} mid-write (seed {seed})")
