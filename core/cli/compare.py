"""``moe-studio compare OWNER/REPO``: every quant of a Hugging Face repository on this rig.

Lists the repository's GGUF files, groups them into quants, reads each quant's headers over HTTP
Range requests (in parallel, progress on stderr; nothing but headers is downloaded), auto-places
each on the rig and prints one row per quant: size, GPU and RAM use, whether it fits, the share of
routed experts on GPUs and whether the engine can load its tensor types. Ends with the download
command of the best quant that fits.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from moe_studio.core.cli.parsing import SubParsers
from moe_studio.core.units import format_bytes

if TYPE_CHECKING:
    from moe_studio.core.plan.compare import RepoComparison


def _progress(out: TextIO) -> Callable[[float, str], None]:
    last = [-1]

    def report(fraction: float, name: str) -> None:
        percent = int(fraction * 100)
        if percent != last[0] and out.isatty():
            last[0] = percent
            out.write(f"\rreading headers: {percent:3d}%  {name[:50]:<50}")
            out.flush()

    return report


def comparison_json(comparison: RepoComparison) -> dict[str, object]:
    """The ``compare --json`` object."""
    rows: list[dict[str, object]] = []
    for r in comparison.rows:
        row: dict[str, object] = {
            "quant": r.quant.label,
            "files": [f.path for f in r.quant.files],
            "url": r.url,
            "size": r.quant.size,
            "download": r.download,
            "local_path": r.local_path,
        }
        if r.placement is None or r.layout is None:
            row["error"] = r.error
        else:
            p = r.placement
            row.update(
                identity=r.layout.identity,
                gpu_bytes=p.gpu_bytes,
                gpu_capacity=p.gpu_capacity,
                ram_bytes=p.ram_bytes,
                ram_capacity=p.ram_capacity,
                fits=p.fits,
                expert_gpu_share=round(p.expert_gpu_share, 4),
                engine_loads=p.loadable,
                engine_problem=p.load_problem or None,
            )
        rows.append(row)
    best = comparison.best
    return {
        "repo": comparison.listing.repo,
        "revision": comparison.listing.revision,
        "commit": comparison.listing.commit,
        "dialect": comparison.settings.dialect,
        "rig": comparison.rig.name,
        "quants": rows,
        "best": best.quant.label if best else None,
    }


def print_comparison(comparison: RepoComparison, out: TextIO) -> None:
    from moe_studio.core.plan.compare import ENGINE_NAMES

    settings = comparison.settings
    engine = ENGINE_NAMES.get(settings.dialect, settings.dialect)
    out.write(
        f"{comparison.listing.repo} @ {comparison.listing.commit[:12]} on {comparison.rig.name}, "
        f"{engine}, ctx {settings.ctx}\n\n"
        f"{'quant':<18}{'size':>11}{'GPU':>11}{'RAM':>11}  {'fits':<5}{'experts on GPU':>15}"
        f"  loads on {engine}\n"
    )
    for r in comparison.rows:
        label = r.quant.label[:17]
        size = format_bytes(r.quant.size)
        p = r.placement
        if p is None:
            out.write(f"{label:<18}{size:>11}  (not read: {r.error})\n")
            continue
        out.write(
            f"{label:<18}{size:>11}{format_bytes(p.gpu_bytes):>11}{format_bytes(p.ram_bytes):>11}"
            f"  {'yes' if p.fits else 'no':<5}{p.expert_gpu_share:>14.0%}   {p.engine_text}\n"
        )
    best = comparison.best
    if best:
        out.write(
            f"\nThe largest quant that fits and loads is {best.quant.label}. Download it with:\n"
            f"  {best.download}\n"
            f"then plan it with: moe-studio plan {best.local_path}\n"
        )
    else:
        out.write("\nNo quant both fits this rig and loads on this engine.\n")


def _cmd_compare(args: argparse.Namespace) -> int:
    from moe_studio.core.cli.plan import _rig, _settings
    from moe_studio.core.plan.compare import compare_repo
    from moe_studio.core.plan.settings import Settings
    from moe_studio.core.remote.urls import check_repo

    repo, _, revision = args.repo.removeprefix("hf://").strip("/").partition("@")
    if repo.startswith(("https://", "http://")):
        repo = "/".join(repo.split("/")[3:5])
    check_repo(repo, args.repo)
    rig = _rig(args)
    settings = _settings(args, Settings(dialect=args.dialect or "ik"))
    ik_build = None
    if args.engine:
        from moe_studio.core.engine.discovery import probe_engine

        engine = probe_engine(args.engine).require_usable()
        ik_build = engine.build if engine.flavour == "ik" else None
    stderr = sys.stderr
    comparison = compare_repo(
        repo,
        rig,
        settings,
        revision=revision or "main",
        progress=_progress(stderr),
        ik_build=ik_build,
    )
    if stderr.isatty():
        stderr.write("\r" + " " * 70 + "\r")
    if args.json:
        json.dump(comparison_json(comparison), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_comparison(comparison, sys.stdout)
    return 0


def add_parser(sub: SubParsers) -> None:
    from moe_studio.core.cli.plan import add_rig_arguments

    p = sub.add_parser(
        "compare",
        help="every quant of a Hugging Face GGUF repository on this rig (reads headers only)",
        description="List a repository's GGUF quants, read each one's headers remotely and "
        "show how it lands on the rig after auto-place.",
    )
    p.add_argument("repo", help="OWNER/REPO[@REVISION] on Hugging Face (HF_ENDPOINT is honoured)")
    add_rig_arguments(p)
    run = p.add_argument_group("run settings")
    run.add_argument("--ctx", "-c", type=int, help="context size (default 32768)")
    run.add_argument("--cache", metavar="TYPE", help="K and V cache type, e.g. q8_0")
    run.add_argument("--dialect", choices=("ik", "mainline"), help="the engine (default ik)")
    run.add_argument(
        "--engine",
        metavar="PATH",
        help="your llama-server: an ik_llama.cpp build older than a quant's tensor types is "
        "marked as unable to load it",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    # What plan's settings reader expects and compare does not offer.
    p.set_defaults(
        func=_cmd_compare,
        cache_k=None,
        cache_v=None,
        ubatch=None,
        batch=None,
        no_fa=False,
        mla=None,
        amb=None,
        threads=None,
        parallel=None,
        host=None,
        port=None,
        no_mmap=False,
        extra=[],
    )
