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
from typing import TextIO

from moe_studio.core.cli.parsing import SubParsers
from moe_studio.core.errors import RemoteError
from moe_studio.core.units import format_bytes


def _progress(out: TextIO) -> object:
    last = [-1]

    def report(fraction: float, name: str) -> None:
        percent = int(fraction * 100)
        if percent != last[0] and out.isatty():
            last[0] = percent
            out.write(f"\rreading headers: {percent:3d}%  {name[:50]:<50}")
            out.flush()

    return report


def rows_json(rows: list[dict[str, object]]) -> str:
    return json.dumps(rows, indent=1)


def _cmd_compare(args: argparse.Namespace) -> int:
    from moe_studio.core.cli.plan import _rig, _settings
    from moe_studio.core.plan.compare import ENGINE_NAMES, place_on_rig
    from moe_studio.core.plan.settings import Settings
    from moe_studio.core.remote.cache import HeaderCache
    from moe_studio.core.remote.hub import hub_client, list_repo
    from moe_studio.core.remote.quants import (
        download_command,
        group_quants,
        local_path,
        quant_url,
        read_quants,
    )
    from moe_studio.core.remote.urls import check_repo, hub_endpoint

    repo, _, revision = args.repo.removeprefix("hf://").strip("/").partition("@")
    if repo.startswith(("https://", "http://")):
        parts = repo.split("/")
        repo = "/".join(parts[3:5])
    check_repo(repo, args.repo)
    rig = _rig(args)
    settings = _settings(args, Settings(dialect=args.dialect or "ik"))
    listing = list_repo(repo, revision or "main")
    quants = group_quants(listing.gguf_files())
    if not quants:
        raise RemoteError(
            f"{hub_endpoint()}/{repo}", f"{repo} has no GGUF files; nothing to compare."
        )
    stderr = sys.stderr
    results = read_quants(
        listing,
        quants,
        client=hub_client(),
        cache=HeaderCache(),
        progress=_progress(stderr),  # type: ignore[arg-type]
    )
    if stderr.isatty():
        stderr.write("\r" + " " * 70 + "\r")
    if all(r.layout is None for r in results):
        raise RemoteError(
            f"{hub_endpoint()}/{repo}",
            f"No quant of {repo} could be read; the first: {results[0].error}",
        )
    rows: list[dict[str, object]] = []
    for r in results:
        q = r.quant
        row: dict[str, object] = {
            "quant": q.label,
            "files": [f.path for f in q.files],
            "url": quant_url(listing, q),
            "size": q.size,
            "download": download_command(repo, q, quants, listing.revision),
            "local_path": local_path(repo, q),
        }
        if r.layout is None:
            row["error"] = r.error
        else:
            p = place_on_rig(r.layout, rig, settings)
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
    best = next((row for row in rows if row.get("fits") and row.get("engine_loads")), None)
    if args.json:
        doc = {
            "repo": repo,
            "revision": listing.revision,
            "commit": listing.commit,
            "dialect": settings.dialect,
            "rig": rig.name,
            "quants": rows,
            "best": best["quant"] if best else None,
        }
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    out = sys.stdout
    engine = ENGINE_NAMES.get(settings.dialect, settings.dialect)
    out.write(
        f"{repo} @ {listing.commit[:12]} on {rig.name}, {engine}, ctx {settings.ctx}\n\n"
        f"{'quant':<18}{'size':>11}{'GPU':>11}{'RAM':>11}  {'fits':<5}{'experts on GPU':>15}"
        f"  loads on {engine}\n"
    )
    for row in rows:
        label = str(row["quant"])[:17]
        size = format_bytes(int(row["size"]))  # type: ignore[call-overload]
        if "error" in row:
            out.write(f"{label:<18}{size:>11}  (not read: {row['error']})\n")
            continue
        share = float(row["expert_gpu_share"])  # type: ignore[arg-type]
        out.write(
            f"{label:<18}{size:>11}"
            f"{format_bytes(int(row['gpu_bytes'])):>11}"  # type: ignore[call-overload]
            f"{format_bytes(int(row['ram_bytes'])):>11}  "  # type: ignore[call-overload]
            f"{'yes' if row['fits'] else 'no':<5}{share:>14.0%} "
            f"  {'yes' if row['engine_loads'] else 'no: ' + str(row['engine_problem'])}\n"
        )
    if best:
        out.write(
            f"\nThe largest quant that fits and loads is {best['quant']}. Download it with:\n"
            f"  {best['download']}\n"
            f"then plan it with: moe-studio plan {best['local_path']}\n"
        )
    else:
        out.write("\nNo quant both fits this rig and loads on this engine.\n")
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
