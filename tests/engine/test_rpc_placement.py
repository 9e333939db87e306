"""A plan spread over two RPC devices and the CPU, launched on the real engine as we build it.

Two ``rpc-server`` processes on 127.0.0.1 stand in for GPUs (engines.md §8, §11). For each tiny
fixture, plan and settings, :func:`moe_studio.core.plan.cmdline.build_command` writes the command
and the engine's own log must agree with our model of it: every ``-ot`` override line (our rules
and resolver), every ``Setting default device`` line (our ``-ts`` and layer split), each device's
weight buffer (our estimate), each device's KV buffer (our KV formula on the predicted split) and
ik's ``Layer sizes`` table (our replica of its ``get_layer_sizes``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from moe_studio.core.gguf.model import ModelLayout, open_model
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, TensorGroup
from moe_studio.core.hardware.devices import CPU_NAME, HostInfo, Rig
from moe_studio.core.hardware.rpc import rpc_device
from moe_studio.core.plan.cmdline import Command, build_command
from moe_studio.core.plan.layers import ik_layer_sizes
from moe_studio.core.plan.memory import Estimate, engine_settings, estimate
from moe_studio.core.plan.overrides import Overrides, effective_rules, resolve
from moe_studio.core.plan.placement import (
    Plan,
    as_mapping,
    assign,
    expert_cells,
    initial_plan,
    range_cells,
)
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB, MiB
from tests.engine.compute_calibration import spread
from tests.engine.conftest import LlamaServer, free_port

pytestmark = pytest.mark.engine

_OVERRIDDEN = re.compile(
    r"^Tensor (\S+) \(size = +[\d.]+ MiB\) buffer type overridden to (\S+)$", re.MULTILINE
)
_DEFAULT_DEVICE = re.compile(r"^Setting default device in layer +(\d+) to (\d+)$", re.MULTILINE)
_WEIGHTS = re.compile(r"^llm_load_tensors: +(\S+) buffer size = +([\d.]+) MiB$", re.MULTILINE)
_KV = re.compile(r"^llama_kv_cache_init: +(\S+) KV buffer size = +([\d.]+) MiB$", re.MULTILINE)
# "Layer %2d: %9.2f, %9.2f, %9.2f   %9.2f  MiB" (model, KV, total, compute); the output layer
# has no compute column.
_LAYER_SIZE = re.compile(
    r"^Layer +(\d+): +([\d.]+), +([\d.]+), +([\d.]+)(?: +([\d.]+))? +MiB", re.MULTILINE
)


@dataclass(frozen=True)
class Launch:
    """One run: what we planned and predicted, and what the engine printed."""

    layout: ModelLayout
    settings: Settings
    plan: Plan
    command: Command
    estimate: Estimate
    log: str

    @property
    def dev_list(self) -> list[str]:
        argv = list(self.command.argv)
        return argv[argv.index("-dev") + 1].split(",")


PlanMaker = Callable[[ModelLayout, str, str], Plan]


def cpu_first(layout: ModelLayout, first: str, second: str) -> Plan:
    """Layer 0 on the CPU (-ngl below n_layer), layers 1-2 on the *second* endpoint (so -dev
    reverses the --rpc order), layer 3 and the output on the first; layer 2's experts on the CPU
    and layer 1's on the first device."""
    plan = initial_plan(layout)
    plan = assign(layout, plan, range_cells(layout, 1, 2), second).after
    plan = assign(layout, plan, range_cells(layout, 3, 3), first).after
    plan = assign(layout, plan, expert_cells(layout, 2, 2), CPU_NAME).after
    plan = assign(layout, plan, expert_cells(layout, 1, 1), first).after
    return assign(layout, plan, [(GLOBAL_LAYER, TensorGroup.OUTPUT)], first).after


PLANS: dict[str, PlanMaker] = {"spread": spread, "cpu_first": cpu_first}
# Contexts that are not a multiple of the padding (ik: 256 cells with FA, 32 without): 600 → 768,
# 1100 → 1120, 700 → 704. q8_0 K without FA exercises quantized rows; DeepSeek with -mla 1 and no
# FA gets the extra kv^T cache, except under cpu_first where ik switches to -mla 3 (ngl < n_layer).
SETTINGS = {
    "fa": Settings(dialect="ik", ctx=600, threads=1),
    "nofa_q8k": Settings(dialect="ik", ctx=1100, threads=1, flash_attn=False, cache_type_k="q8_0"),
    "mla1_nofa": Settings(dialect="ik", ctx=700, threads=1, flash_attn=False, mla=1),
}


@pytest.fixture(
    scope="module", params=["tiny_qwen3moe", "tiny_deepseek2", "tiny_glm4moe", "tiny_gpt_oss"]
)
def tiny_model(request: pytest.FixtureRequest) -> Path:
    path: Path = request.getfixturevalue(request.param)
    return path


@pytest.fixture(scope="module", params=list(SETTINGS))
def settings(request: pytest.FixtureRequest) -> Settings:
    return SETTINGS[request.param].with_(port=free_port())


@pytest.fixture(scope="module", params=list(PLANS))
def launch(
    request: pytest.FixtureRequest,
    settings: Settings,
    tiny_model: Path,
    engine: Path,
    rpc_endpoints: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Launch:
    """Plan, build the ik command for two RPC devices and no GPU, run it until it serves.

    Once per model, settings and plan; the four checks below read the same log.
    """
    layout = open_model(tiny_model)
    devices = tuple(rpc_device(endpoint, 24 * GiB) for endpoint in rpc_endpoints)
    rig = Rig("two rpc-servers", HostInfo(ram_total=64 * GiB), devices)
    plan = PLANS[request.param](layout, devices[0].name, devices[1].name)
    command = build_command(
        layout, plan, rig, settings, executable=str(engine), model_path=str(tiny_model)
    )
    assert command.split is not None and command.split.exact, command.notes
    est = estimate(layout, plan, rig, settings, command.split.kv_devices)
    server = LlamaServer.from_argv(
        command.argv,
        port=settings.port,
        log_path=tmp_path_factory.mktemp("launch") / "llama-server.log",
    )
    with server:
        pass  # /health answered 200: the engine accepted the command
    return Launch(layout, settings, plan, command, est, server.output)


def _mib_close(reported: float, ours_bytes: int) -> bool:
    # The engine prints MiB with two decimals, so a tiny model's buffer is only known to
    # ±0.005 MiB; allow 0.01 MiB or 0.1 %, whichever is larger.
    ours = ours_bytes / MiB
    return abs(reported - ours) <= max(0.001 * ours, 0.01)


def test_overrides_land_where_the_plan_says(launch: Launch) -> None:
    layout, command = launch.layout, launch.command
    assert command.split is not None
    overridden = dict(_OVERRIDDEN.findall(launch.log))
    assert overridden, "the engine logged no override although the plan needs some"
    # Which tensors our rules match, by the same first-match search the engine runs. The engine
    # also matches (and logs) tensors of GLM's nextn block before it skips them as unused, so
    # every tensor of the file counts here; the weight check shows they take no memory.
    rules = [
        (re.compile(regex), buft)
        for regex, buft in effective_rules(layout, command.overrides, "ik", command.split)
    ]
    ours = {}
    for t in layout.tensors:
        match = next((buft for regex, buft in rules if regex.search(t.name)), None)
        if match is not None:
            ours[t.name] = match
    assert overridden == ours
    # The rest stay on their layer's default device, as our resolver says; together: the plan.
    defaults = resolve(layout, Overrides(), command.split, "ik").devices
    loaded = {t.name for t in layout.tensors if t.loaded}
    engine_placement = {**defaults, **{n: d for n, d in overridden.items() if n in loaded}}
    assert engine_placement == as_mapping(layout, launch.plan)


def test_layer_split_matches_our_prediction(launch: Launch) -> None:
    split = launch.command.split
    assert split is not None
    dev_list = launch.dev_list
    assert dev_list == list(split.devices)
    logged = {int(il): dev_list[int(d)] for il, d in _DEFAULT_DEVICE.findall(launch.log)}
    # ik logs the layers it offloads (the output layer, index n_layer, when ngl > n_layer);
    # the others are CPU layers in our split.
    predicted = {il: d for il, d in enumerate(split.layer_devices) if d != CPU_NAME}
    assert logged == predicted


def test_weight_buffers_match_our_estimate(launch: Launch) -> None:
    reported: Counter[str] = Counter()
    for name, mib in _WEIGHTS.findall(launch.log):
        reported[name] += float(mib)  # one CPU line per mmapped file: sum them
    assert reported
    ours = {d.name: d.weights for d in launch.estimate.devices}
    for name in set(reported) | {n for n, b in ours.items() if b}:
        assert _mib_close(reported.get(name, 0.0), ours.get(name, 0)), (
            f"{name}: engine {reported.get(name, 0.0):.2f} MiB, ours {ours.get(name, 0) / MiB:.4f}"
        )


def test_kv_buffers_match_our_estimate(launch: Launch) -> None:
    reported = {name: float(mib) for name, mib in _KV.findall(launch.log)}
    assert reported
    ours = {d.name: d.kv for d in launch.estimate.devices if d.kv}
    assert set(reported) == set(ours)
    for name, kv in ours.items():
        assert _mib_close(reported[name], kv), (
            f"{name}: engine {reported[name]:.2f} MiB, ours {kv / MiB:.4f} MiB"
        )


def test_ik_layer_sizes_match_our_replica(launch: Launch) -> None:
    # ik sizes every layer (weights + KV, and the worst activations) to place its -ts split;
    # core.layers.ik_layer_sizes replicates that, with the settings ik really runs with.
    assert launch.command.split is not None
    settings = engine_settings(launch.layout, launch.settings, launch.command.split.ngl)
    sizes, max_compute = ik_layer_sizes(launch.layout, settings)
    logged = _LAYER_SIZE.findall(launch.log)
    assert [int(row[0]) for row in logged] == list(range(launch.layout.n_layer + 1))
    for (il, _model, _kv, total, _compute), ours in zip(logged, sizes, strict=True):
        assert abs(float(total) - ours / MiB) <= 0.006, f"layer {il}: {total} MiB vs {ours / MiB}"
    worst = max(float(row[4]) for row in logged[:-1])
    assert abs(worst - max_compute / MiB) <= 0.006
