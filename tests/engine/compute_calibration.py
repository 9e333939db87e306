"""Measure compute buffers on the real engine: the runs behind ``resources/calibration``.

Each run starts ik_llama.cpp (CPU build with RPC) on a tiny fixture with two local ``rpc-server``
processes standing in for GPUs, and records what the engine prints while it reserves its
worst-case graph: every device's ``compute buffer size`` line, and ik's own per-layer estimate
(``Layer %2d: model, KV, total   compute MiB`` after ``------------------- Layer sizes:``).

Commands are stored with the fixed endpoints ``127.0.0.1:50052`` and ``127.0.0.1:50053``
(:data:`ENDPOINTS`); a run substitutes the ports of the servers it started.
``tests/engine/test_compute_calibration.py`` checks that the stored points still reproduce, and

    MOE_STUDIO_ENGINE=/path/to/llama-server python -m tests.engine.compute_calibration

re-records them (published points in the file are kept).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_studio.core.gguf.model import ModelLayout, open_model
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, TensorGroup
from moe_studio.core.hardware.devices import CPU_NAME, HostInfo, Rig
from moe_studio.core.hardware.rpc import rpc_device
from moe_studio.core.plan.cmdline import build_command
from moe_studio.core.plan.placement import Plan, assign, expert_cells, initial_plan, range_cells
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB
from tests.engine.conftest import LlamaServer, RpcServers, free_port
from tests.support.tiny_models import write_tiny_model

ROOT = Path(__file__).resolve().parents[2]
COMPUTE_FILE = ROOT / "resources" / "calibration" / "compute.json"
LAYER_SIZES_FILE = ROOT / "resources" / "calibration" / "layer_sizes.json"
ENDPOINTS = ("127.0.0.1:50052", "127.0.0.1:50053")
SOURCE = "measured"
ENGINE = "ik_llama.cpp"
VERSION = "8337e4cd, CPU + RPC build (the binary says version 0)"
DEFAULT_TOLERANCE = (
    2.0,
    "tiny fixture, CPU and RPC devices: the target (worst -2.0 %: 0.01 MiB rounding)",
)
FIXTURES = ("qwen3moe", "deepseek2", "glm4moe", "gpt-oss")

_COMPUTE = re.compile(
    r"^llama_init_from_model: +(\S+) compute buffer size = +([\d.]+) MiB$", re.MULTILINE
)
_LAYER = re.compile(
    r"^Layer +(\d+): +([\d.]+), +([\d.]+), +([\d.]+)(?: +([\d.]+))? +MiB", re.MULTILINE
)


def fixture_model(arch: str) -> str:
    """The ``model`` field of a point measured on ``write_tiny_model(path, arch)``."""
    return f"fixture:tiny-{arch}"


# --- placements ----------------------------------------------------------------------------------

PlanMaker = Callable[[ModelLayout, str, str], Plan]


def spread(layout: ModelLayout, first: str, second: str) -> Plan:
    """Layers 0-1 on the first device, 2-3 on the second; layer 1's experts on the CPU and
    layer 3's on the first device; the output stays on the CPU."""
    plan = initial_plan(layout)
    plan = assign(layout, plan, range_cells(layout, 0, 1), first).after
    plan = assign(layout, plan, range_cells(layout, 2, 3), second).after
    plan = assign(layout, plan, expert_cells(layout, 1, 1), CPU_NAME).after
    return assign(layout, plan, expert_cells(layout, 3, 3), first).after


def full(layout: ModelLayout, first: str, second: str) -> Plan:
    """Everything offloaded: layers 0-1 on the first device, 2-3 and the output on the second."""
    plan = initial_plan(layout)
    plan = assign(layout, plan, range_cells(layout, 0, 1), first).after
    plan = assign(layout, plan, range_cells(layout, 2, 3), second).after
    output = [(GLOBAL_LAYER, g) for g in (TensorGroup.OUTPUT, TensorGroup.OUTPUT_NORM)]
    return assign(layout, plan, output, second).after


def exps_cpu(layout: ModelLayout, first: str, second: str) -> Plan:
    """The usual hybrid run on one device: all layers and the output on it, experts on the CPU."""
    del second
    plan = initial_plan(layout)
    plan = assign(layout, plan, range_cells(layout, 0, layout.n_layer - 1), first).after
    output = [(GLOBAL_LAYER, g) for g in (TensorGroup.OUTPUT, TensorGroup.OUTPUT_NORM)]
    plan = assign(layout, plan, output, first).after
    return assign(layout, plan, expert_cells(layout), CPU_NAME).after


PLANS: dict[str, PlanMaker] = {"spread": spread, "full": full, "exps_cpu": exps_cpu}


@dataclass(frozen=True)
class Run:
    """One engine start: a fixture, a placement and settings."""

    arch: str
    placement: str
    settings: Settings

    @property
    def name(self) -> str:
        s = self.settings
        mla = f"-mla{s.effective_mla}" if self.arch == "deepseek2" else ""
        fa = "fa" if s.flash_attn else "nofa"
        return f"tiny-{self.arch}/{self.placement}/ub{s.ubatch}-c{s.ctx}-{fa}{mla}"


def runs() -> Iterator[Run]:
    """The measured grid: every setting with the ``spread`` placement; the other placements
    with ctx 4096 (and DeepSeek's default -mla 3)."""
    for arch in FIXTURES:
        mlas: Sequence[int | None] = (3, 1) if arch == "deepseek2" else (None,)
        for placement in PLANS:
            for ubatch in (128, 512, 2048):
                for ctx in (512, 4096):
                    for fa in (True, False):
                        for mla in mlas:
                            if placement != "spread" and (ctx != 4096 or mla == 1):
                                continue
                            settings = Settings(
                                ctx=ctx, ubatch=ubatch, batch=2048, flash_attn=fa, mla=mla
                            )
                            yield Run(arch, placement, settings.with_(threads=1))


def rig(endpoints: Sequence[str] = ENDPOINTS) -> Rig:
    """Two RPC devices and no GPU."""
    devices = tuple(rpc_device(e, 24 * GiB) for e in endpoints)
    return Rig("two rpc-servers", HostInfo(ram_total=64 * GiB), devices)


def command(run: Run, layout: ModelLayout) -> list[str]:
    """The stored command: ``llama-server -m tiny-<arch>.gguf …`` without --host/--port."""
    the_rig = rig()
    plan = PLANS[run.placement](layout, the_rig.devices[0].name, the_rig.devices[1].name)
    argv = list(
        build_command(
            layout,
            plan,
            the_rig,
            run.settings,
            executable="llama-server",
            model_path=f"tiny-{run.arch}.gguf",
        ).argv
    )
    at = argv.index("--host")
    return argv[:at] + argv[at + 4 :]


# --- running -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """What one run printed, with device names in the stored (fixed-endpoint) spelling."""

    compute: dict[str, float]  # device → MiB (the largest line when a device prints twice)
    layers: list[list[float]]  # [model, KV, total, compute] per layer; output: [model, KV, total]


def live_argv(
    stored: Sequence[str], engine: Path, model: Path, endpoints: Sequence[str], port: int
) -> list[str]:
    """The stored command with this machine's binary, model file, endpoints and port."""
    text = shlex.join(stored)
    for canonical, live in zip(ENDPOINTS, endpoints, strict=True):
        text = text.replace(canonical, live)
    argv = shlex.split(text)
    argv[0] = str(engine)
    argv[argv.index("-m") + 1] = str(model)
    return [*argv, "--host", "127.0.0.1", "--port", str(port)]


def measure(
    stored: Sequence[str],
    engine: Path,
    model: Path,
    endpoints: Sequence[str],
    log_path: Path,
) -> Measured:
    """Run the stored command until the server answers, and read its buffer lines."""
    port = free_port()
    server = LlamaServer.from_argv(
        live_argv(stored, engine, model, endpoints, port), port=port, log_path=log_path
    )
    with server:
        pass
    log = server.output
    back = dict(zip(endpoints, ENDPOINTS, strict=True))
    compute: dict[str, float] = {}
    for buffer, mib in _COMPUTE.findall(log):
        device = buffer
        for live, canonical in back.items():
            device = device.replace(live, canonical)
        # Without -dev ik lists each RPC device twice and prints its line twice (engines.md §11);
        # our commands always pass -dev, so each device prints once.
        compute[device] = max(compute.get(device, 0.0), float(mib))
    layers = [
        [float(x) for x in groups[1:] if x]
        for groups in _LAYER.findall(log.split("Layer sizes:")[1])
    ]
    return Measured(compute, layers)


def settings_summary(settings: Settings, arch: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ctx": settings.ctx,
        "ubatch": settings.ubatch,
        "batch": settings.batch,
        "flash_attn": settings.flash_attn,
    }
    if arch == "deepseek2":
        out["mla"] = settings.effective_mla
    return out


def record(engine: Path, work: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the whole grid; the compute points and the layer-size points."""
    rpc = engine.with_name("rpc-server")
    models = {arch: write_tiny_model(work / f"tiny-{arch}.gguf", arch) for arch in FIXTURES}
    layouts = {arch: open_model(path) for arch, path in models.items()}
    points: list[dict[str, Any]] = []
    layer_points: list[dict[str, Any]] = []
    with RpcServers(rpc, 2, log_dir=work) as servers:
        for i, run in enumerate(runs()):
            stored = command(run, layouts[run.arch])
            got = measure(stored, engine, models[run.arch], servers.endpoints, work / f"{i}.log")
            common = {
                "source": SOURCE,
                "engine": ENGINE,
                "version": VERSION,
                "model": fixture_model(run.arch),
                "run": run.name,
                "settings": settings_summary(run.settings, run.arch),
                "command": shlex.join(stored),
            }
            for device, mib in sorted(got.compute.items()):
                pct, note = tolerance(run)
                points.append(
                    {
                        **common,
                        "device": our_device(device),
                        "reported_mib": mib,
                        "confidence": "high: log line on this machine",
                        "tolerance_pct": pct,
                        "tolerance_note": note,
                    }
                )
            if run.placement == "spread":
                layer_points.append({**common, "layers": got.layers})
    return points, layer_points


def tolerance(run: Run) -> tuple[float, str]:
    """How close our model must come to a measured run, and why (from what we measured)."""
    del run  # every fixture and setting meets the target (DeepSeek MLA: core/plan/mla_alloc.py)
    return DEFAULT_TOLERANCE


def our_device(buffer: str) -> str:
    """Our device name for an engine buffer name (``CUDA_Host`` is the CPU in CUDA builds)."""
    return CPU_NAME if buffer in ("CPU", "CUDA_Host") else buffer


def json_lines(items: Sequence[dict[str, Any]]) -> str:
    """A JSON list with one item per line (readable diffs when points are re-recorded)."""
    return "[\n" + ",\n".join(json.dumps(item, ensure_ascii=False) for item in items) + "\n]\n"


def main() -> int:
    engine = os.environ.get("MOE_STUDIO_ENGINE")
    if not engine:
        print("Set MOE_STUDIO_ENGINE to an ik_llama.cpp llama-server built with RPC.")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        points, layer_points = record(Path(engine), Path(tmp))
    kept = []
    if COMPUTE_FILE.exists():
        kept = [p for p in json.loads(COMPUTE_FILE.read_text()) if p["source"] != SOURCE]
    COMPUTE_FILE.parent.mkdir(parents=True, exist_ok=True)
    COMPUTE_FILE.write_text(json_lines(points + kept))
    LAYER_SIZES_FILE.write_text(json_lines(layer_points))
    print(f"{len(points)} compute points, {len(layer_points)} layer-size runs recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
