"""Benchmarks of the current plan: ik's ``llama-sweep-bench`` or ``llama-bench`` (engines.md §7).

:func:`build_bench_spec` turns the plan's server command into the benchmark tool's argv, with the
same placement (``-m``, ``--rpc``, ``-ngl``, ``-dev``, ``-ts``, ``-ot``, ``--n-cpu-moe``, cache
types, ``-b``/``-ub``, threads, NUMA, ik's ``-mla``/``-amb``/``-rtr``) and the same environment
and ``numactl`` prefix as the server:

- ``llama-sweep-bench`` (ik) takes the server's common options as they are, minus the server-only
  ones (``--host``, ``--port``, ``-np``, ``--metrics`` …), plus ``--output-format jsonl``. It
  measures prompt (``S_PP``) and generation (``S_TG``) speed at KV depths ``0, ub, 2·ub … < -c``.
- ``llama-bench`` has its own option spellings: lists separated by ``/`` (``-ts``, ``-dev``),
  mainline's ``-ot`` rules joined by ``;`` (a repeated option means another test there), ``-fa
  0|1`` on ik, ``-mmp 0`` / ``-lm none`` for no mmap. It has no ``-c``: mainline measures at the
  depths ``-d 0,¼c,½c,¾c``; ik's has no depth option, so it measures at depth 0 only. Output:
  ``-o jsonl`` (mainline) or ``-o json`` (ik has no jsonl).

:class:`BenchRun` runs the tool in the background (reader threads), cancellable with
:meth:`BenchRun.cancel` (SIGTERM to its process group, then SIGKILL), and parses the result with
:mod:`moe_studio.core.engine.bench_results`. :func:`curve` reduces either tool's result to S_PP and
S_TG against N_KV, the plot of the benchmark panel.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from moe_studio.core.engine.bench_results import (
    BenchFormatError,
    BenchRow,
    SweepResult,
    parse_llama_bench,
    parse_sweep_bench,
)
from moe_studio.core.engine.discovery import EngineInfo
from moe_studio.core.engine.launch import ExitInfo, LogHistory, ManagedProcess, build_launch_spec
from moe_studio.core.errors import EngineError
from moe_studio.core.plan.cmdline import shell_join
from moe_studio.core.plan.planning import PlanResult
from moe_studio.core.plan.settings import Dialect


class BenchTool(StrEnum):
    SWEEP = "sweep-bench"  # ik's llama-sweep-bench
    BENCH = "bench"  # llama-bench


# Server-only options: (takes a value?). Dropped from benchmark command lines.
_SERVER_ONLY: dict[str, bool] = {
    "--host": True,
    "--port": True,
    "-np": True,
    "--parallel": True,
    "-a": True,
    "--alias": True,
    "--api-key": True,
    "--api-key-file": True,
    "-to": True,
    "--timeout": True,
    "--threads-http": True,
    "--slot-save-path": True,
    "--ssl-key-file": True,
    "--ssl-cert-file": True,
    "--chat-template": True,
    "--chat-template-file": True,
    "--path": True,
    "--log-format": True,
    "-lv": True,
    "--verbosity": True,
    "--log-verbosity": True,
    "-sps": True,
    "--slot-prompt-similarity": True,
    "--reasoning-format": True,
    "--reasoning-budget": True,
    "-cram": True,
    "--cache-ram": True,
    "--metrics": False,
    "--slots": False,
    "--no-slots": False,
    "--props": False,
    "--jinja": False,
    "--no-webui": False,
    "-cb": False,
    "--cont-batching": False,
    "-nocb": False,
    "--no-cont-batching": False,
    "--embedding": False,
    "--embeddings": False,
}
# llama-server options with a value (the rest of what build_command writes are switches).
_WITH_VALUE = {
    "-m", "--rpc", "-ngl", "-dev", "-ts", "-ot", "--n-cpu-moe", "-c", "-fa", "-ctk", "-ctv",
    "-b", "-ub", "-t", "-tb", "--numa", "-mla", "-amb", "-sm", "-fit", "-lm", "-cuda", "-mg",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class BenchSpec:
    """How to run one benchmark: the tool, its argv, environment and prefix (like the server's)."""

    tool: BenchTool
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    prefix: tuple[str, ...] = ()
    cwd: str | None = None
    dialect: Dialect = "ik"
    notes: tuple[str, ...] = ()

    @property
    def full_argv(self) -> tuple[str, ...]:
        return (*self.prefix, *self.argv)

    @property
    def merge_stderr(self) -> bool:
        """Read stdout and stderr as one stream: sweep-bench writes its table to stderr among
        the loader's lines; llama-bench's results must be read from stdout alone."""
        return self.tool is BenchTool.SWEEP

    def shell(self) -> str:
        return shell_join(self.full_argv, dict(self.env))


def _options(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """``(flag, value)`` pairs of a llama-server argv (``argv[0]`` excluded)."""
    out: list[tuple[str, str | None]] = []
    i = 1
    while i < len(argv):
        flag = argv[i]
        takes = flag in _WITH_VALUE or _SERVER_ONLY.get(flag, False)
        if flag == "-fa":  # a bare -fa in a command for an ik build before 3985
            takes = i + 1 < len(argv) and argv[i + 1] in ("on", "off", "auto", "0", "1")
        if takes and i + 1 < len(argv):
            out.append((flag, argv[i + 1]))
            i += 2
        else:
            out.append((flag, None))
            i += 1
    return out


def default_depths(ctx: int, ubatch: int, points: int = 4) -> list[int]:
    """KV depths for llama-bench: ``0, c/points, …`` (multiples of ``ubatch``, below ``ctx``)."""
    out: list[int] = []
    for k in range(points):
        d = ctx * k // points // max(1, ubatch) * max(1, ubatch)
        if d not in out and d + ubatch <= max(ctx, ubatch):
            out.append(d)
    return out or [0]


def build_bench_spec(
    result: PlanResult,
    engine: EngineInfo,
    *,
    dialect: Dialect,
    tool: BenchTool | None = None,
    ctx: int | None = None,
    ubatch: int | None = None,
    n_gen: int | None = None,
    depths: Sequence[int] | None = None,
    repetitions: int = 2,
    cwd: str | None = None,
) -> BenchSpec:
    """The benchmark of a plan's command on ``engine`` (sweep-bench on ik, llama-bench else).

    Args:
        ctx: ``-c`` for sweep-bench and the depth range of llama-bench (default: the plan's).
        ubatch: ``-ub`` and the prompt length per step (default: the plan's).
        n_gen: Tokens generated per step (default ``ubatch / 4``, as sweep-bench does).
        depths: llama-bench (mainline) KV depths (default :func:`default_depths`).
        repetitions: llama-bench ``-r``.

    Raises:
        EngineError: no command, the tool is not beside the engine, or the tool does not exist
            for this engine (sweep-bench is ik's).
    """
    launch = build_launch_spec(result, engine, dialect=dialect, cwd=cwd)
    assert result.command is not None  # build_launch_spec raised otherwise
    if tool is None:
        tool = BenchTool.SWEEP if dialect == "ik" else BenchTool.BENCH
    if tool is BenchTool.SWEEP and dialect != "ik":
        raise EngineError("llama-sweep-bench is an ik_llama.cpp tool; use llama-bench instead.")
    binary = engine.helper(tool.value)
    if binary is None:
        name = "llama-sweep-bench" if tool is BenchTool.SWEEP else "llama-bench"
        raise EngineError(
            f"{name} was not found beside {engine.path}; build it (target {name}) or choose an "
            "engine folder that has it."
        )
    options = _options(result.command.argv)
    plan_ctx = next((int(v) for f, v in options if f == "-c" and v), 4096)
    plan_ub = next((int(v) for f, v in options if f == "-ub" and v), 512)
    ctx = ctx or plan_ctx
    ub = ubatch or plan_ub
    tg = n_gen or max(1, ub // 4)
    notes = list(launch.notes)
    if tool is BenchTool.SWEEP:
        argv = _sweep_argv(binary, options, ctx, ub, tg)
    else:
        argv = _bench_argv(
            binary, options, dialect, ub, tg, depths or default_depths(ctx, ub), repetitions, notes
        )
    env = MappingProxyType(dict(launch.env))
    return BenchSpec(tool, tuple(argv), env, launch.prefix, cwd, dialect, tuple(notes))


def _sweep_argv(
    binary: str, options: list[tuple[str, str | None]], ctx: int, ub: int, tg: int
) -> list[str]:
    argv = [binary]
    batch_seen = False
    for flag, value in options:
        if flag in _SERVER_ONLY or flag in ("-c", "-ub", "-n", "--output-format"):
            continue
        if flag == "-b" and value is not None:
            batch_seen = True
            argv += [flag, str(max(int(value), ub))]
        else:
            argv += [flag] if value is None else [flag, value]
    argv += ["-c", str(ctx), "-ub", str(ub), "-n", str(tg)]
    if not batch_seen:
        argv += ["-b", str(max(2048, ub))]
    return [*argv, "--output-format", "jsonl"]


def _bench_argv(
    binary: str,
    options: list[tuple[str, str | None]],
    dialect: Dialect,
    ub: int,
    tg: int,
    depths: Sequence[int],
    repetitions: int,
    notes: list[str],
) -> list[str]:
    ik = dialect == "ik"
    argv = [binary]
    rules: list[str] = []
    dropped: list[str] = []
    for flag, value in options:
        v = value or ""
        if flag in _SERVER_ONLY or flag in ("-c", "-fit"):
            continue
        if flag in ("-m", "-ngl", "-ctk", "-ctv", "-b", "-t", "--numa", "-mla", "-amb", "-sm"):
            argv += [flag, v if flag != "-b" else str(max(int(v), ub))]
        elif flag == "-ub":
            continue  # written below
        elif flag == "--rpc":
            argv += ["-rpc" if ik else "--rpc", v]
        elif flag == "-ts":
            argv += ["-ts", v.replace(",", "/")]
        elif flag == "-dev":
            if ik:
                dropped.append(f"-dev {v}")
            else:
                argv += ["-dev", v.replace(",", "/")]
        elif flag == "-ot":
            rules.append(v)
        elif flag in ("-cmoe", "--n-cpu-moe"):
            count = "999" if flag == "-cmoe" else v
            argv += ["--n-cpu-moe" if ik else "-ncmoe", count]
        elif flag in ("-fa", "-no-fa"):
            on = flag == "-fa" and (value is None or v in ("on", "1", "auto"))
            argv += ["-fa", ("1" if on else "0") if ik else ("on" if on else "off")]
        elif flag == "-fmoe" and ik:
            argv += ["-fmoe", "1"]
        elif flag == "--no-mmap":
            argv += ["-mmp", "0"] if ik else ["-lm", "none"]
        elif flag == "-lm" and not ik:
            argv += ["-lm", v]
        elif flag == "-rtr" and ik:
            argv += ["-rtr", "1"]
        elif flag == "--merge-qkv" and ik:
            argv += ["-mqkv"]
        elif flag == "-nkvo":
            argv += ["-nkvo", "1"]
        elif flag == "-cuda" and ik:
            argv += ["-cuda", v]
        else:
            dropped.append(flag if value is None else f"{flag} {value}")
    if rules:
        if ik:  # ik's llama-bench accumulates repeated -ot like the server
            for rule in rules:
                argv += ["-ot", rule]
        else:  # mainline: ';' within one value; a repeated -ot would be another test
            argv += ["-ot", ";".join(rules)]
    argv += ["-ub", str(ub), "-p", str(ub), "-n", str(tg), "-r", str(max(1, repetitions))]
    if not ik:
        argv += ["-d", ",".join(str(d) for d in depths)]
    argv += ["-o", "json" if ik else "jsonl"]
    if dropped:
        notes.append(f"llama-bench has no equivalent of {', '.join(dropped)}; left out.")
    return argv


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """Speeds at one KV depth (tokens/s; None where the run did not measure it)."""

    n_kv: int
    s_pp: float | None
    s_tg: float | None


def curve(result: SweepResult | Sequence[BenchRow]) -> tuple[CurvePoint, ...]:
    """S_PP and S_TG against N_KV, from either tool's result, by depth."""
    if isinstance(result, SweepResult):
        return tuple(CurvePoint(r.n_kv, r.s_pp, r.s_tg) for r in result.rows)
    pp: dict[int, float] = {}
    tg: dict[int, float] = {}
    for row in result:
        if row.n_prompt and not row.n_gen:
            pp[row.n_depth] = row.tokens_per_second
        elif row.n_gen and not row.n_prompt:  # also ik's -gp "tg32@pp128" (depth 128)
            tg[row.n_depth] = row.tokens_per_second
    return tuple(CurvePoint(d, pp.get(d), tg.get(d)) for d in sorted(set(pp) | set(tg)))


@dataclass(frozen=True, slots=True)
class BenchOutcome:
    """A finished (or cancelled) benchmark.

    Attributes:
        result: The parsed output (None when the run failed or was cancelled before a row).
        points: :func:`curve` of the result.
        error: Why there is no result, as a sentence ("" when there is one).
    """

    spec: BenchSpec
    exit: ExitInfo
    result: SweepResult | tuple[BenchRow, ...] | None
    points: tuple[CurvePoint, ...]
    log: str
    error: str = ""
    cancelled: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        """What to keep with a profile: the tool, its command and the curve."""
        return {
            "tool": self.spec.tool.value,
            "argv": list(self.spec.full_argv),
            "env": dict(self.spec.env),
            "points": [[p.n_kv, p.s_pp, p.s_tg] for p in self.points],
            "seconds": round(self.seconds, 3),
        }


class BenchRun(ManagedProcess):
    """A benchmark process; :meth:`run` blocks until it ends, :meth:`cancel` stops it."""

    def __init__(self, spec: BenchSpec, *, base_env: Mapping[str, str] | None = None) -> None:
        env = dict(os.environ if base_env is None else base_env)
        env.update(spec.env)
        super().__init__(
            spec.full_argv,
            env=env,
            cwd=spec.cwd,
            merge_stderr=spec.merge_stderr,
            history=LogHistory(),
            name=Path(spec.argv[0]).name,
        )
        self.spec = spec
        self._cancelled = False

    def cancel(self, timeout: float = 5.0) -> ExitInfo:
        self._cancelled = True
        return self.stop(timeout)

    def run(
        self,
        *,
        cancelled: Callable[[], bool] | None = None,
        on_output: Callable[[str], None] | None = None,
        poll: float = 0.2,
    ) -> BenchOutcome:
        """Start (if needed), wait for the end while passing output on, parse.

        A KeyboardInterrupt (Ctrl-C in the CLI) cancels the run and is re-raised.
        """
        if self.pid is None:
            self.start()
        t0 = time.monotonic()
        try:
            while True:
                for _, text in self.output(poll):
                    if on_output is not None:
                        on_output(text)
                if cancelled is not None and cancelled():
                    self.cancel()
                info = self.poll()
                if info is not None:
                    break
        except KeyboardInterrupt:
            self.cancel()
            raise
        for _, text in self.output():
            if on_output is not None:
                on_output(text)
        return self._outcome(info, time.monotonic() - t0)

    def _outcome(self, info: ExitInfo, seconds: float) -> BenchOutcome:
        return bench_outcome(
            self.spec,
            info,
            self.history.text(),
            self.stdout_text,
            cancelled=self._cancelled,
            seconds=seconds,
        )


def bench_outcome(
    spec: BenchSpec,
    ended: ExitInfo,
    log: str,
    stdout: str = "",
    *,
    cancelled: bool = False,
    seconds: float = 0.0,
) -> BenchOutcome:
    """Parse a finished run (pure: a Qt process wrapper calls this too).

    Args:
        log: All output (for sweep-bench: stdout and stderr merged, see
            :attr:`BenchSpec.merge_stderr`).
        stdout: stdout alone (llama-bench's results).
    """
    result: SweepResult | tuple[BenchRow, ...] | None = None
    error = ""
    try:
        if spec.tool is BenchTool.SWEEP:
            result = parse_sweep_bench(log)
        else:
            result = parse_llama_bench(stdout)
    except BenchFormatError as exc:
        error = str(exc)
    points = curve(result) if result is not None else ()
    if cancelled:
        kept = f"; the {len(points)} depths measured so far were kept" if points else ""
        error = f"The benchmark was cancelled{kept}."
    elif not ended.normal:
        tail = " | ".join(line.strip() for line in log.strip().splitlines()[-3:])
        error = f"{ended.message} Last lines: {tail}"
    return BenchOutcome(spec, ended, result, points, log, error, cancelled, seconds)


def run_bench(
    spec: BenchSpec,
    *,
    cancelled: Callable[[], bool] | None = None,
    on_output: Callable[[str], None] | None = None,
) -> BenchOutcome:
    """Run ``spec`` to its end (blocking); see :meth:`BenchRun.run`."""
    return BenchRun(spec).run(cancelled=cancelled, on_output=on_output)
