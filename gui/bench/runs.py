"""Benchmark runs as kept with a profile: the entry written after a run, and reading entries back.

An entry is :meth:`moe_studio.core.engine.bench_run.BenchOutcome.to_json` (tool, argv, env, points,
seconds) plus what a list of profiles and the run list show without re-reading the curve::

    {"label": "run 2 — experts of 12 layers on CUDA0, -ub 4096",
     "timestamp": "2025-05-02T18:02:11Z",
     "tg_tokens_per_second": 41.2, "pp_tokens_per_second": 1210.5, "n_kv": 0,
     "ctx": 8192, "ubatch": 4096, "engine": "ik_llama.cpp 4840 (8337e4cd3)",
     "complete": true, ...to_json()}

Speeds are taken at the smallest N_KV measured (an empty cache: the number people quote). Entries
written by other tools or by hand are kept as given; :func:`entry_points` reads what it can.
No Qt here: these are plain functions over core values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from moe_studio.core.engine.bench_run import BenchOutcome, BenchTool, CurvePoint, default_depths
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, ROUTED_EXPERT_GROUPS
from moe_studio.core.hardware.devices import CPU_NAME
from moe_studio.core.plan.placement import Plan
from moe_studio.core.plan.settings import Dialect


def _finite(value: float | None) -> float | None:
    """``value`` unless it is missing or not finite (JSON has no NaN; profiles refuse it)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def experts_summary(layout: ModelLayout, plan: Plan) -> str:
    """Where the routed experts are, counted in layers: ``experts of 12 layers on CUDA0``.

    A layer counts for a device when all its expert tensors are there; layers that have only
    some of them on a device are added as ``(+N partly)``.
    """
    per_layer: dict[int, Counter[str]] = {}
    for (layer, group), indices in layout.cells.items():
        if layer == GLOBAL_LAYER or group not in ROUTED_EXPERT_GROUPS:
            continue
        counter = per_layer.setdefault(layer, Counter())
        for i in indices:
            if plan.devices[i]:
                counter[plan.devices[i]] += 1
    if not per_layer:
        return "no routed experts"
    whole: Counter[str] = Counter()
    partly: Counter[str] = Counter()
    for counter in per_layer.values():
        if len(counter) == 1:
            whole[next(iter(counter))] += 1
        else:
            for device in counter:
                partly[device] += 1
    devices = [d for d in dict.fromkeys([*whole, *partly]) if d != CPU_NAME]
    if not devices:
        return "all experts on CPU"
    parts = []
    for device in devices:
        n, some = whole[device], partly[device]
        if n and some:
            text = f"{n} layer{'s' if n != 1 else ''} (+{some} partly)"
        elif n:
            text = f"{n} layer{'s' if n != 1 else ''}"
        else:
            text = f"{some} layer{'s' if some != 1 else ''} partly"
        parts.append(f"{text} on {device}")
    return "experts of " + ", ".join(parts)


def run_label(number: int, layout: ModelLayout, plan: Plan, ubatch: int, tool: BenchTool) -> str:
    """``run 2 — experts of 12 layers on CUDA0, -ub 4096`` (the tool named when llama-bench)."""
    what = "llama-bench, " if tool is BenchTool.BENCH else ""
    return f"run {number} — {what}{experts_summary(layout, plan)}, -ub {ubatch}"


def expected_depths(tool: BenchTool, dialect: Dialect, ctx: int, ubatch: int) -> list[int]:
    """The N_KV values a run will measure (as
    :func:`moe_studio.core.engine.bench_run.build_bench_spec` asks)."""
    ub = max(1, ubatch)
    if tool is BenchTool.SWEEP:
        return list(range(0, max(ctx, ub), ub))
    if dialect == "ik":
        return [0]  # ik's llama-bench has no depth option
    return default_depths(ctx, ub)


def speeds_at_start(points: Sequence[CurvePoint]) -> tuple[float | None, float | None, int | None]:
    """``(S_TG, S_PP, N_KV)`` at the smallest N_KV measured (each None when not measured)."""
    ordered = sorted(points, key=lambda p: p.n_kv)
    tg = next((_finite(p.s_tg) for p in ordered if _finite(p.s_tg) is not None), None)
    pp = next((_finite(p.s_pp) for p in ordered if _finite(p.s_pp) is not None), None)
    measured = (p.n_kv for p in ordered if {_finite(p.s_tg), _finite(p.s_pp)} != {None})
    return tg, pp, next(measured, None)


def benchmark_entry(
    outcome: BenchOutcome,
    *,
    label: str,
    ctx: int,
    ubatch: int,
    engine: str = "",
    now: datetime | None = None,
) -> dict[str, Any]:
    """What :meth:`gui.document.Document.add_benchmark` keeps of a finished run (JSON-safe)."""
    entry: dict[str, Any] = dict(outcome.to_json())
    entry["points"] = [[p.n_kv, _finite(p.s_pp), _finite(p.s_tg)] for p in outcome.points]
    tg, pp, n_kv = speeds_at_start(outcome.points)
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    entry.update(
        {
            "label": label,
            "timestamp": moment.isoformat().replace("+00:00", "Z"),
            "tg_tokens_per_second": tg,
            "pp_tokens_per_second": pp,
            "n_kv": n_kv,
            "ctx": ctx,
            "ubatch": ubatch,
            "engine": engine,
            "complete": not outcome.error,
        }
    )
    if outcome.error:
        entry["error"] = outcome.error
    return entry


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def entry_points(entry: Mapping[str, Any]) -> tuple[CurvePoint, ...]:
    """The curve kept in an entry (``points``: ``[n_kv, s_pp, s_tg]`` rows); bad rows skipped."""
    raw = entry.get("points")
    if not isinstance(raw, list):
        return ()
    out: list[CurvePoint] = []
    for row in raw:
        if not isinstance(row, list) or len(row) != 3:
            continue
        n_kv = _number(row[0])
        if n_kv is None:
            continue
        out.append(CurvePoint(int(n_kv), _number(row[1]), _number(row[2])))
    return tuple(sorted(out, key=lambda p: p.n_kv))


def entry_label(entry: Mapping[str, Any], index: int) -> str:
    """The entry's label, or ``run N`` for entries that have none."""
    label = entry.get("label")
    return label if isinstance(label, str) and label else f"run {index + 1}"


def entry_speed(entry: Mapping[str, Any], key: str) -> float | None:
    """A summary speed of an entry (``tg_tokens_per_second``…), None when absent or not a number."""
    return _number(entry.get(key))


def entry_time(entry: Mapping[str, Any]) -> str:
    """``2025-05-02 18:02`` (local time) from the entry's timestamp, or ""."""
    stamp = entry.get("timestamp")
    if not isinstance(stamp, str):
        return ""
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    if moment.tzinfo is not None:
        moment = moment.astimezone()
    return moment.strftime("%Y-%m-%d %H:%M")
