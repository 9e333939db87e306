"""``llama-server`` command lines for ik_llama.cpp and mainline llama.cpp: build and import.

A command is an argv list, never a shell string (display it with :func:`shell_join`). Building
follows engines.md §10: ``-m`` is the first shard, ``-c`` always, ``-fa on`` (never a bare ``-fa``,
never ``-fmoe``), ``--rpc`` before any rule that names an RPC buffer, ``-fit off`` for mainline
with a manual placement. An option the dialect lacks is a :class:`DialectError`, never a
silently dropped flag. For an older ik build (:attr:`Settings.engine_build`) each flag is written
the way that build accepts it (``engine_builds.IK_FLAGS``): a bare ``-fa`` and ``-fmoe`` before
build 3928, ``-no-fa`` until 3985, ``RPC[host:port]`` buffer names before 4033; a flag the build
lacks is left out with a note, or refused when the placement depends on it (``-ot``, ``-dev``,
``-sm graph``). Import parses a pasted command (quotes, line continuations, several
``-ot``, comma lists, ``-cmoe``/``--n-cpu-moe``, ``-ngl``, ``-ts``, ``-dev``, ``--rpc`` …) back into
plan and settings; flags we do not model are kept verbatim and re-emitted.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path

from moe_studio.core.errors import CommandError, DialectError
from moe_studio.core.gguf.ggml_types import CACHE_TYPES_IK, CACHE_TYPES_MAINLINE
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.hardware.devices import CPU_NAME, Device, DeviceKind, Rig, rpc_name
from moe_studio.core.plan import engine_builds as builds
from moe_studio.core.plan.engine_options import split_options
from moe_studio.core.plan.layers import (
    LayerSplit,
    engine_layer_devices,
    ik_tensor_split,
    mainline_tensor_split,
    plan_layer_split,
)
from moe_studio.core.plan.overrides import Overrides, Rule, generate, resolve
from moe_studio.core.plan.placement import NO_DEVICE_NOTE, Plan, plan_from_mapping
from moe_studio.core.plan.settings import Dialect, Settings
from moe_studio.core.remote.urls import is_remote

DEFAULT_EXECUTABLE = "llama-server"


@dataclass(frozen=True, slots=True)
class Command:
    """A ready-to-run command: argv, extra environment, and what the builder wants you to know."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    split: LayerSplit | None = None
    overrides: Overrides = field(default_factory=Overrides)

    def shell(self) -> str:
        return shell_join(self.argv, self.env)


def shell_join(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    """A POSIX shell rendering for display and copying (``VAR=value cmd 'arg with space'``)."""
    prefix = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
    return " ".join([*prefix, *(shlex.quote(a) for a in argv)])


def model_argument(layout: ModelLayout) -> str:
    """``-m`` value: the first shard, the published file name for a catalog layout, or where the
    download command puts a remote model's first shard."""
    if layout.shard_paths and is_remote(layout.source):
        from moe_studio.core.remote.quants import download_hint

        return download_hint(layout.source)[1]
    if layout.shard_paths:
        return layout.shard_paths[0]
    count = max((t.shard for t in layout.tensors), default=0) + 1
    stem = layout.source.removeprefix("catalog:").replace("@", "-")
    return f"{stem}-00001-of-{count:05d}.gguf" if count > 1 else f"{stem}.gguf"


def _fmt_ts(values: Sequence[float]) -> str:
    def one(v: float) -> str:
        text = f"{v:.6g}"
        return text if "e" not in text else f"{v:.6f}"

    return ",".join(one(v) for v in values)


def _check_dialect(settings: Settings, layout: ModelLayout, gpu_like: int) -> None:
    ik_only = []
    if settings.dialect == "mainline":
        if settings.mla is not None:
            ik_only.append("-mla (MLA mode)")
        if settings.amb is not None:
            ik_only.append("-amb (attention max batch)")
        if settings.rtr:
            ik_only.append("-rtr (run-time repack)")
        if settings.merge_qkv:
            ik_only.append("--merge-qkv")
        if settings.split_mode_graph:
            ik_only.append("-sm graph")
        for name in (settings.cache_type_k, settings.cache_type_v):
            if name.lower() not in (c.lower() for c in CACHE_TYPES_MAINLINE):
                ik_only.append(f"cache type {name}")
        if ik_only:
            raise DialectError(
                f"mainline llama.cpp has no {', '.join(ik_only)}; these are ik_llama.cpp options. "
                "Switch the dialect to ik or turn them off."
            )
    else:
        for name in (settings.cache_type_k, settings.cache_type_v):
            if name.lower() not in (c.lower() for c in CACHE_TYPES_IK):
                raise DialectError(f"ik_llama.cpp has no KV cache type {name}.")
    if settings.split_mode_graph and gpu_like < 2:
        raise CommandError(
            "-sm graph needs at least two GPUs in the plan (ik_llama.cpp refuses it otherwise)."
        )
    if settings.merge_qkv and not layout.qkv_types_match():
        raise CommandError(
            "--merge-qkv needs Q, K and V of the same type in every layer; this model's differ, "
            "so ik_llama.cpp cannot merge them."
        )
    if not settings.flash_attn and settings.cache_type_v.lower() not in ("f16", "f32", "bf16"):
        raise CommandError(
            f"A quantized V cache ({settings.cache_type_v}) needs flash attention; turn -fa on "
            "or use an f16 V cache."
        )


def _build_name(build: int | None) -> str:
    return f"ik_llama.cpp build {build}" if build is not None else "the newest ik_llama.cpp"


def _change(change: builds.BuildChange) -> str:
    return f"build {change.build}, {change.date}, PR #{change.pr}"


def _lacks(build: int | None, flag: str, change: builds.BuildChange) -> str:
    return f"{_build_name(build)} has no {flag} (it came with {_change(change)})"


def _check_build(settings: Settings, layout: ModelLayout) -> None:
    """Refuse what an old ik build cannot do when the plan depends on it."""
    build = settings.engine_build
    if not settings.is_ik or build is None:
        return
    for change, name in ((builds.Q6_0_CACHE, "q6_0"), (builds.Q8_KV_CACHE, "q8_kv")):
        if not builds.has(build, change) and name in (
            settings.cache_type_k.lower(),
            settings.cache_type_v.lower(),
        ):
            raise CommandError(
                f"{_lacks(build, f'KV cache type {name}', change)}; choose another cache type "
                "or plan for a newer build."
            )
    if settings.split_mode_graph and not builds.has(build, builds.SPLIT_MODE_GRAPH):
        raise CommandError(
            f"{_lacks(build, '-sm graph', builds.SPLIT_MODE_GRAPH)}; turn the graph split off "
            "(-sm layer) or plan for a newer build."
        )
    if settings.mla is not None and layout.hparams.is_mla:
        if not builds.has(build, builds.MLA_TAKES_VALUE):
            raise CommandError(
                f"{_lacks(build, '-mla N', builds.MLA_TAKES_VALUE)}; leave MLA at the engine's "
                "default or plan for a newer build."
            )
        if settings.mla == 3 and not builds.has(build, builds.MLA_3):
            raise CommandError(
                f"{_lacks(build, '-mla 3', builds.MLA_3)}; use -mla 1 or 2, or plan for a "
                "newer build."
            )


_RPC_BUFFER = re.compile(r"RPC(\d+)\[(.*)\]")
_OLD_RPC_BUFFER = re.compile(r"RPC\[(.*)\]")


def _engine_rpc_name(name: str, build: int | None) -> str:
    """``name`` as ``build`` calls an RPC buffer: ``RPC[host:port]`` before build 4033."""
    m = _RPC_BUFFER.fullmatch(name)
    if m is None or builds.has(build, builds.RPC_DEVICE_NAMES):
        return name
    if m.group(1) != "0":
        raise CommandError(
            f"{name} is device {m.group(1)} of an rpc-server; {_build_name(build)} uses one "
            f"device per rpc-server (several came with {_change(builds.RPC_DEVICE_NAMES)}). "
            "Plan for a newer build."
        )
    return f"RPC[{m.group(2)}]"


# Spellings of the build-dependent flags (engine_builds.IK_FLAGS) that extra arguments may use.
_IK_FLAG_ALIASES = {
    "--run-time-repack": "-rtr",
    "--fused-moe": "-fmoe",
    "--override-tensor": "-ot",
    "--attention-max-batch": "-amb",
    "--cpu-moe": "-cmoe",
    "-ncmoe": "--n-cpu-moe",
    "--offload-only-active-experts": "-ooae",
    "--no-offload-only-active-experts": "-no-ooae",
    "--grouped-expert-routing": "-ger",
    "--no-flash-attn": "-no-fa",
    "--no-fused-moe": "-no-fmoe",
    "--device": "-dev",
    "-mqkv": "--merge-qkv",
    "--cuda-params": "-cuda",
}


def _left_out(build: int | None, shown: str, flag: str) -> str:
    """Why ``build`` does not get ``shown`` (an option and its values)."""
    since, until = builds.IK_FLAGS[flag]
    if not builds.has(build, since):
        return f"{shown} left out: {_lacks(build, flag, since)}."
    assert until is not None
    return (
        f"{shown} left out: {_build_name(build)} no longer accepts {flag} "
        f"({_change(until)}: {until.what})."
    )


def _extra_for_build(extra: Sequence[str], build: int | None) -> tuple[list[str], list[str]]:
    """Extra arguments an ik build accepts, and a note for each one left out."""
    kept: list[str] = []
    notes: list[str] = []
    for group in split_options(list(extra), "ik"):
        flag = group[0].partition("=")[0] if group[0].startswith("--") else group[0]
        flag = _IK_FLAG_ALIASES.get(flag, flag)
        if flag in builds.IK_FLAGS and not builds.accepts(build, flag):
            notes.append(_left_out(build, " ".join(group), flag))
        else:
            kept += group
    return kept, notes


def unlisted_options(argv: Sequence[str], options: frozenset[str], dialect: Dialect) -> str:
    """A note naming the options of ``argv`` (executable first) that an engine's ``--help``
    does not list (``options``), or "" (also when the help was not read).

    A note, not a refusal: a help text can omit options the engine accepts (ik build 3737
    accepts ``-ot`` and ``-rtr`` and lists neither).
    """
    if not options:
        return ""
    missing: list[str] = []
    for group in split_options(list(argv[1:]), dialect):
        token = group[0]
        if not token.startswith("-") or token[1:2].isdigit():
            continue
        name = token.partition("=")[0] if token.startswith("--") else token
        if name not in options and name not in missing:
            missing.append(name)
    if not missing:
        return ""
    return (
        f"The engine's --help does not list {', '.join(missing)}, which the command uses; "
        "if it stops with 'unknown argument', plan for that engine's build or remove them."
    )


def _dev_names(split: LayerSplit, rig: Rig, dialect: Dialect, rpc: Sequence[str]) -> list[str]:
    if dialect == "ik":
        return list(split.devices)
    # mainline -dev takes device names: RPC<n> counts every --rpc endpoint in order.
    names = []
    for name in split.devices:
        dev = rig.device(name)
        if dev is not None and dev.kind is DeviceKind.RPC:
            names.append(f"RPC{rpc.index(dev.endpoint)}")
        else:
            names.append(name)
    return names


def default_device_list(
    rig: Rig, rpc_endpoints: Sequence[str], *, rpc_first: bool = True
) -> list[str]:
    """The engine's device list without ``-dev``: RPC servers first, then the GPUs (ik builds
    before 4027: the GPUs, then the RPC servers)."""
    rpcs = [rpc_name(e) for e in rpc_endpoints]
    gpus = [d.name for d in rig.gpus]
    return rpcs + gpus if rpc_first else gpus + rpcs


def build_command(
    layout: ModelLayout,
    plan: Plan,
    rig: Rig,
    settings: Settings,
    *,
    executable: str = DEFAULT_EXECUTABLE,
    model_path: str | None = None,
) -> Command:
    """The argv that runs ``plan`` on ``rig`` with ``settings``.

    Raises:
        DialectError: an option the chosen engine does not have.
        CommandError: a combination the engine refuses (``-sm graph`` on one GPU, …).
    """
    split = plan_layer_split(layout, plan, rig, settings)
    _check_dialect(settings, layout, len(split.devices))
    _check_build(settings, layout)
    rpc_split = [
        d
        for d in split.devices
        if (dev := rig.device(d)) is not None and dev.kind is DeviceKind.RPC
    ]
    n_head = max(layout.hparams.head_count or (0,))
    if settings.split_mode_graph and settings.is_ik and layout.hparams.is_mla and n_head % 4:
        raise CommandError(
            f"ik_llama.cpp's -sm graph splits MLA attention in groups of 4 heads and this model "
            f"has {n_head}; the engine stops at load (GGML_ASSERT(nr % granularity == 0) in "
            "create_split). Use -sm layer for this model."
        )
    if settings.split_mode_graph and rpc_split:
        raise CommandError(
            f"-sm graph splits layers across CUDA GPUs only; with RPC devices ({rpc_split[0]}) "
            "ik_llama.cpp keeps every split weight twice on the first device and, in our test of "
            "build 4840, crashed the rpc-server at warm-up. Use -sm layer with RPC devices."
        )
    unknown = sorted({d for d in plan.used_devices() if rig.device(d) is None})
    if unknown:
        raise CommandError(
            f"The plan puts tensors on {', '.join(unknown)}, which the rig does not have; "
            "add the device to the rig or move those cells."
        )
    notes = list(split.notes)
    dialect = settings.dialect
    if dialect == "mainline" and layout.duplicate_keys:
        # ggml/src/gguf.cpp stops at the first repeated key: "duplicate key '%s' for tensors …".
        keys = ", ".join(repr(k) for k in layout.duplicate_keys[:3])
        notes.append(
            f"mainline llama.cpp refuses this file: duplicate key {keys} (the load fails with "
            '"duplicate key"); ik_llama.cpp reads it (first value wins). Use ik_llama.cpp, '
            "or rewrite the file without the repeated key."
        )
    ik = dialect == "ik"
    build = settings.engine_build if ik else None

    def ik_has(change: builds.BuildChange) -> bool:
        return ik and builds.has(build, change)

    overrides = generate(
        layout,
        plan,
        split,
        dialect,
        graph_mode=settings.split_mode_graph,
        cpu_moe_flags=not ik or ik_has(builds.CPU_MOE_FLAGS),
    )
    if ik and overrides.rules and not ik_has(builds.OVERRIDE_TENSOR):
        raise CommandError(
            f"{_lacks(build, '-ot', builds.OVERRIDE_TENSOR)}, and this plan moves tensors off "
            "their layer's device; keep each layer whole or plan for a newer build."
        )
    rpc_first = not ik or ik_has(builds.RPC_FIRST)
    rpc = [d.endpoint for d in rig.rpc_devices if d.name in split.devices]
    if not rpc_first:
        # Old ik builds put the RPC servers after the GPUs in --rpc order: follow the plan's.
        rpc = [
            dev.endpoint
            for d in split.devices
            if (dev := rig.device(d)) is not None and dev.kind is DeviceKind.RPC
        ]
    argv: list[str] = [executable, "-m", model_path or model_argument(layout)]
    if rpc:
        argv += ["--rpc", ",".join(rpc)]
    argv += ["-ngl", str(split.ngl)]
    if split.devices:
        default = default_device_list(rig, rpc, rpc_first=rpc_first)
        has_dev = not ik or ik_has(builds.DEVICE_FLAG)
        if (
            (rpc and has_dev)
            or list(split.devices) != default[: len(split.devices)]
            or len(default) != len(split.devices)
        ):
            if not has_dev:
                raise CommandError(
                    f"{_lacks(build, '-dev', builds.DEVICE_FLAG)}: it uses every GPU, then the "
                    f"RPC servers ({', '.join(default)}), and this plan uses "
                    f"{', '.join(split.devices)}. Use every device in that order, or plan for a "
                    "newer build."
                )
            is_rpc = [getattr(rig.device(d), "kind", None) is DeviceKind.RPC for d in split.devices]
            if not rpc_first and any(a and not b for a, b in pairwise(is_rpc)):
                raise CommandError(
                    f"{_build_name(build)} puts RPC devices after the GPUs whatever -dev says "
                    f"(fixed in {_change(builds.RPC_FIRST)}), and this plan puts an RPC device "
                    "first; give the first layers to a GPU or plan for a newer build."
                )
            names = [
                _engine_rpc_name(n, build) if ik else n
                for n in _dev_names(split, rig, dialect, rpc)
            ]
            if dialect == "ik" and any("-" in n for n in names):
                notes.append(
                    "ik_llama.cpp rejects -dev values containing '-' (a host name with a dash); "
                    "use the RPC server's IP address instead."
                )
            argv += ["-dev", ",".join(names)]
        ts: list[float] = []
        if len(split.devices) > 1:
            # ik fills the GPUs by layer size from build 4327; before, it split the layers by
            # count over the -ts shares, as mainline does (layers.engine_layer_devices)
            ts = list(
                ik_tensor_split(layout, settings, split)
                if dialect == "ik" and ik_has(builds.LAYER_SIZE_SPLIT)
                else mainline_tensor_split(layout, split)
            )
        if ik and not ik_has(builds.DEVICE_FLAG) and not rig.gpus:
            # A CPU-only ik build before -dev (3933) counts the CPU itself as device 0 beside
            # its RPC servers (llama_get_device_count starts at 1, src/llama.cpp at 58f08e43) and
            # would give it layer 0 by its share of "free memory": a zero share keeps it off.
            ts = [0.0, *(ts or [1.0] * len(split.devices))]
        if ts:
            argv += ["-ts", _fmt_ts(ts)]
    elif rig.devices:
        notes.append(
            "The plan keeps every tensor on the CPU, so the command offloads nothing (-ngl 0)."
        )
    else:
        notes.append(NO_DEVICE_NOTE)
    if overrides.n_cpu_moe:
        if overrides.n_cpu_moe >= 999:
            argv.append("-cmoe")
        else:
            argv += ["--n-cpu-moe", str(overrides.n_cpu_moe)]
    for regex, buft in overrides.rules:
        argv += ["-ot", f"{regex}={_engine_rpc_name(buft, build) if ik else buft}"]
    argv += ["-c", str(settings.ctx)]
    if ik and not ik_has(builds.FA_TAKES_VALUE):
        if ik_has(builds.FA_FMOE_DEFAULT):  # 3928-3984: on by default, -no-fa turns it off
            argv += [] if settings.flash_attn else ["-no-fa"]
        elif settings.flash_attn:  # older: off by default, a bare -fa turns it on
            argv.append("-fa")
    elif not ik and not settings.has_mainline(builds.ML_FA_VALUE) and settings.engine_build:
        if settings.flash_attn:  # mainline before b6325: off by default, a bare -fa
            argv.append("-fa")
    else:
        argv += ["-fa", "on" if settings.flash_attn else "off"]
    if settings.cache_type_k != "f16":
        argv += ["-ctk", settings.cache_type_k]
    if settings.cache_type_v != "f16":
        argv += ["-ctv", settings.cache_type_v]
    argv += ["-b", str(settings.batch), "-ub", str(settings.ubatch)]
    if settings.threads is not None:
        argv += ["-t", str(settings.threads)]
    if settings.threads_batch is not None:
        argv += ["-tb", str(settings.threads_batch)]
    if settings.numa:
        argv += ["--numa", settings.numa]
    if dialect == "ik":
        if layout.expert_layers and builds.accepts(build, "-fmoe"):
            argv.append("-fmoe")  # builds 3571-3927 fuse MoE only when asked
        if settings.mla is not None and layout.hparams.is_mla:
            argv += ["-mla", str(settings.mla)]
        wanted: tuple[tuple[bool, str, list[str]], ...] = (
            (settings.amb is not None, "-amb", [str(settings.amb)]),
            (settings.rtr, "-rtr", []),
            (settings.merge_qkv, "--merge-qkv", []),
        )
        for on, flag, values in wanted:
            if on and builds.accepts(build, flag):
                argv += [flag, *values]
            elif on:
                notes.append(_left_out(build, " ".join([flag, *values]), flag))
        if settings.split_mode_graph:
            argv += ["-sm", "graph"]
        if settings.no_mmap:
            argv.append("--no-mmap")
    elif settings.engine_build and not settings.has_mainline(builds.ML_FIT):
        # mainline before b7407 has no -fit (nothing to turn off) and no -lm
        if settings.no_mmap:
            argv.append("--no-mmap")
    else:
        argv += ["-fit", "off"]
        if settings.no_mmap:
            argv += ["-lm", "none"]
    argv += ["-np", str(settings.parallel), "--host", settings.host, "--port", str(settings.port)]
    if settings.api_key:
        argv += ["--api-key", settings.api_key]
    if settings.metrics:
        argv.append("--metrics")
    if ik:
        extra, extra_notes = _extra_for_build(settings.extra_args, build)
        argv += extra
        notes += extra_notes
    else:
        argv += list(settings.extra_args)
    return Command(tuple(argv), {}, tuple(notes), split, overrides)


# --- import --------------------------------------------------------------------------------------

_ALIASES = {
    "--model": "-m",
    "--gpu-layers": "-ngl",
    "--n-gpu-layers": "-ngl",
    "--override-tensor": "-ot",
    "--cpu-moe": "-cmoe",
    "-ncmoe": "--n-cpu-moe",
    "--tensor-split": "-ts",
    "--device": "-dev",
    "--split-mode": "-sm",
    "--ctx-size": "-c",
    "--cache-type-k": "-ctk",
    "--cache-type-v": "-ctv",
    "--batch-size": "-b",
    "--ubatch-size": "-ub",
    "--flash-attn": "-fa",
    "--no-flash-attn": "-no-fa",
    "--threads": "-t",
    "--threads-batch": "-tb",
    "--parallel": "-np",
    "--mla-use": "-mla",
    "--attention-max-batch": "-amb",
    "--run-time-repack": "-rtr",
    "-mqkv": "--merge-qkv",
    "--fused-moe": "-fmoe",
    "--fit": "-fit",
    "--load-mode": "-lm",
}
_WITH_VALUE = {
    "-m",
    "-ngl",
    "-ot",
    "--n-cpu-moe",
    "-ts",
    "-dev",
    "--rpc",
    "-sm",
    "-c",
    "-ctk",
    "-ctv",
    "-b",
    "-ub",
    "-t",
    "-tb",
    "--numa",
    "--host",
    "--port",
    "--api-key",
    "-np",
    "-mla",
    "-amb",
    "-lm",
    "-mg",
}
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_CACHE_TYPES = {name.lower(): name for name in (*CACHE_TYPES_IK, *CACHE_TYPES_MAINLINE)}


@dataclass(frozen=True, slots=True)
class ImportedCommand:
    """What a pasted command says: its placement flags, settings, and everything else."""

    executable: str
    model: str
    settings: Settings
    overrides: Overrides
    ngl: int | None
    devices: tuple[str, ...]
    tensor_split: tuple[float, ...]
    rpc: tuple[str, ...]
    env: dict[str, str]
    prefix: tuple[str, ...]  # numactl … before the executable
    notes: tuple[str, ...]


def split_command(text: str) -> list[str]:
    """Split a pasted shell command: quotes, ``\\`` line continuations, ``$`` prompts, comments,
    and the script our bash export writes (``set``, ``export NAME=value``, ``exec``)."""
    text = re.sub(r"\\\r?\n", " ", text)
    text = re.sub(r"\^\r?\n", " ", text)  # Windows cmd continuation
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or re.match(r"set\s", stripped):
            continue
        stripped = re.sub(r"^export\s+", "", stripped)
        stripped = re.sub(r"^exec\s+", "", stripped)
        lines.append(stripped)
    text = " ".join(lines).strip()
    if text.startswith("$ "):
        text = text[2:]
    try:
        return shlex.split(text, comments=False, posix=True)
    except ValueError as exc:
        raise CommandError(
            f"The command cannot be split into arguments: {exc} (unbalanced quotes?)."
        ) from None


def _buffer_name(name: str) -> str:
    """An RPC buffer as old ik builds name it (``RPC[host:port]``) in today's form."""
    m = _OLD_RPC_BUFFER.fullmatch(name)
    return rpc_name(m.group(1)) if m else name


def parse_command(
    command: str | Sequence[str],
    *,
    dialect: Dialect | None = None,
    engine_build: int | None = None,
) -> ImportedCommand:
    """Parse a ``llama-server`` command (string or argv) into its parts.

    ``engine_build`` is the build the command was written for, in the history of its dialect
    (given or detected; None: the newest). For ik before build 3928 flash attention is off unless
    a bare ``-fa`` is given, and ``-fmoe`` is a flag.

    Raises:
        CommandError: the command has no model, a flag lacks its value, or a value is malformed.
    """
    argv = split_command(command) if isinstance(command, str) else list(command)
    env: dict[str, str] = {}
    while argv and _ENV.match(argv[0]):
        key, _, value = argv.pop(0).partition("=")
        env[key] = value
    prefix: list[str] = []
    exe_at = next(
        (
            i
            for i, a in enumerate(argv)
            if Path(a).name.startswith(("llama-", "llama_"))
            or a.endswith(("llama-server", "llama-server.exe"))
        ),
        None,
    )
    executable = DEFAULT_EXECUTABLE
    if exe_at is not None:
        prefix = argv[:exe_at]
        executable = argv[exe_at]
        argv = argv[exe_at + 1 :]
    elif argv and not argv[0].startswith("-"):
        executable = argv.pop(0)
    if dialect is None:
        dialect = (
            "mainline"
            if any(
                a in ("-fit", "--fit", "-lm", "--load-mode")
                and i + 1 < len(argv)
                and argv[i + 1] in ("on", "off", "none", "mmap", "mlock", "auto")
                for i, a in enumerate(argv)
            )
            else "ik"
        )
    build = engine_build if dialect == "ik" else None
    fa_flag_era = dialect == "ik" and not builds.has(build, builds.FA_FMOE_DEFAULT)
    values: dict[str, object] = {"engine_build": engine_build}
    if fa_flag_era:
        values["flash_attn"] = False  # off by default before build 3928
    rules: list[Rule] = []
    ncmoe = 0
    ncmoe_at = -1
    extra: list[str] = []
    notes: list[str] = []
    model = ""
    ngl: int | None = None
    devices: tuple[str, ...] = ()
    ts: tuple[float, ...] = ()
    rpc: tuple[str, ...] = ()
    i = 0

    def take(flag: str) -> str:
        nonlocal i
        if i + 1 >= len(argv):
            raise CommandError(f"{flag} needs a value, but the command ends there.")
        i += 1
        return argv[i]

    def as_int(flag: str, text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise CommandError(f"{flag} expects a whole number, not {text!r}.") from None

    while i < len(argv):
        raw = argv[i]
        flag, eq, inline = raw.partition("=") if raw.startswith("--") else (raw, "", "")
        if flag.startswith("--"):
            flag = flag.replace("_", "-")
        flag = _ALIASES.get(flag, flag)
        if eq and flag in _WITH_VALUE:
            argv[i : i + 1] = [flag, inline]
        elif eq:
            flag = raw
        if flag == "-m":
            model = take(flag)
        elif flag == "-ngl":
            text = take(flag)
            ngl = {"auto": -1, "all": 999}[text] if text in ("auto", "all") else as_int(flag, text)
        elif flag == "-ot":
            for piece in take(flag).split(","):
                if not piece:
                    continue
                regex, sep, buft = piece.partition("=")
                if not sep or not buft:
                    raise CommandError(f"-ot {piece!r} is not REGEX=BUFFER_TYPE.")
                rules.append((regex, _buffer_name(buft)))
        elif flag == "-cmoe":
            ncmoe, ncmoe_at = 999, len(rules)
        elif flag == "--n-cpu-moe":
            ncmoe, ncmoe_at = as_int(flag, take(flag)), len(rules)
        elif flag == "-ts":
            try:
                ts = tuple(float(x) for x in re.split(r"[,/]+", take(flag)) if x)
            except ValueError:
                raise CommandError("-ts expects numbers separated by commas.") from None
        elif flag == "-dev":
            devices = tuple(_buffer_name(d) for d in take(flag).split(",") if d)
        elif flag == "--rpc":
            rpc = tuple(e for e in take(flag).split(",") if e)
        elif flag == "-sm":
            mode = take(flag)
            values["split_mode_graph"] = mode in ("graph", "attn")
            if mode not in ("graph", "attn", "layer"):
                extra += ["-sm", mode]
        elif flag == "-c":
            values["ctx"] = as_int(flag, take(flag))
        elif flag in ("-ctk", "-ctv"):
            name = take(flag)
            if name.lower() not in _CACHE_TYPES:
                raise CommandError(
                    f"{flag} {name} is not a KV cache type; use one of "
                    f"{', '.join(CACHE_TYPES_IK)} (q6_0 and q8_KV are ik_llama.cpp only)."
                )
            values["cache_type_k" if flag == "-ctk" else "cache_type_v"] = _CACHE_TYPES[
                name.lower()
            ]
        elif flag == "-b":
            values["batch"] = as_int(flag, take(flag))
        elif flag == "-ub":
            values["ubatch"] = as_int(flag, take(flag))
        elif flag == "-fa":
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            if nxt in ("on", "off", "auto", "0", "1"):
                values["flash_attn"] = take(flag) in ("on", "auto", "1")
            else:
                values["flash_attn"] = True
                if not fa_flag_era:
                    notes.append("A bare -fa now needs a value; it is written as -fa on.")
        elif flag == "-no-fa":
            values["flash_attn"] = False
        elif flag == "-t":
            values["threads"] = as_int(flag, take(flag))
        elif flag == "-tb":
            values["threads_batch"] = as_int(flag, take(flag))
        elif flag == "--numa":
            values["numa"] = take(flag)
        elif flag == "--host":
            values["host"] = take(flag)
        elif flag == "--port":
            values["port"] = as_int(flag, take(flag))
        elif flag == "--api-key":
            values["api_key"] = take(flag)
        elif flag == "-np":
            values["parallel"] = as_int(flag, take(flag))
        elif flag == "-mla":
            values["mla"] = as_int(flag, take(flag))
        elif flag == "-amb":
            values["amb"] = as_int(flag, take(flag))
        elif flag == "-rtr":
            values["rtr"] = True
        elif flag == "--merge-qkv":
            values["merge_qkv"] = True
        elif flag == "--no-mmap":
            values["no_mmap"] = True
        elif flag == "-lm":
            values["no_mmap"] = take(flag) == "none"
        elif flag == "--metrics":
            values["metrics"] = True
        elif flag == "-fmoe":
            if builds.has(build, builds.FA_FMOE_DEFAULT):
                notes.append(
                    "-fmoe was dropped: ik_llama.cpp fuses MoE by default from build 3928 "
                    "(PR #863), which no longer accepts it."
                )
            elif not builds.has(build, builds.FUSED_MOE_FLAG):
                notes.append(f"-fmoe was dropped: {_lacks(build, '-fmoe', builds.FUSED_MOE_FLAG)}.")
        elif flag == "-fit":
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            if nxt in ("on", "off"):
                take(flag)
            notes.append(
                "-fit is written by MoE Studio itself (mainline: -fit off with a manual placement)."
            )
        else:
            extra.append(argv[i])
            # Keep an unknown flag's value with it.
            if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                i += 1
                extra.append(argv[i])
        i += 1
    if not model:
        raise CommandError("The command has no -m MODEL; paste a llama-server command line.")
    if Path(executable).name.startswith("llama-perplexity") and not any(
        a in extra for a in ("--hellaswag", "--winogrande", "--multiple-choice", "--kl-divergence")
    ):
        # llama-perplexity (examples/perplexity/perplexity.cpp, main): -c is the chunk length
        # (512 unless given) and it scores n_batch / chunk chunks at once, so the context it
        # creates holds all of them: n_ctx = n_seq * chunk, n_batch = min(n_batch, n_ctx).
        chunk = int(values.get("ctx", 512))  # type: ignore[call-overload]
        batch = int(values.get("batch", 2048))  # type: ignore[call-overload]
        if chunk > 0:
            n_seq = max(1, batch // chunk)
            values |= {"ctx": n_seq * chunk, "batch": min(batch, n_seq * chunk)}
            values["parallel"] = n_seq
            if n_seq > 1:
                notes.append(
                    f"llama-perplexity scores {n_seq} chunks of {chunk} at once: "
                    f"its context holds {n_seq * chunk} tokens."
                )
    settings = Settings(dialect=dialect, extra_args=tuple(extra)).with_(**values)
    return ImportedCommand(
        executable=executable,
        model=model,
        settings=settings,
        overrides=Overrides(tuple(rules), ncmoe, ncmoe_at if dialect == "mainline" else -1),
        ngl=ngl,
        devices=devices,
        tensor_split=ts,
        rpc=rpc,
        env=env,
        prefix=tuple(prefix),
        notes=tuple(notes),
    )


def rig_for_command(imported: ImportedCommand, rig: Rig) -> Rig:
    """``rig`` plus any RPC endpoints and CUDA devices the command uses that the rig lacks."""
    devices = list(rig.devices)
    names = {d.name for d in devices}
    for endpoint in imported.rpc:
        name = rpc_name(endpoint)
        if name not in names:
            devices.append(Device(name, DeviceKind.RPC, 0, label="RPC", endpoint=endpoint))
            names.add(name)
    wanted = {b for _, b in imported.overrides.rules} | set(imported.devices)
    for name in sorted(wanted):
        m = re.fullmatch(r"CUDA(\d{1,4})", name)
        if m and name not in names:
            devices.append(
                Device(name, DeviceKind.CUDA, 0, label="(not in rig)", index=int(m.group(1)))
            )
            names.add(name)
    rpc = [d for d in devices if d.kind is DeviceKind.RPC]
    gpus = sorted((d for d in devices if d.kind is DeviceKind.CUDA), key=lambda d: d.index)
    return rig.with_devices((*rpc, *gpus))


def imported_split(layout: ModelLayout, imported: ImportedCommand, rig: Rig) -> LayerSplit:
    """The layer split the engine derives from the command's -ngl/-dev/-ts on ``rig``."""
    settings = imported.settings
    if imported.devices:
        devices = list(imported.devices)
        if settings.dialect == "mainline":
            rpc_by_index = {f"RPC{i}": rpc_name(e) for i, e in enumerate(imported.rpc)}
            devices = [rpc_by_index.get(d, d) for d in devices]
    else:
        devices = default_device_list(rig, imported.rpc)
    ngl = imported.ngl
    if ngl is None or ngl < 0:
        ngl = 999 if devices else 0
    free = [(dev.memory_free or dev.memory_total) if (dev := rig.device(d)) else 0 for d in devices]
    layer_devices = engine_layer_devices(
        layout, settings, devices, ngl, imported.tensor_split, free
    )
    if not devices:
        return LayerSplit(0, (), tuple(layer_devices))
    return LayerSplit(ngl, tuple(devices), tuple(layer_devices))


def import_command(
    command: str | Sequence[str],
    layout: ModelLayout,
    rig: Rig,
    *,
    dialect: Dialect | None = None,
    engine_build: int | None = None,
) -> tuple[Plan, ImportedCommand, Rig]:
    """Turn a pasted command into a plan (every cell pinned), its parts, and the rig it needs
    (``engine_build``: the build it was written for, None: the newest)."""
    imported = parse_command(command, dialect=dialect, engine_build=engine_build)
    if imported.settings.ctx <= 0 < layout.hparams.n_ctx_train:
        train = layout.hparams.n_ctx_train
        imported = replace(
            imported,
            settings=imported.settings.with_(ctx=train),
            notes=(
                *imported.notes,
                f"-c {imported.settings.ctx} means the model's training context to the engine: "
                f"{train} tokens, planned as -c {train}.",
            ),
        )
    full_rig = rig_for_command(imported, rig)
    split = imported_split(layout, imported, full_rig)
    resolution = resolve(
        layout,
        imported.overrides,
        split,
        imported.settings.dialect,
        graph_mode=imported.settings.split_mode_graph,
    )
    for name in set(resolution.devices.values()):
        if name != CPU_NAME and full_rig.device(name) is None:
            raise CommandError(
                f"The command places tensors on {name}, which is neither CPU, a CUDA device nor "
                "an RPC device given with --rpc."
            )
    plan = plan_from_mapping(layout, resolution.devices, pinned=layout.cells)
    notes = imported.notes + resolution.notes
    return plan, replace(imported, notes=notes), full_rig
