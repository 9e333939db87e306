"""What the CLI prints about a check or a run: estimate beside the engine's figures, the
diagnosis of a failure with its fixes as options, and the engine probe (``--probe``) that
``plan`` and ``launch`` share."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TextIO

from moe_studio.core.engine.diagnosis import CompareRow, Diagnosis, Fix, FixKind
from moe_studio.core.engine.discovery import EngineInfo
from moe_studio.core.engine.probe import ProbeResult
from moe_studio.core.errors import MoeStudioError
from moe_studio.core.plan.placement import Plan
from moe_studio.core.plan.planning import Planner, PlanResult
from moe_studio.core.units import format_bytes


def print_compare(rows: Sequence[CompareRow], out: TextIO) -> None:
    """The predicted-vs-actual table: ours / engine's (difference) per device and part."""

    def cell(ours: int | None, theirs: int | None) -> str:
        if theirs is None:
            return f"{format_bytes(ours or 0)} / ?"
        diff = theirs - (ours or 0)
        sign = "+" if diff >= 0 else "-"
        return (
            f"{format_bytes(ours or 0)} / {format_bytes(theirs)} ({sign}{format_bytes(abs(diff))})"
        )

    table = [
        [
            r.device[:23],
            cell(r.predicted_weights, r.actual_weights),
            cell(r.predicted_kv, r.actual_kv),
            cell(r.predicted_compute, r.actual_compute),
        ]
        for r in rows
    ]
    head = ["device", "weights", "KV cache", "compute"]
    widths = [max(len(line[i]) for line in [head, *table]) for i in range(4)]
    out.write("\nmemory: ours / engine's (difference)\n")
    for line in [head, *table]:
        cells = [line[0].ljust(max(widths[0], 23))]
        cells += [text.rjust(w) for text, w in zip(line[1:], widths[1:], strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")


def fix_options(fix: Fix) -> str:
    """The ``launch``/``plan`` options that apply ``fix`` by hand."""
    s = fix.settings
    if fix.kind is FixKind.LOWER_UBATCH:
        return f"--ubatch {s.ubatch}" + (f" --batch {s.batch}" if s.batch < 2048 else "")
    if fix.kind is FixKind.QUANTIZE_CACHE:
        if s.cache_type_k == s.cache_type_v:
            return f"--cache {s.cache_type_k}"
        return f"--cache-k {s.cache_type_k} --cache-v {s.cache_type_v}"
    if fix.kind is FixKind.SMALLER_CONTEXT:
        return f"--ctx {s.ctx}"
    layers = sorted({layer for layer, _ in (fix.edit.cells if fix.edit else ())})
    spans: list[tuple[int, int]] = []
    for layer in layers:
        if spans and spans[-1][1] == layer - 1:
            spans[-1] = (spans[-1][0], layer)
        else:
            spans.append((layer, layer))
    return " ".join(f"--pin E:{a}-{b}=CPU" if a != b else f"--pin E:{a}=CPU" for a, b in spans)


def print_diagnosis(diagnosis: Diagnosis, out: TextIO) -> None:
    out.write(f"\nfailed: {diagnosis.sentence}\n")
    if diagnosis.fixes:
        out.write("fixes (add the options to the same command):\n")
        for fix in diagnosis.fixes:
            enough = {True: "", False: " [not enough by our estimate]", None: ""}[fix.sufficient]
            out.write(f"  - {fix.label}{enough}: {fix_options(fix)}\n")
            out.write(f"      {fix.detail}\n")


def probe(
    planner: Planner,
    plan: Plan,
    result: PlanResult,
    engine: EngineInfo,
    *,
    timeout: float,
    record: bool = True,
) -> ProbeResult:
    """Dry-run the plan's command on ``engine``; a measured probe adds a calibration record."""
    from moe_studio.core.engine.launch import build_launch_spec
    from moe_studio.core.engine.probe import run_probe

    spec = build_launch_spec(result, engine, dialect=planner.settings.dialect)
    outcome = run_probe(spec, engine, planner, plan, timeout=timeout)
    if record and outcome.measured:
        from moe_studio.core.engine.calibration import append_record, make_record

        rows = list(outcome.rows)
        entry = make_record(planner.layout, planner.settings, rows, engine=engine.version)
        with contextlib.suppress(MoeStudioError):  # shown anyway; only the learning is lost
            append_record(entry)
    return outcome


def print_probe(outcome: ProbeResult, out: TextIO) -> None:
    """The probe's sentence and, when it has figures, estimate beside engine per device."""
    out.write(f"\ncheck with the engine: {outcome.sentence}\n")
    if outcome.rows:
        print_compare(outcome.rows, out)
    if outcome.diagnosis is not None and outcome.diagnosis.out_of_memory:
        print_diagnosis(outcome.diagnosis, out)
    if outcome.tail and not outcome.measured:
        out.write("last lines of the engine's output:\n")
        for line in outcome.tail:
            out.write(f"  | {line}\n")
