"""``moe-studio export PROFILE --to FORMAT``: a saved profile as a launch script or config.

The command is rebuilt from the profile (model, placement, rig, settings, engine), never copied
from an old text, so an export always matches what ``plan`` and the GUI show for the profile. The
model is opened first (a catalog profile always opens): a missing file, or one that changed since
the profile was saved, stops the export with a message saying so.

:func:`launch_spec` and :func:`render` are what the GUI's export menu calls too.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from moe_studio.core.errors import ExportError, MoeStudioError, ProfileError
from moe_studio.core.fsutil import atomic_write_bytes
from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.plan.settings import exposure_warning
from moe_studio.core.profiles.exports import (
    ExportFormat,
    bash_script,
    batch_script,
    encode_export,
    launch_json,
    llama_swap_config,
    powershell_script,
    router_preset_ini,
)
from moe_studio.core.profiles.plans import planner_from_profile, require_model
from moe_studio.core.profiles.schema import Profile, load_profile

# --to names → formats.
FORMATS: dict[str, ExportFormat] = {
    "sh": ExportFormat.BASH,
    "bat": ExportFormat.BATCH,
    "ps1": ExportFormat.POWERSHELL,
    "llama-swap": ExportFormat.LLAMA_SWAP,
    "router-ini": ExportFormat.ROUTER_PRESET,
    "json": ExportFormat.JSON,
}

# A cold start reads every loaded byte once; 1 GB/s is a PCIe 3 NVMe drive or a fast SATA array
# (a reload from the page cache is faster, a hard disk far slower), plus a fixed start-up for the
# CUDA context, the tokenizer and the first graph.
LOAD_READ_BYTES_PER_S = 1.0e9
LOAD_FIXED_SECONDS = 20.0


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """What an export needs: argv, extra environment, numactl prefix, and a load time guess."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    numactl: tuple[str, ...] = ()
    load_seconds: float | None = None
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # the exported command will not work (wrong engine's types)


def estimate_load_seconds(layout: ModelLayout) -> float:
    """A rough cold-start time: read the loaded bytes at :data:`LOAD_READ_BYTES_PER_S`."""
    return LOAD_FIXED_SECONDS + layout.total_bytes / LOAD_READ_BYTES_PER_S


def open_profile_model(profile: Profile, *, where: str = "the profile") -> ModelLayout:
    """Open the profile's model and check it is the one the profile was made for.

    Raises:
        ProfileError: the model cannot be opened, or it changed since the profile was saved.
    """
    from moe_studio.core.profiles.plans import require_local

    require_local(profile, where)
    try:
        layout = catalog.load(profile.model.source)
    except MoeStudioError as exc:
        raise ProfileError(
            f"The model of {where} cannot be opened: {exc} Restore the file or plan the model "
            "again.",
            details=exc.details,
        ) from None
    require_model(profile, layout)
    return layout


def launch_spec(profile: Profile, layout: ModelLayout, *, advice: bool = True) -> LaunchSpec:
    """The profile's command on ``layout`` (the model it names, already checked).

    With ``advice``, the advisor's environment variables are added, and its ``numactl`` prefix
    when the profile's settings ask for NUMA handling (``--numa``); each addition is a note.

    Raises:
        ProfileError: the placement does not fit the model.
        ExportError: the command cannot be built (an option the dialect lacks, a device the rig
            does not have).
    """
    planner, plan = planner_from_profile(profile, layout)
    result = planner.result(plan, executable=profile.engine)
    if result.command is None:
        raise ExportError(f"The profile's command cannot be built: {result.command_error}")
    env = dict(result.command.env)
    numactl: tuple[str, ...] = ()
    notes: list[str] = []
    if advice and result.advice is not None:
        for name, value in result.advice.env.items():
            if name not in env:
                env[name] = value
                notes.append(
                    f"added {name}={value} as the advisor suggests (--no-advice leaves it out)"
                )
        if profile.settings.numa and result.advice.numactl:
            numactl = tuple(result.advice.numactl)
            notes.append(
                f"runs the engine under {' '.join(numactl)} for --numa {profile.settings.numa} "
                "(--no-advice leaves it out)"
            )
    return LaunchSpec(
        argv=result.command.argv,
        env=env,
        numactl=numactl,
        load_seconds=estimate_load_seconds(layout),
        notes=tuple(notes),
        warnings=(result.engine_problem,) if result.engine_problem else (),
    )


def default_model_id(profile: Profile) -> str:
    """An id for llama-swap and router presets: the profile's title in lower case, dashed."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", profile.title.lower()).strip("-.")
    return slug or "model"


def render(
    fmt: ExportFormat,
    profile: Profile,
    spec: LaunchSpec,
    *,
    model_id: str | None = None,
    ttl: int = 0,
    existing: str = "",
    health_timeout: int | None = None,
    windows: bool = False,
) -> tuple[str, list[str]]:
    """The export text in format ``fmt``, and notes about what it left out.

    Args:
        fmt: The target format.
        profile: The profile (its dialect and title).
        spec: From :func:`launch_spec`.
        model_id: llama-swap / router id; :func:`default_model_id` by default.
        ttl: llama-swap ``ttl`` (seconds idle before unloading; 0 never).
        existing: A llama-swap config to merge into (its other models are kept).
        health_timeout: llama-swap ``healthCheckTimeout``; by default twice the load estimate,
            at least 120 s.
        windows: Quote llama-swap's ``cmd`` for llama-swap running on Windows.

    Raises:
        ExportError: the format cannot carry the command (see
        :mod:`moe_studio.core.profiles.exports`).
    """
    argv, env, numactl = list(spec.argv), dict(spec.env), list(spec.numactl)
    notes: list[str] = []
    exposed = exposure_warning(profile.settings.host, profile.settings.api_key)
    if exposed:
        notes.append(exposed)
    ident = model_id or default_model_id(profile)
    if fmt in (ExportFormat.BATCH, ExportFormat.POWERSHELL) and numactl:
        notes.append(f"left out the numactl prefix ({' '.join(numactl)}): Windows has no numactl")
        numactl = []
    if fmt is ExportFormat.BASH:
        text = bash_script(argv, env, numactl=numactl)
    elif fmt is ExportFormat.BATCH:
        text = batch_script(argv, env)
    elif fmt is ExportFormat.POWERSHELL:
        text = powershell_script(argv, env)
    elif fmt is ExportFormat.JSON:
        text = launch_json(argv, env, numactl=numactl)
    elif fmt is ExportFormat.LLAMA_SWAP:
        text = llama_swap_config(
            ident,
            argv,
            env,
            numactl=numactl,
            ttl=ttl,
            load_seconds_estimate=spec.load_seconds,
            health_timeout=health_timeout,
            existing=existing,
            windows=windows,
            dialect=profile.dialect,
        )
    else:
        if profile.dialect != "mainline":
            raise ExportError(
                "llama-server's router presets exist only in mainline llama.cpp, and this "
                "profile is for ik_llama.cpp, which has no router mode. Switch the profile's "
                "dialect to mainline, or export a script or a llama-swap config."
            )
        text = router_preset_ini(ident, argv, env, numactl=numactl)
    return text, notes


def _cmd_export(args: argparse.Namespace) -> int:
    fmt = FORMATS[args.to]
    if args.merge and fmt is not ExportFormat.LLAMA_SWAP:
        raise ExportError("--merge works only with --to llama-swap.")
    existing = ""
    if args.merge:
        try:
            existing = Path(args.merge).read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise ExportError(
                f"{args.merge} does not exist; leave out --merge for a new config."
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ExportError(
                f"Could not read the llama-swap config {args.merge}: {exc}."
            ) from None
    profile = load_profile(args.profile)
    for warning in profile.warnings:
        sys.stderr.write(f"moe-studio: warning: {warning}\n")
    layout = open_profile_model(profile, where=args.profile)
    spec = launch_spec(profile, layout, advice=not args.no_advice)
    text, notes = render(
        fmt,
        profile,
        spec,
        model_id=args.model_id,
        ttl=args.ttl,
        existing=existing,
        health_timeout=args.health_timeout,
        windows=args.windows,
    )
    for warning in spec.warnings:
        sys.stderr.write(f"moe-studio: warning: {warning}\n")
    for note in (*spec.notes, *notes):
        sys.stderr.write(f"moe-studio: note: {note}\n")
    data = encode_export(fmt, text)
    if args.output:
        atomic_write_bytes(args.output, data, error=ExportError, executable=fmt.executable)
        sys.stderr.write(f"moe-studio: wrote {args.output}\n")
    else:
        # Bytes, so a .bat keeps its CRLF and a .ps1 its byte order mark on every platform.
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export",
        help="print a saved profile as a launch script, llama-swap entry, router preset or JSON",
        description="Rebuild a profile's llama-server command and print it in one format. The "
        "profile's model must be present and unchanged (catalog profiles always are).",
    )
    p.add_argument("profile", help="a profile file (moe-studio plan … --save FILE writes one)")
    p.add_argument("--to", required=True, choices=list(FORMATS), help="the format")
    p.add_argument("--id", dest="model_id", metavar="MODEL_ID", help="llama-swap/router model id")
    p.add_argument(
        "--merge",
        metavar="EXISTING_YAML",
        help="llama-swap: add the model to this config (its other models are kept)",
    )
    p.add_argument(
        "--ttl", type=int, default=0, help="llama-swap: seconds idle before unloading (0: never)"
    )
    p.add_argument(
        "--health-timeout",
        type=int,
        metavar="SECONDS",
        help="llama-swap healthCheckTimeout (default: twice the estimated load time, ≥ 120)",
    )
    p.add_argument(
        "--windows", action="store_true", help="llama-swap: quote cmd for llama-swap on Windows"
    )
    p.add_argument(
        "--no-advice",
        action="store_true",
        help="leave out the advisor's environment variables and numactl prefix",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write FILE atomically (the old one kept as FILE.bak) instead of printing; "
        "safe with --merge of the same file",
    )
    p.set_defaults(func=_cmd_export)
