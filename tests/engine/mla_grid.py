"""Record tiny-deepseek2 compute buffers over a wider MLA grid than the calibration's.

``resources/calibration/compute.json`` covers ``-mla`` 1/3, ``-fa`` on/off, ctx 512/4096 and
``-ub`` 128/512/2048 in three placements; this adds ctx 256/1024/2048, ``-ub`` 256/1024,
``-mla`` 2, a q8_0 K cache and a CPU-only run, and stores what ik printed in
``tests/data/mla_tiny_grid.json`` (``tests/core/test_mla_alloc.py`` checks our model against it)::

    MOE_STUDIO_ENGINE=/path/to/llama-server python -m tests.engine.mla_grid

Runs start the engine for real (the tiny model loads in well under a second): ik 8337e4cd's
``--dry-run`` crashes on MLA without flash attention. ``-amb`` is left at its default: the tiny
model's decompressed K/V (2 heads) never reaches ``-amb``'s 128 MiB floor;
``tests/data/mla_dryrun.json`` covers it at full width.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moe_studio.core.gguf.model import open_model
from moe_studio.core.plan.settings import Settings
from tests.engine.compute_calibration import (
    ROOT,
    Run,
    command,
    measure,
    our_device,
    settings_summary,
)
from tests.engine.conftest import RpcServers
from tests.support.tiny_models import write_tiny_model

GRID_FILE = ROOT / "tests" / "data" / "mla_tiny_grid.json"


def runs() -> Iterator[Run]:
    """``spread`` over ctx × ub × fa × mla × K cache type; ``exps_cpu`` and a CPU-only run on a
    few of them."""
    for ctx in (256, 1024, 2048):
        for ubatch in (256, 1024):
            for fa in (True, False):
                for mla in (1, 2, 3):
                    for ctk in ("f16", "q8_0"):
                        s = Settings(
                            ctx=ctx,
                            ubatch=ubatch,
                            batch=2048,
                            flash_attn=fa,
                            mla=mla,
                            cache_type_k=ctk,
                            threads=1,
                        )
                        yield Run("deepseek2", "spread", s)
                        if ctx == 1024 and ctk == "f16":
                            yield Run("deepseek2", "exps_cpu", s)
                            yield Run("deepseek2", "cpu", s)


def cpu_command(run: Run) -> list[str]:
    """The CPU-only command (no RPC device, everything in RAM)."""
    s = run.settings
    argv = ["llama-server", "-m", "tiny-deepseek2.gguf", "-ngl", "0", "-c", str(s.ctx)]
    argv += ["-fa", "on" if s.flash_attn else "off", "-b", str(s.batch), "-ub", str(s.ubatch)]
    argv += ["-t", "1", "-mla", str(s.effective_mla), "-ctk", s.cache_type_k, "-np", "1"]
    return argv


def run_name(run: Run) -> str:
    s = run.settings
    fa = "fa" if s.flash_attn else "nofa"
    mla = f"mla{s.effective_mla}-k{s.cache_type_k}"
    return f"tiny-deepseek2/{run.placement}/ub{s.ubatch}-c{s.ctx}-{fa}-{mla}"


def version(engine: Path) -> str:
    out = subprocess.run(
        [str(engine), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    lines = (out.stdout + out.stderr).splitlines()
    return next((line.strip() for line in lines if "version" in line), "unknown")


def record(engine: Path, work: Path) -> dict[str, Any]:
    model = write_tiny_model(work / "tiny-deepseek2.gguf", "deepseek2")
    layout = open_model(model)
    points = []
    with RpcServers(engine.with_name("rpc-server"), 2, log_dir=work) as servers:
        for i, run in enumerate(runs()):
            stored = cpu_command(run) if run.placement == "cpu" else command(run, layout)
            try:
                got = measure(stored, engine, model, servers.endpoints, work / f"{i}.log")
            except Exception as exc:  # a combination ik refuses: kept out, said why
                print(f"{run_name(run)}: {exc}".splitlines()[0], file=sys.stderr)
                continue
            points.append(
                {
                    "run": run_name(run),
                    "settings": settings_summary(run.settings, "deepseek2")
                    | {"cache_type_k": run.settings.cache_type_k},
                    "command": shlex.join(stored),
                    "compute": {our_device(d): mib for d, mib in sorted(got.compute.items())},
                }
            )
    return {
        "what": "compute buffer size lines ik_llama.cpp printed for tiny-deepseek2 "
        "(tests/support/tiny_models.py), CPU + two rpc-server devices or CPU only",
        "engine": "ik_llama.cpp",
        "version": version(engine),
        "build": "8337e4cd (build 4840), the CPU+RPC build at /work/ik",
        "recorded_by": "python -m tests.engine.mla_grid",
        "points": points,
    }


def main() -> int:
    engine = os.environ.get("MOE_STUDIO_ENGINE")
    if not engine:
        print("Set MOE_STUDIO_ENGINE to an ik_llama.cpp llama-server built with RPC.")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        doc = record(Path(engine), Path(tmp))
    GRID_FILE.write_text(
        json.dumps({k: v for k, v in doc.items() if k != "points"}, indent=1)[:-2]
        + ',\n "points": [\n'
        + ",\n".join("  " + json.dumps(p, ensure_ascii=False) for p in doc["points"])
        + "\n ]\n}\n"
    )
    print(f"{len(doc['points'])} runs recorded in {GRID_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
