"""Trials of the tuner and the journal that keeps them across interruptions.

A :class:`Trial` is one configuration measured at one rung (its speeds, status and the command
that measured it). :class:`Journal` keeps finished trials in a JSON file, rewritten atomically after
each one, with a :func:`fingerprint` of what the figures depend on (model, rig, settings, engine):
a rerun of the same setup reuses them, a journal of another setup is ignored with a note::

    {"v": 1, "fingerprint": "3f2a…", "trials": [{"knobs": {"ubatch": 1024, …}, "rung": 0,
     "depths": [0], "status": "ok", "pp": 1733.2, "tg": 172.5, "points": [[0, 1733.2, 172.5]],
     "seconds": 4.1, "load": 1, "error": "", "argv": […]}, …]}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from moe_studio.core.engine.bench_run import CurvePoint
from moe_studio.core.engine.discovery import EngineInfo
from moe_studio.core.engine.tune_space import Knobs
from moe_studio.core.errors import EngineError
from moe_studio.core.fsutil import atomic_write_text, read_regular_file
from moe_studio.core.plan.planning import Planner

Objective = Literal["pp", "tg", "balanced"]
OBJECTIVES: tuple[Objective, ...] = ("pp", "tg", "balanced")
Status = Literal["ok", "oom", "failed", "stopped"]
JOURNAL_VERSION = 1


@dataclass(frozen=True, slots=True)
class Trial:
    """One measured configuration at one rung.

    Attributes:
        rung: 0 screening (depth 0), 1 finals (the user's depths).
        pp, tg: Geometric means of S_PP and S_TG over the measured depths (tokens/s).
        load: Number of the model load that measured it (trials of one llama-bench process
            share it).
        reused: Read from the journal instead of measured in this run.
    """

    knobs: Knobs
    rung: int
    depths: tuple[int, ...]
    status: Status
    pp: float | None = None
    tg: float | None = None
    points: tuple[CurvePoint, ...] = ()
    seconds: float = 0.0
    load: int = 0
    error: str = ""
    argv: tuple[str, ...] = ()
    reused: bool = False

    @property
    def key(self) -> str:
        return trial_key(self.knobs, self.rung, self.depths)

    def score(self, objective: Objective) -> float | None:
        """Higher is better; None for a trial without the figures the objective needs (a
        trial stopped early has only its first depths: it does not compete)."""
        if self.status != "ok":
            return None
        if objective == "pp":
            return self.pp
        if objective == "tg":
            return self.tg
        if self.pp is None or self.tg is None:
            return None
        return math.sqrt(self.pp * self.tg)

    def to_json(self) -> dict[str, object]:
        return {
            "knobs": self.knobs.to_json(),
            "rung": self.rung,
            "depths": list(self.depths),
            "status": self.status,
            "pp": self.pp,
            "tg": self.tg,
            "points": [[p.n_kv, p.s_pp, p.s_tg] for p in self.points],
            "seconds": round(self.seconds, 3),
            "load": self.load,
            "error": self.error,
            "argv": list(self.argv),
        }

    @classmethod
    def from_json(cls, obj: object) -> Trial | None:
        if not isinstance(obj, dict):
            return None
        knobs = Knobs.from_json(obj.get("knobs"))
        status = obj.get("status")
        if knobs is None or status not in ("ok", "oom", "failed", "stopped"):
            return None
        try:
            points = tuple(
                CurvePoint(int(p[0]), _num(p[1]), _num(p[2])) for p in obj.get("points") or ()
            )
            return cls(
                knobs=knobs,
                rung=int(obj.get("rung", 0)),
                depths=tuple(int(d) for d in obj.get("depths") or (0,)),
                status=status,
                pp=_num(obj.get("pp")),
                tg=_num(obj.get("tg")),
                points=points,
                seconds=float(obj.get("seconds") or 0.0),
                load=int(obj.get("load") or 0),
                error=str(obj.get("error") or ""),
                argv=tuple(str(a) for a in obj.get("argv") or ()),
                reused=True,
            )
        except (TypeError, ValueError, IndexError, OverflowError):
            return None


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def trial_key(knobs: Knobs, rung: int, depths: Sequence[int]) -> str:
    return f"{rung}|{','.join(str(d) for d in depths)}|{knobs.key}"


def fingerprint(planner: Planner, engine: EngineInfo, n_gen: int) -> str:
    """What the trials' figures depend on besides their knobs: model, rig, settings, engine."""
    layout = planner.layout
    data = {
        "model": layout.source,
        "tensors": len(layout.tensors),
        "bytes": sum(t.nbytes for t in layout.tensors),
        "rig": [[d.name, d.kind.value, d.memory_total] for d in planner.rig.all_devices],
        "host": [planner.rig.host.cores_physical, planner.rig.host.ram_total],
        "settings": {
            k: v
            for k, v in planner.settings.to_dict().items()
            if k not in ("ubatch", "batch", "threads", "amb", "split_mode_graph", "port", "host")
        },
        "engine": [engine.path, engine.version],
        "n_gen": n_gen,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Journal:
    """Finished trials in a JSON file, rewritten atomically after each trial.

    Args:
        path: The file (None: keep nothing).
        fingerprint: :func:`fingerprint` of this setup; a journal of another one is not reused.
        resume: Reuse the trials already in the file; otherwise start afresh.
    """

    def __init__(self, path: str | os.PathLike[str] | None, fingerprint: str, resume: bool) -> None:
        self.path = Path(path) if path is not None else None
        self.fingerprint = fingerprint
        self.trials: dict[str, Trial] = {}
        self.loads = 0
        self.note = ""
        if self.path is not None and resume:
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            data = json.loads(read_regular_file(self.path).decode("utf-8", "replace"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.note = (
                f"The tuning journal {self.path} could not be read ({exc}); starting afresh."
            )
            return
        except RecursionError:
            self.note = (
                f"The tuning journal {self.path} is nested too deeply to be a journal; "
                "starting afresh."
            )
            return
        if not isinstance(data, dict) or data.get("v") != JOURNAL_VERSION:
            self.note = (
                f"The tuning journal {self.path} is not one this version reads; starting afresh."
            )
            return
        if data.get("fingerprint") != self.fingerprint:
            self.note = (
                f"The tuning journal {self.path} was written for another model, rig, settings or "
                "engine; its trials are not reused."
            )
            return
        trials = data.get("trials")
        for obj in trials if isinstance(trials, list) else ():
            trial = Trial.from_json(obj)
            if trial is not None:
                self.trials[trial.key] = trial
        self.loads = max((t.load for t in self.trials.values()), default=0)

    def add(self, trial: Trial) -> None:
        self.trials[trial.key] = trial
        self.loads = max(self.loads, trial.load)
        if self.path is None:
            return
        data = {
            "v": JOURNAL_VERSION,
            "fingerprint": self.fingerprint,
            "trials": [t.to_json() for t in self.trials.values()],
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EngineError(
                f"Cannot create the folder of the tuning journal {self.path}: "
                f"{exc.strerror or exc}."
            ) from exc
        atomic_write_text(
            self.path, json.dumps(data, indent=1) + "\n", backup=False, error=EngineError
        )


def journal_path_for(
    profile_or_model: str | os.PathLike[str], cache_dir: Path | None = None
) -> Path:
    """Where a run's journal lives: beside a profile (``name.tune.json``), else in the user cache
    folder under the model's name."""
    source = Path(profile_or_model)
    if source.suffix.lower() == ".json":
        return source.with_name(source.stem + ".tune.json")
    if cache_dir is None:
        import platformdirs

        cache_dir = Path(platformdirs.user_cache_dir("moe-studio"))
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:8]
    return cache_dir / "tune" / f"{source.stem}-{digest}.tune.json"
