"""Reading benchmark output: ik's ``llama-sweep-bench`` and both engines' ``llama-bench``.

``llama-sweep-bench`` (ik only, engines.md §7.1) writes its table to stderr among the loader's
lines: one markdown row per KV depth, ``|%6d | %6d | %6d | %8.3f | %8.2f | %8.3f | %8.2f |``, two
more ``%10s`` columns (``RSS HWM``, ``VRAM delta`` in MiB, ``n/a`` when unknown) with
``--sweep-memory``, or one JSON object per line with ``--output-format jsonl``. Both are read
from a whole log, the other lines ignored.

``llama-bench`` (§7.2) writes a markdown table whose columns depend on the parameters that
differ from their defaults (the last two are always ``test`` and ``t/s`` = ``"%.2f ± %.2f"``),
or ``-o json`` (an array), ``-o jsonl`` (mainline only) or ``-o csv``.

Rates printed by C's ``%f`` can be ``inf`` or ``nan`` (a step that took no measurable time);
they are read as such, including inside the engines' not-quite-JSON lines.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from moe_studio.core.errors import MoeStudioError

__all__ = [
    "BenchFormatError",
    "BenchRow",
    "SweepHeader",
    "SweepResult",
    "SweepRow",
    "parse_llama_bench",
    "parse_sweep_bench",
]


class BenchFormatError(MoeStudioError):
    """Benchmark output that cannot be read (no table, a row that contradicts its header)."""


# --------------------------------------------------------------------------------------------
# llama-sweep-bench


@dataclass(frozen=True, slots=True)
class SweepRow:
    """One sweep step: ``pp`` prompt tokens and ``tg`` generated tokens at KV depth ``n_kv``.

    Times in seconds, speeds in tokens per second; the memory columns in MiB, None when the run
    had no ``--sweep-memory`` or the engine printed ``n/a``/``null``.
    """

    pp: int
    tg: int
    n_kv: int
    t_pp: float
    s_pp: float
    t_tg: float
    s_tg: float
    rss_hwm_mib: float | None = None
    vram_delta_mib: float | None = None


@dataclass(frozen=True, slots=True)
class SweepHeader:
    """The ``main: n_kv_max = …`` line (also repeated in every jsonl object)."""

    n_kv_max: int
    n_batch: int
    n_ubatch: int
    flash_attn: int
    n_gpu_layers: int
    n_threads: int
    n_threads_batch: int


@dataclass(frozen=True, slots=True)
class SweepResult:
    """A whole sweep: the settings line and the rows in the order they ran."""

    rows: tuple[SweepRow, ...]
    header: SweepHeader | None = None
    format: str = "md"  # "md" or "jsonl"

    @property
    def has_memory(self) -> bool:
        return any(r.rss_hwm_mib is not None or r.vram_delta_mib is not None for r in self.rows)


_HEADER_KEYS = ("n_kv_max", "n_batch", "n_ubatch", "flash_attn", "n_gpu_layers", "n_threads",
                "n_threads_batch")  # fmt: skip
_SWEEP_HEADER = re.compile(
    r"^\w+: " + r", ".join(rf"{k} = (-?\d+)" for k in _HEADER_KEYS) + r"\s*$"
)
_SWEEP_TABLE_HEAD = re.compile(r"^\|\s*PP\s*\|\s*TG\s*\|\s*N_KV\s*\|")
# C's printf("%f") spells non-finite numbers inf / -inf / nan / -nan, which JSON does not allow.
_C_NONFINITE = re.compile(r"(?<=[:\[,])\s*(-?)(inf|nan)\b", re.IGNORECASE)


def _c_float(text: str) -> float:
    """A number as C printed it (``12.5``, ``inf``, ``-nan``)."""
    t = text.strip().lower()
    if t.lstrip("-+") == "nan":
        return math.nan
    return float(t)


def _optional_mib(text: str) -> float | None:
    t = text.strip()
    return None if t in ("n/a", "", "null", "-") else _c_float(t)


def _loads_c_json(line: str) -> object:
    def fix(m: re.Match[str]) -> str:
        word = "NaN" if m.group(2).lower() == "nan" else "Infinity"
        return f" -{word}" if m.group(1) and word == "Infinity" else f" {word}"

    return json.loads(_C_NONFINITE.sub(fix, line))


def _lines(source: str | Iterable[str]) -> list[str]:
    if isinstance(source, str):
        return source.splitlines()
    return [line.rstrip("\r\n") for line in source]


def _unreadable(tool: str, exc: Exception) -> BenchFormatError:
    """A value the parser could not convert: a number C never prints (``1e400`` as a count,
    ``18'550.17``, thousands of digits) or JSON nested too deeply."""
    reason = "its JSON is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
    return BenchFormatError(
        f"The {tool} output has a value MoE Studio cannot read ({reason}); "
        "was it edited, or cut and pasted from two runs?"
    )


def parse_sweep_bench(source: str | Iterable[str]) -> SweepResult:
    """Read ``llama-sweep-bench`` output (table or jsonl), the loader's lines around it ignored.

    Args:
        source: The whole text, or its lines (an open file works).

    Raises:
        BenchFormatError: no sweep rows were found, or a row has the wrong number of cells.
    """
    try:
        return _parse_sweep_bench(source)
    except (ValueError, OverflowError, RecursionError) as exc:
        raise _unreadable("llama-sweep-bench", exc) from None


def _parse_sweep_bench(source: str | Iterable[str]) -> SweepResult:
    header: SweepHeader | None = None
    rows: list[SweepRow] = []
    fmt = "md"
    in_table = False
    for n, raw in enumerate(_lines(source), start=1):
        line = raw.strip()
        m = _SWEEP_HEADER.match(line)
        if m:
            header = SweepHeader(*(int(v) for v in m.groups()))
            continue
        if line.startswith("{") and '"speed_pp"' in line:
            fmt = "jsonl"
            rows.append(_sweep_json_row(line, n))
            if header is None:
                header = _sweep_json_header(line)
            continue
        if _SWEEP_TABLE_HEAD.match(line):
            in_table = True
            continue
        if not (in_table and line.startswith("|")):
            in_table = False
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if all(set(c) <= {"-", ":"} for c in cells):
            continue  # the |-----|---| rule
        if len(cells) not in (7, 9):
            raise BenchFormatError(
                f"Line {n} of the sweep-bench output has {len(cells)} columns; "
                "expected 7 (or 9 with --sweep-memory)."
            )
        try:
            rows.append(
                SweepRow(
                    pp=int(cells[0]),
                    tg=int(cells[1]),
                    n_kv=int(cells[2]),
                    t_pp=_c_float(cells[3]),
                    s_pp=_c_float(cells[4]),
                    t_tg=_c_float(cells[5]),
                    s_tg=_c_float(cells[6]),
                    rss_hwm_mib=_optional_mib(cells[7]) if len(cells) == 9 else None,
                    vram_delta_mib=_optional_mib(cells[8]) if len(cells) == 9 else None,
                )
            )
        except ValueError as e:
            raise BenchFormatError(
                f"Line {n} of the sweep-bench output is not a row of numbers: {line!r}."
            ) from e
    if not rows:
        raise BenchFormatError(
            "The sweep-bench output has no result rows; the run may have failed before the "
            "first step (look at the end of its log)."
        )
    return SweepResult(tuple(rows), header, fmt)


def _sweep_json_object(line: str, n: int) -> Mapping[str, object]:
    try:
        obj = _loads_c_json(line)
    except ValueError as e:
        raise BenchFormatError(f"Line {n} of the sweep-bench output is not JSON: {e}.") from e
    if not isinstance(obj, dict):
        raise BenchFormatError(f"Line {n} of the sweep-bench output is not a JSON object.")
    return obj


def _num(obj: Mapping[str, object], key: str, n: int) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BenchFormatError(f"Line {n} of the benchmark output has no number {key!r}.")
    return float(value)


def _opt_num(obj: Mapping[str, object], key: str) -> float | None:
    value = obj.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _sweep_json_row(line: str, n: int) -> SweepRow:
    obj = _sweep_json_object(line, n)
    return SweepRow(
        pp=int(_num(obj, "pp", n)),
        tg=int(_num(obj, "tg", n)),
        n_kv=int(_num(obj, "n_kv", n)),
        t_pp=_num(obj, "t_pp", n),
        s_pp=_num(obj, "speed_pp", n),
        t_tg=_num(obj, "t_tg", n),
        s_tg=_num(obj, "speed_tg", n),
        rss_hwm_mib=_opt_num(obj, "rss_hwm_mib"),
        vram_delta_mib=_opt_num(obj, "vram_delta_mib"),
    )


def _sweep_json_header(line: str) -> SweepHeader | None:
    obj = _sweep_json_object(line, 0)
    values = [obj.get(k) for k in _HEADER_KEYS]
    if all(isinstance(v, int) for v in values):
        return SweepHeader(*(int(v) for v in values if isinstance(v, int)))
    return None


# --------------------------------------------------------------------------------------------
# llama-bench


@dataclass(frozen=True, slots=True)
class BenchRow:
    """One ``llama-bench`` test: its label, mean and standard deviation in tokens per second.

    Attributes:
        test: The label as printed: ``pp512``, ``tg128``, ``pp512+tg128``, ik's ``tg128@pp512``
            or mainline's ``pp512 @ d4096``.
        n_prompt: Prompt tokens of the test (0 for a pure generation test).
        n_gen: Generated tokens (0 for a pure prompt test).
        n_depth: Tokens already in the KV cache when the test ran (ik ``-gp``, mainline ``-d``).
        config: Every other column or field, as text (``model``, ``backend``, ``n_ubatch``, …).
        samples_ts: Per-repetition rates (json/jsonl only).
    """

    test: str
    tokens_per_second: float
    stdev: float
    n_prompt: int = 0
    n_gen: int = 0
    n_depth: int = 0
    config: Mapping[str, str] = field(default_factory=dict)
    samples_ts: tuple[float, ...] = ()

    @property
    def model(self) -> str:
        return self.config.get("model", self.config.get("model_type", ""))


_LABEL = re.compile(
    r"^(?:pp(?P<pp>\d+))?(?:\+)?(?:tg(?P<tg>\d+))?"
    r"(?:@pp(?P<gp>\d+)|\s*@\s*d(?P<d>\d+))?$"
)
_TS_CELL = re.compile(r"^\s*(\S+)\s*±\s*(\S+)\s*$")


def _label_counts(label: str) -> tuple[int, int, int]:
    m = _LABEL.match(label.strip())
    if not m or not (m.group("pp") or m.group("tg")):
        return 0, 0, 0
    pp = int(m.group("pp") or 0)
    tg = int(m.group("tg") or 0)
    depth = int(m.group("gp") or m.group("d") or 0)
    return pp, tg, depth


def _label_from_json(obj: Mapping[str, object]) -> str:
    test = obj.get("test")
    if isinstance(test, str) and test:
        return test
    n_prompt = int(_opt_num(obj, "n_prompt") or 0)
    n_gen = int(_opt_num(obj, "n_gen") or 0)
    n_depth = int(_opt_num(obj, "n_depth") or 0)
    if n_prompt and n_gen:
        label = f"pp{n_prompt}+tg{n_gen}"
    elif n_prompt:
        label = f"pp{n_prompt}"
    else:
        label = f"tg{n_gen}"
    return f"{label} @ d{n_depth}" if n_depth else label


def _json_row(obj: Mapping[str, object], n: int) -> BenchRow:
    label = _label_from_json(obj)
    pp, tg, depth = _label_counts(label)
    samples = obj.get("samples_ts")
    config = {
        k: v if isinstance(v, str) else json.dumps(v)
        for k, v in obj.items()
        if k not in ("avg_ts", "stddev_ts", "samples_ts", "samples_ns", "test")
    }
    return BenchRow(
        test=label,
        tokens_per_second=_num(obj, "avg_ts", n),
        stdev=_num(obj, "stddev_ts", n),
        # The label decides, as in the md table: ik's json gives a -gp test "tg32@pp128"
        # n_prompt=128 although only the 32 generated tokens are measured.
        n_prompt=pp,
        n_gen=tg,
        n_depth=depth,
        config=MappingProxyType(config),
        samples_ts=tuple(float(s) for s in samples if isinstance(s, int | float))
        if isinstance(samples, list)
        else (),
    )


def _parse_bench_md(lines: list[str]) -> list[BenchRow]:
    rows: list[BenchRow] = []
    columns: list[str] | None = None
    for n, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line.startswith("|"):
            columns = None if not line else columns
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if columns is None:
            if "t/s" in cells and "test" in cells:
                columns = cells
            continue
        if all(set(c) <= {"-", ":"} for c in cells):
            continue
        if len(cells) != len(columns):
            raise BenchFormatError(
                f"Line {n} of the llama-bench table has {len(cells)} cells for "
                f"{len(columns)} columns."
            )
        values = dict(zip(columns, cells, strict=True))
        ts = _TS_CELL.match(values["t/s"])
        if not ts:
            raise BenchFormatError(
                f"Line {n} of the llama-bench table has no 'mean ± stdev' in its t/s column."
            )
        label = values["test"]
        pp, tg, depth = _label_counts(label)
        config = {k: v for k, v in values.items() if k not in ("test", "t/s")}
        rows.append(
            BenchRow(
                test=label,
                tokens_per_second=_c_float(ts.group(1)),
                stdev=_c_float(ts.group(2)),
                n_prompt=pp,
                n_gen=tg,
                n_depth=depth,
                config=MappingProxyType(config),
            )
        )
    return rows


def _parse_bench_csv(text: str) -> list[BenchRow]:
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for n, record in enumerate(reader, start=2):
        obj: dict[str, object] = {}
        for k, v in record.items():
            if k is None:
                continue
            try:
                obj[k] = int(v) if re.fullmatch(r"-?\d+", v) else v
            except (TypeError, ValueError):
                obj[k] = v
        for key in ("avg_ts", "stddev_ts"):
            value = obj.get(key)
            if isinstance(value, str):
                try:
                    obj[key] = _c_float(value)
                except ValueError as e:
                    raise BenchFormatError(f"Line {n} of the llama-bench csv has no {key}.") from e
        rows.append(_json_row(obj, n))
    return rows


def parse_llama_bench(source: str | Iterable[str]) -> tuple[BenchRow, ...]:
    """Read ``llama-bench`` output in any of its formats (md, json, jsonl, csv), guessed.

    Args:
        source: The whole stdout, or its lines.

    Raises:
        BenchFormatError: no results, or a format that contradicts itself.
    """
    try:
        return _parse_llama_bench(source)
    except (ValueError, OverflowError, RecursionError) as exc:
        raise _unreadable("llama-bench", exc) from None


def _parse_llama_bench(source: str | Iterable[str]) -> tuple[BenchRow, ...]:
    lines = _lines(source)
    text = "\n".join(lines)
    stripped = text.lstrip()
    rows: list[BenchRow]
    if stripped.startswith("["):
        try:
            data = _loads_c_json(stripped)
        except ValueError as e:
            raise BenchFormatError(f"The llama-bench json output cannot be read: {e}.") from e
        if not isinstance(data, list):
            raise BenchFormatError("The llama-bench json output is not an array of results.")
        rows = [_json_row(obj, i) for i, obj in enumerate(data, 1) if isinstance(obj, dict)]
    elif stripped.startswith("{"):
        rows = []
        for n, line in enumerate(lines, start=1):
            if line.strip().startswith("{"):
                try:
                    obj = _loads_c_json(line)
                except ValueError as e:
                    raise BenchFormatError(f"Line {n} of the llama-bench jsonl: {e}.") from e
                if isinstance(obj, dict):
                    rows.append(_json_row(obj, n))
    elif stripped.startswith(("build_commit,", '"build_commit"')) or (
        "," in stripped.split("\n", 1)[0] and "avg_ts" in stripped.split("\n", 1)[0]
    ):
        rows = _parse_bench_csv(stripped)
    else:
        rows = _parse_bench_md(lines)
    if not rows:
        raise BenchFormatError(
            "The llama-bench output has no results; the run may have failed (look at its log)."
        )
    return tuple(rows)
