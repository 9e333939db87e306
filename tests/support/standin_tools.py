"""Stand-in engine installations: a folder with ``llama-server`` (and the bench tools) that run
tests/support/standin_engine.py and standin_bench.py, so probing, launching and benchmarking go
through real executables and real subprocesses.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

SUPPORT = Path(__file__).resolve().parent
STANDIN = SUPPORT / "standin_engine.py"
STANDIN_BENCH = SUPPORT / "standin_bench.py"


def _write_exe(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _wrapper(dialect: str, script: Path, *args: str) -> str:
    # exec: the engine's pid is the wrapper's, as with a real binary.
    extra = "".join(f' "{a}"' for a in args)
    return f'#!/bin/sh\nSTANDIN_DIALECT={dialect} exec "{sys.executable}" "{script}"{extra} "$@"\n'


def install_standin(folder: Path, dialect: str = "ik", *, bench: bool = True) -> Path:
    """Write ``llama-server`` (+ ``llama-sweep-bench`` for ik, ``llama-bench``) into ``folder``;
    returns the ``llama-server`` path. The dialect is fixed per folder."""
    folder.mkdir(parents=True, exist_ok=True)
    server = _write_exe(folder / "llama-server", _wrapper(dialect, STANDIN))
    if bench:
        if dialect == "ik":
            _write_exe(
                folder / "llama-sweep-bench", _wrapper(dialect, STANDIN_BENCH, "sweep-bench")
            )
        _write_exe(folder / "llama-bench", _wrapper(dialect, STANDIN_BENCH, "bench"))
    return server


def clean_env(**more: str) -> dict[str, str]:
    """Our environment without STANDIN_* knobs, with a short load and ``more``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STANDIN_")}
    env.update({"STANDIN_LOAD_SECONDS": "0.05", **more})
    return env


def isolate_engine_env(monkeypatch: pytest.MonkeyPatch, folder: Path, **knobs: str) -> Path:
    """This process's environment for a test that runs the stand-in: no STANDIN_* knobs and no
    MOE_STUDIO_ENGINE*, a short load plus ``knobs``, config and data folders in ``folder``
    (calibration records land there); returns ``folder``."""
    for key in list(os.environ):
        if key.startswith(("STANDIN_", "MOE_STUDIO_ENGINE")):
            monkeypatch.delenv(key)
    for key, value in {"STANDIN_LOAD_SECONDS": "0.05", **knobs}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(folder / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(folder / "data"))
    return folder
