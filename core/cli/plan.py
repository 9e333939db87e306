"""``moe-studio plan``: the placement engine from the command line.

Builds a rig from ``--gpu/--rpc/--ram`` (or ``--rig FILE|PRESET``, or this machine), applies
``--import`` and ``--pin`` rules, auto-places the rest, and prints the command, a per-device
budget table and the advice (or one JSON object with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from moe_studio.core.errors import CommandError, DialectError, MoeStudioError
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.memory import COMPUTE_MARGIN, ComputeSource, DeviceBudget
from moe_studio.core.plan.placement import Plan, as_mapping, initial_plan
from moe_studio.core.plan.planning import Planner, PlanResult, apply_pin
from moe_studio.core.plan.settings import (
    API_KEY_AUTO,
    DIALECTS,
    Settings,
    exposure_warning,
    generate_api_key,
)
from moe_studio.core.units import format_bytes, parse_memory

if TYPE_CHECKING:
    from moe_studio.core.engine.discovery import EngineInfo
    from moe_studio.core.engine.probe import ProbeResult


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``plan`` (``launch`` shares them)."""
    p.add_argument(
        "model",
        help="path to a .gguf (any shard), catalog:NAME[@RECIPE], or a remote model: "
        "hf://OWNER/REPO[@REV]/PATH.gguf or an https URL (headers only are read)",
    )
    add_rig_arguments(p)
    _add_run_arguments(p)


def add_rig_arguments(p: argparse.ArgumentParser) -> None:
    """``--gpu``, ``--rpc``, ``--ram``, ``--rig`` (``plan``, ``launch`` and ``compare``)."""
    hw = p.add_argument_group("hardware (default: this machine)")
    hw.add_argument(
        "--gpu",
        action="append",
        default=[],
        metavar="SIZE",
        help="a CUDA GPU with SIZE memory, e.g. 24GiB (repeat for more)",
    )
    hw.add_argument(
        "--rpc", action="append", default=[], metavar="HOST:PORT=SIZE", help="an rpc-server device"
    )
    hw.add_argument("--ram", metavar="SIZE", help="host RAM, e.g. 256GiB")
    hw.add_argument("--rig", metavar="FILE|PRESET", help="a rig file or preset (see moe-studio hw)")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    run = p.add_argument_group("run settings")
    # Options without a value here take the imported command's, else the Settings default.
    run.add_argument("--ctx", "-c", type=int, help="context size (default 32768)")
    run.add_argument("--cache", metavar="TYPE", help="K and V cache type, e.g. q8_0")
    run.add_argument("--cache-k", metavar="TYPE")
    run.add_argument("--cache-v", metavar="TYPE")
    run.add_argument(
        "--ubatch", "-ub", type=int, help="physical batch (default: the advisor's choice)"
    )
    run.add_argument("--batch", "-b", type=int)
    run.add_argument(
        "--dialect", choices=DIALECTS, help="ik (default) or mainline; --import detects it"
    )
    run.add_argument("--no-fa", action="store_true", help="flash attention off")
    run.add_argument("--mla", type=int, choices=(0, 1, 2, 3), help="ik -mla mode")
    run.add_argument("--amb", type=int, help="ik -amb MiB")
    run.add_argument(
        "--engine-build",
        type=int,
        metavar="N",
        help="the ik_llama.cpp build to plan for, as `llama-server --version` prints it (default: "
        "--engine's build, else the newest); older builds have other defaults, flags and buffers",
    )
    run.add_argument(
        "--split-mode",
        "-sm",
        choices=("layer", "graph"),
        help="ik: layer (default) gives each GPU whole layers; graph splits every offloaded "
        "layer's weights and KV across the GPUs by -ts (tensor parallel, 2+ GPUs)",
    )
    run.add_argument("--threads", "-t", type=int)
    run.add_argument("--parallel", "-np", type=int, help="slots (default 1)")
    run.add_argument("--host", help="bind address (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="port (default 8080)")
    run.add_argument(
        "--api-key",
        metavar="KEY",
        help="clients must send this key (Authorization: Bearer KEY); 'auto' generates one, "
        "kept in the saved profile. Use it with a --host other than 127.0.0.1",
    )
    run.add_argument("--no-mmap", action="store_true")
    run.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="ARG",
        help="passed to llama-server verbatim",
    )
    place = p.add_argument_group("placement")
    place.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="RULE",
        help="L:3-10=CUDA0 (layers), E:3-10=CPU (experts), or REGEX=DEVICE",
    )
    place.add_argument(
        "--import",
        dest="import_command",
        metavar="COMMAND",
        help="start from a llama-server command line",
    )
    place.add_argument("--no-auto", action="store_true", help="do not auto-place the free cells")
    place.add_argument("--engine", metavar="PATH", help="llama-server to write into the command")
    check = p.add_argument_group("check with the engine")
    check.add_argument(
        "--probe",
        action="store_true",
        help="run the command with ik_llama.cpp's --dry-run and show the engine's buffer sizes "
        "next to the estimate (seconds; no weights are read)",
    )
    check.add_argument(
        "--probe-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give the dry run this long to print its buffers (default 120)",
    )


def _memory(text: str, flag: str = "--gpu") -> int:
    """A memory size from the command line; a bare number is refused (bytes? GB? GiB?)."""
    return parse_memory(flag, text)


def _rig(args: argparse.Namespace) -> Rig:
    if args.rig:
        from moe_studio.core.cli.hw import resolve_rig

        rig = resolve_rig(args.rig)
    elif args.gpu or args.rpc or args.ram:
        rig = Rig("command line", HostInfo(0), source="command line")
    else:
        from moe_studio.core.hardware.detect import detect_rig

        rig = detect_rig()
    devices = list(rig.devices)
    for size in args.gpu:
        index = len([d for d in devices if d.kind is DeviceKind.CUDA])
        devices.append(
            Device(f"CUDA{index}", DeviceKind.CUDA, _memory(size), label="GPU", index=index)
        )
    for spec in args.rpc:
        endpoint, sep, size = spec.rpartition("=")
        if not sep:
            raise MoeStudioError(
                f"--rpc {spec!r}: write HOST:PORT=SIZE, e.g. 192.168.1.5:50052=24GiB."
            )
        from moe_studio.core.hardware.rpc import rpc_device

        devices.append(rpc_device(endpoint, _memory(size, "--rpc"), label="RPC"))
    host = rig.host
    if args.ram:
        from dataclasses import replace

        host = replace(host, ram_total=_memory(args.ram, "--ram"))
    if not host.ram_total:
        raise MoeStudioError("Say how much RAM the machine has: --ram 256GiB.")
    rpc = [d for d in devices if d.kind is DeviceKind.RPC]
    gpus = [d for d in devices if d.kind is DeviceKind.CUDA]
    from dataclasses import replace

    return replace(rig, host=host, devices=(*rpc, *gpus))


def _api_key(given: str | None) -> str | None:
    """``--api-key``: ``auto`` → a new random key; otherwise as typed (None: not given)."""
    return generate_api_key() if given == API_KEY_AUTO else given


def _settings(args: argparse.Namespace, base: Settings) -> Settings:
    given = {
        "dialect": args.dialect,
        "ctx": args.ctx,
        "parallel": args.parallel,
        "host": args.host,
        "port": args.port,
        "api_key": _api_key(getattr(args, "api_key", None)),
    }
    changes: dict[str, object] = {k: v for k, v in given.items() if v is not None}
    if args.cache:
        changes["cache_type_k"] = changes["cache_type_v"] = args.cache
    if args.cache_k:
        changes["cache_type_k"] = args.cache_k
    if args.cache_v:
        changes["cache_type_v"] = args.cache_v
    if args.ubatch:
        changes["ubatch"] = args.ubatch
    if args.batch:
        changes["batch"] = args.batch
    if args.no_fa:
        changes["flash_attn"] = False
    if args.mla is not None:
        changes["mla"] = args.mla
    if args.amb is not None:
        changes["amb"] = args.amb
    if getattr(args, "engine_build", None) is not None:
        changes["engine_build"] = args.engine_build
    split_mode = getattr(args, "split_mode", None)
    if split_mode == "graph" and (args.dialect or base.dialect) == "mainline":
        raise DialectError(
            "--split-mode graph is an ik_llama.cpp option; mainline llama.cpp has no graph split "
            "(its -sm row and tensor are not modelled here). Drop --split-mode or use --dialect ik."
        )
    if split_mode is not None:
        changes["split_mode_graph"] = split_mode == "graph"
    if args.threads is not None:
        changes["threads"] = args.threads
    if args.no_mmap:
        changes["no_mmap"] = True
    if args.extra:
        changes["extra_args"] = (*base.extra_args, *args.extra)
    return base.with_(**changes)


def _engine_build(path: str, dialect: str) -> int | None:
    """The build number ``path --version`` prints, when the engine is of ``dialect`` (ik and
    mainline both count commits, ``version: 5331 (33eff402)``, but in separate histories; None
    for another or an unknown engine, or none printed)."""
    from moe_studio.core.engine.discovery import probe_engine

    info = probe_engine(path)
    return info.build if info.usable and info.flavour == dialect else None


def make_plan(args: argparse.Namespace) -> tuple[Planner, Plan, list[str]]:
    """Everything ``plan`` and ``launch`` share: layout, rig, settings, pins, auto-placement."""
    from moe_studio.core.remote.model import load

    layout = load(args.model)
    rig = _rig(args)
    if getattr(args, "engine_build", None) is None and getattr(args, "engine", None):
        args.engine_build = _engine_build(args.engine, args.dialect or "ik")
    notes: list[str] = []
    base = Settings(dialect=args.dialect or "ik")
    plan = initial_plan(layout)
    if args.import_command:
        from moe_studio.core.plan.cmdline import import_command

        plan, imported, rig = import_command(
            args.import_command, layout, rig, dialect=args.dialect, engine_build=args.engine_build
        )
        base = imported.settings
        notes += imported.notes
    settings = _settings(args, base)
    exposed = exposure_warning(settings.host, settings.api_key)
    if exposed:
        notes.append(exposed)
    for rule in args.pin:
        plan = apply_pin(layout, plan, rule).after
    planner = Planner(layout, rig, settings)
    if args.ubatch is None and not args.import_command and not args.no_auto:
        # The advisor picks -b/-ub first: the compute buffer it implies is VRAM experts cannot use.
        planner.update(settings=planner.advise_batch(plan))
    if not args.no_auto:
        auto = planner.auto_place(plan)
        plan = auto.plan
        notes += auto.notes
        notes += [f"would help: {s}" for s in auto.suggestions]
    return planner, plan, notes


def result_json(
    planner: Planner, plan: Plan, result: PlanResult, notes: list[str]
) -> dict[str, object]:
    advice = result.advice
    return {
        "model": planner.layout.source,
        "argv": list(result.command.argv) if result.command else None,
        "env": result.command.env if result.command else {},
        "command_error": result.command_error or None,
        "engine_problem": result.engine_problem or None,
        "settings": planner.settings.to_dict(),
        "devices": result.estimate.as_json(),
        "layer_devices": list(result.split.layer_devices),
        "placement": as_mapping(planner.layout, plan),
        "pinned": sorted(f"{layer}:{group}" for layer, group in plan.pinned),
        "advice": {
            "ubatch": advice.ubatch,
            "batch": advice.batch,
            "threads": advice.threads,
            "numa": advice.numa,
            "numactl": list(advice.numactl),
            "env": advice.env,
            "extra_args": list(advice.extra_args),
            "lines": list(advice.lines),
            "warnings": list(advice.warnings),
        }
        if advice
        else None,
        "notes": notes + list(result.command.notes if result.command else ()),
    }


_SOURCE_MARKS = {
    ComputeSource.ESTIMATED: " ",
    ComputeSource.MEASURED: "*",
    ComputeSource.SCALED: "~",
}


def _headroom_line(devices: Sequence[DeviceBudget]) -> str:
    """What the compute column's marks and the "fits" column mean."""
    parts = []
    sources = {d.compute_source for d in devices}
    if ComputeSource.MEASURED in sources:
        parts.append("* measured on this machine")
    if ComputeSource.SCALED in sources:
        parts.append("~ scaled from a measurement at nearby settings")
    parts.append(
        f"fits = total plus {COMPUTE_MARGIN:.0%} of each estimated compute buffer "
        "(its known error) within capacity"
    )
    return "(" + "; ".join(parts) + ")\n"


def print_result(planner: Planner, result: PlanResult, notes: list[str], out: TextIO) -> None:
    w = out.write
    if result.command:
        w(result.command.shell() + "\n")
    else:
        w(f"(no command: {result.command_error})\n")
    if result.engine_problem:
        w(f"! {result.engine_problem}\n")
    w(
        f"\n{'device':<26}{'capacity':>11}{'weights':>11}{'KV':>11}{'compute':>11}"
        f"{'overhead':>11}{'total':>11}  fits\n"
    )
    for d in result.estimate.devices:
        name = d.name if d.kind is not DeviceKind.CPU else "CPU (host RAM)"
        mark = _SOURCE_MARKS[d.compute_source]
        w(
            f"{name[:25]:<26}{format_bytes(d.capacity):>11}{format_bytes(d.weights):>11}"
            f"{format_bytes(d.kv):>11}{format_bytes(d.compute) + mark:>11}"
            f"{format_bytes(d.overhead):>11}{format_bytes(d.total):>11}  "
            f"{'yes' if d.fits else 'NO, ' + format_bytes(d.overflow) + ' over'}\n"
        )
    w(_headroom_line(result.estimate.devices))
    ranges = result.split.ranges()
    if result.split.devices:
        w("\nKV layers: " + ", ".join(f"{dev} {a}-{b}" for dev, a, b in ranges) + "\n")
    advice = result.advice
    if advice:
        w("\nAdvice\n")
        for line in advice.lines:
            w(f"  - {line}\n")
        for line in advice.warnings:
            w(f"  ! {line}\n")
    # the same sentence can come from the plan and from the command (e.g. a rig without GPUs)
    all_notes = list(dict.fromkeys(notes + list(result.command.notes if result.command else ())))
    if all_notes:
        w("\nNotes\n")
        for line in all_notes:
            w(f"  - {line}\n")


def _probe_engine(args: argparse.Namespace, planner: Planner) -> EngineInfo:
    from moe_studio.core.engine.discovery import EngineStore, resolve_engine

    return resolve_engine(
        args.engine or None, store=EngineStore(), flavour=planner.settings.dialect
    )


def learn(planner: Planner, engine: EngineInfo | None) -> None:
    """Let the planner learn from the compute buffers measured for this model on this engine
    (every engine of the dialect when ``engine`` is None)."""
    from moe_studio.core.engine.calibration import learned_for, read_records

    version = engine.version if engine is not None and engine.version else None
    learned = learned_for(read_records(), planner.layout, planner.settings.dialect, version)
    planner.update(learned=learned)


def _cmd_plan(args: argparse.Namespace) -> int:
    planner, plan, notes = make_plan(args)
    from moe_studio.core.remote.urls import is_remote

    local = None
    if is_remote(args.model):
        from moe_studio.core.remote.quants import download_hint

        download, local = download_hint(args.model)
        notes.append(f"The model is remote and the command names its download: {download}")
        if args.probe:
            raise CommandError(
                "--probe runs the engine on the model's files, and this model is remote; "
                f"download it first ({download}) and plan the local file."
            )
    engine: EngineInfo | None = None
    if args.probe:
        engine = _probe_engine(args, planner)
    elif args.engine:
        from moe_studio.core.engine.discovery import probe_engine

        found = probe_engine(args.engine)
        engine = found if found.usable else None
    if engine is not None:
        from moe_studio.core.engine.discovery import build_types_note, estimate_build_note

        type_ids = (t.type_id for t in planner.layout.tensors if t.loaded)
        for note in (build_types_note(engine, type_ids), estimate_build_note(engine)):
            if note:
                notes.append(note)
    learn(planner, engine)
    executable = args.engine or "llama-server"
    result = planner.result(plan, executable=executable, model_path=local)
    measured: ProbeResult | None = None
    if args.probe and engine is not None and result.command is not None:
        from moe_studio.core.cli.report import print_probe, probe

        measured = probe(planner, plan, result, engine, timeout=args.probe_timeout)
        if measured.measured:  # the table shows the engine's figures, marked measured
            learn(planner, engine)
            result = planner.result(plan, executable=executable, model_path=local)
    if engine is not None and result.command is not None:
        from moe_studio.core.plan.cmdline import unlisted_options

        unlisted = unlisted_options(result.command.argv, engine.options, planner.settings.dialect)
        if unlisted:
            notes.append(unlisted)
    if args.save:
        from moe_studio.core.profiles.plans import save_profile_from_plan

        save_profile_from_plan(args.save, planner, plan, executable=args.engine or "llama-server")
        notes.append(f"Saved the profile to {args.save}.")
    if args.json:
        obj = result_json(planner, plan, result, notes)
        if measured is not None:
            obj["measured"] = measured.as_json()
        json.dump(obj, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_result(planner, result, notes, sys.stdout)
        if measured is not None:
            print_probe(measured, sys.stdout)
    if result.command is None:
        # The budget table above is still worth reading; the reason goes to stderr, exit 1.
        raise CommandError(result.command_error)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "plan",
        help="place a model on GPUs/RPC/CPU, estimate memory, print the command and advice",
        description="Auto-place a model (respecting --pin and --import), estimate memory per "
        "device and print the llama-server command.",
    )
    add_plan_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--save", metavar="FILE", help="also write the plan as a profile")
    p.set_defaults(func=_cmd_plan)
