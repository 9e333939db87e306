"""Predicted vs actual memory of past runs, kept in a local JSONL file the estimator can learn from.

After each launch that got as far as its buffers, :func:`append_record` adds one line: the model,
the engine, the settings that shape memory, and per device our weights/KV/compute estimate beside
the engine's printed sizes (:func:`moe_studio.core.engine.diagnosis.compare`). :func:`read_records`
reads them back, skipping lines it cannot use (a line cut short by a crash, a future format). The
file lives in the user data folder (``calibration.jsonl``); every function takes another path.

One line per run, e.g.::

    {"v": 1, "time": "2026-11-29T16:20:00Z", "model": "tiny", "architecture": "qwen3moe",
     "dialect": "ik", "engine": "version: 4840 (8337e4cd3)",
     "settings": {"ctx": 512, "ubatch": 512, …},
     "devices": [{"name": "CPU", "predicted": {"weights": …, "kv": …, "compute": …},
                  "actual": {"weights": …, "kv": …, "compute": …}}]}

Shipped calibration points (``resources/calibration/compute.json``) are a separate, curated set.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from moe_studio.core.engine.diagnosis import CompareRow
from moe_studio.core.errors import EngineError
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.plan.learned import Learned, MeasuredRun
from moe_studio.core.plan.settings import Settings

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILENAME = "calibration.jsonl"
# The settings that change memory; the rest (host, port, threads) do not belong in a record.
SETTINGS_KEYS = (
    "dialect",
    "ctx",
    "ubatch",
    "batch",
    "cache_type_k",
    "cache_type_v",
    "flash_attn",
    "parallel",
    "mla",
    "amb",
    "no_mmap",
    "split_mode_graph",
)
_PARTS = ("weights", "kv", "compute")


def default_path() -> Path:
    """``calibration.jsonl`` in the user data folder of MoE Studio."""
    import platformdirs

    return Path(platformdirs.user_data_dir("moe-studio")) / FILENAME


@dataclass(frozen=True, slots=True)
class DevicePair:
    """One device of one run: bytes by part (``weights``, ``kv``, ``compute``); a part without a
    figure is missing from the mapping."""

    name: str
    predicted: Mapping[str, int]
    actual: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class CalibrationRecord:
    """One run's predicted-vs-actual pairs."""

    time: str
    model: str
    architecture: str
    dialect: str
    engine: str
    settings: Mapping[str, object]
    devices: tuple[DevicePair, ...]
    model_size: int = 0  # bytes of the model's tensors: tells quants of one model apart

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "v": FORMAT_VERSION,
            "time": self.time,
            "model": self.model,
            "architecture": self.architecture,
            "dialect": self.dialect,
            "engine": self.engine,
            "settings": dict(self.settings),
            "devices": [
                {"name": d.name, "predicted": dict(d.predicted), "actual": dict(d.actual)}
                for d in self.devices
            ],
        }
        if self.model_size:
            out["model_size"] = self.model_size
        return out

    @classmethod
    def from_json(cls, obj: object) -> CalibrationRecord | None:
        """A record from one decoded line, or None when it is not one we can read."""
        if not isinstance(obj, dict) or obj.get("v") != FORMAT_VERSION:
            return None
        devices = []
        for d in obj.get("devices") or ():
            if not isinstance(d, dict) or not isinstance(d.get("name"), str):
                return None
            pred, act = d.get("predicted"), d.get("actual")
            if not isinstance(pred, dict) or not isinstance(act, dict):
                return None
            devices.append(
                DevicePair(
                    d["name"],
                    {k: int(v) for k, v in pred.items() if isinstance(v, int)},
                    {k: int(v) for k, v in act.items() if isinstance(v, int)},
                )
            )
        settings = obj.get("settings")
        return cls(
            time=str(obj.get("time", "")),
            model=str(obj.get("model", "")),
            architecture=str(obj.get("architecture", "")),
            dialect=str(obj.get("dialect", "")),
            engine=str(obj.get("engine", "")),
            settings=settings if isinstance(settings, dict) else {},
            devices=tuple(devices),
            model_size=size if isinstance(size := obj.get("model_size"), int) else 0,
        )


def make_record(
    layout: ModelLayout,
    settings: Settings,
    rows: Sequence[CompareRow],
    *,
    engine: str = "",
    when: float | None = None,
) -> CalibrationRecord:
    """A record of one run from its :func:`moe_studio.core.engine.diagnosis.compare` rows."""
    all_settings = settings.to_dict()
    pairs = []
    for r in rows:
        predicted = (r.predicted_weights, r.predicted_kv, r.predicted_compute)
        actual = (r.actual_weights, r.actual_kv, r.actual_compute)
        pairs.append(
            DevicePair(
                r.device,
                {k: v for k, v in zip(_PARTS, predicted, strict=True) if v is not None},
                {k: v for k, v in zip(_PARTS, actual, strict=True) if v is not None},
            )
        )
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if when is None else when))
    return CalibrationRecord(
        time=stamp,
        model=layout.name,
        architecture=layout.architecture,
        dialect=settings.dialect,
        engine=engine,
        settings={k: all_settings[k] for k in SETTINGS_KEYS},
        devices=tuple(pairs),
        model_size=model_size(layout),
    )


def model_size(layout: ModelLayout) -> int:
    """Bytes of the tensors the engine loads: with the name, what identifies a model file."""
    return sum(t.nbytes for t in layout.tensors if t.loaded)


def engine_key(engine: str) -> str:
    """The build part of an engine string: ``version: 4840 (8337e4cd3)`` and the label
    ``ik_llama.cpp 4840 (8337e4cd3)`` (older GUI records) both give ``4840 (8337e4cd3)``."""
    text = engine.strip()
    for prefix in ("version:", "ik_llama.cpp", "llama.cpp", "llama-server"):
        text = text.removeprefix(prefix).strip()
    return text


def learned_for(
    records: Sequence[CalibrationRecord],
    layout: ModelLayout,
    dialect: str,
    engine: str | None = None,
) -> Learned:
    """The compute buffers measured for ``layout`` on this engine, for the planner to learn from.

    Records of another model (name, architecture, size), dialect or — when ``engine`` (its
    version line) is given — build are left out.
    """
    size = model_size(layout)
    want = engine_key(engine) if engine else None
    runs = []
    for r in records:
        if r.model != layout.name or r.architecture != layout.architecture:
            continue
        if r.dialect != dialect or (r.model_size and r.model_size != size):
            continue
        if want is not None and engine_key(r.engine) != want:
            continue
        predicted = {d.name: d.predicted["compute"] for d in r.devices if "compute" in d.predicted}
        actual = {d.name: d.actual["compute"] for d in r.devices if "compute" in d.actual}
        if actual:
            runs.append(MeasuredRun(r.settings, predicted, actual, r.time))
    return Learned(tuple(runs))


def append_record(record: CalibrationRecord, path: str | os.PathLike[str] | None = None) -> Path:
    """Append ``record`` as one line; returns the file's path.

    Raises:
        EngineError: the file cannot be written.
    """
    target = Path(path) if path is not None else default_path()
    line = (json.dumps(record.to_json(), separators=(",", ":")) + "\n").encode()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a+b") as f:
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut short by a crash stays on its own
                    line = b"\n" + line
            f.write(line)
    except OSError as exc:
        raise EngineError(
            f"Cannot add to the calibration file {target}: {exc.strerror or exc}."
        ) from exc
    return target


def read_records(path: str | os.PathLike[str] | None = None) -> list[CalibrationRecord]:
    """Every readable record, oldest first ([] when there is no file)."""
    target = Path(path) if path is not None else default_path()
    try:
        text = target.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("cannot read %s: %s", target, exc)
        return []
    out: list[CalibrationRecord] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = CalibrationRecord.from_json(json.loads(line))
        except (ValueError, TypeError, OverflowError, RecursionError):
            record = None
        if record is None:
            log.info("%s:%d: skipped a line that is not a calibration record", target, n)
            continue
        out.append(record)
    return out
