"""The command we write for an OLD ik_llama.cpp build, run on that build.

Set ``MOE_STUDIO_OLD_ENGINE`` to an old ik llama-server (e.g. build 3737, 58f08e43, 2025-06-08:
a bare ``-fa``, ``-fmoe``, no ``-dev``, no ``-cmoe``, RPC buffers named ``RPC[host:port]``). The
plan is made for the build its ``--version`` prints; the engine must accept every argument, load
the tiny model and answer ``/health``. With an ``rpc-server`` beside it, a plan over two RPC
servers and the CPU must also land where it says (the engine logs each ``-ot`` override).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from moe_studio.core.engine.discovery import EngineInfo, probe_engine
from moe_studio.core.gguf.model import ModelLayout, open_model
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, TensorGroup
from moe_studio.core.hardware.devices import CPU_NAME, HostInfo, Rig
from moe_studio.core.hardware.rpc import rpc_device
from moe_studio.core.plan import engine_builds as builds
from moe_studio.core.plan.cmdline import build_command, unlisted_options
from moe_studio.core.plan.overrides import effective_rules
from moe_studio.core.plan.placement import Plan, assign, expert_cells, initial_plan, range_cells
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB
from tests.engine.conftest import LlamaServer, RpcServers, free_port

pytestmark = pytest.mark.engine

ENV = "MOE_STUDIO_OLD_ENGINE"
# 3737: "Tensor %s buffer type overriden to %s"; newer builds add "(size = … MiB)".
_OVERRIDDEN = re.compile(
    r"^Tensor (\S+)(?: \(size = +[\d.]+ MiB\))? buffer type overrid+en to (\S+)$", re.MULTILINE
)


@pytest.fixture(scope="module")
def old_engine() -> EngineInfo:
    """The old ik build named by MOE_STUDIO_OLD_ENGINE; skips the test when it is unset."""
    value = os.environ.get(ENV)
    if not value:
        pytest.skip(
            f"{ENV} is not set: point it at an old ik_llama.cpp llama-server (e.g. build 3737) "
            "to run the command on the build it is written for"
        )
    info = probe_engine(value)
    if not info.usable:
        pytest.fail(f"{ENV} is {value!r}, which cannot be used: {info.problem}")
    if info.flavour != "ik" or info.build is None:
        pytest.fail(f"{ENV} must be an ik_llama.cpp build that prints its number: {info.label}")
    return info


def _settings(info: EngineInfo) -> Settings:
    # Every flag the old build has: flash attention (a bare -fa there), -amb, -rtr, --metrics,
    # an API key; one thread (see tests/engine/conftest.py).
    return Settings(
        engine_build=info.build,
        ctx=600,
        threads=1,
        amb=256,
        rtr=True,
        metrics=True,
        api_key="old-build-key",
        port=free_port(),
        extra_args=("-cuda", "offload-batch-size=64", "-ger"),
    )


def _run(
    info: EngineInfo, layout: ModelLayout, plan: Plan, rig: Rig, model: Path, log: Path
) -> str:
    settings = _settings(info)
    command = build_command(
        layout, plan, rig, settings, executable=info.path, model_path=str(model)
    )
    argv = command.argv
    # Written for this build: no -fa VALUE, -fmoe, none of the flags it lacks (with a note).
    assert "-fmoe" in argv or builds.has(info.build, builds.FA_FMOE_DEFAULT)
    assert not any(a in ("on", "off") for a in argv), argv
    for flag in ("-cuda", "-ger"):
        assert (flag in argv) is builds.accepts(info.build, flag), argv
        assert (flag in argv) or any(n.startswith(flag) for n in command.notes)
    # The engine's --help omits some flags it accepts (3737: -ot, -rtr): a note, not a refusal.
    note = unlisted_options(argv, info.options, "ik")
    assert not note or "unknown argument" in note
    server = LlamaServer.from_argv(argv, port=settings.port, log_path=log)
    with server:
        status, _ = server.request("GET", "/health")
        assert status == 200
    output = server.output
    for bad in ("unknown argument", "invalid parameter", "error: "):
        assert bad not in output, output[-3000:]
    return output


def test_the_old_build_accepts_our_command(
    old_engine: EngineInfo, tiny_qwen3moe: Path, tmp_path: Path
) -> None:
    layout = open_model(tiny_qwen3moe)
    rig = Rig("this machine", HostInfo(ram_total=8 * GiB))
    log = _run(old_engine, layout, initial_plan(layout), rig, tiny_qwen3moe, tmp_path / "a.log")
    if not builds.has(old_engine.build, builds.FA_FMOE_DEFAULT):
        assert "flash_attn    = 1" in log or "flash_attn = 1" in log, log[-3000:]


def _spread(layout: ModelLayout, first: str, second: str) -> Plan:
    """Layers 0-1 on the first device, 2-3 on the second; layer 1's experts in RAM, layer 3's
    on the first device, the output on the second."""
    plan = assign(layout, initial_plan(layout), range_cells(layout, 0, 1), first).after
    plan = assign(layout, plan, range_cells(layout, 2, 3), second).after
    plan = assign(layout, plan, expert_cells(layout, 1, 1), CPU_NAME).after
    plan = assign(layout, plan, expert_cells(layout, 3, 3), first).after
    return assign(layout, plan, [(GLOBAL_LAYER, TensorGroup.OUTPUT)], second).after


def test_the_old_build_places_tensors_where_our_rpc_plan_says(
    old_engine: EngineInfo, tiny_qwen3moe: Path, tmp_path: Path
) -> None:
    binary = Path(old_engine.path).with_name("rpc-server")
    if not binary.is_file():
        pytest.skip(f"no rpc-server beside {old_engine.path}: build it with -DGGML_RPC=ON")
    layout = open_model(tiny_qwen3moe)
    with RpcServers(binary, 2, log_dir=tmp_path) as servers:
        devices = tuple(rpc_device(e, 24 * GiB) for e in servers.endpoints)
        rig = Rig("two rpc-servers", HostInfo(ram_total=64 * GiB), devices)
        plan = _spread(layout, devices[0].name, devices[1].name)
        log = _run(old_engine, layout, plan, rig, tiny_qwen3moe, tmp_path / "rpc.log")
    command = build_command(layout, plan, rig, _settings(old_engine))
    assert command.split is not None
    logged = dict(_OVERRIDDEN.findall(log))
    assert logged, log[-3000:]
    rules = [
        (re.compile(regex), buft)
        for regex, buft in effective_rules(layout, command.overrides, "ik", command.split)
    ]
    ours = {}
    for t in layout.tensors:
        match = next((buft for regex, buft in rules if regex.search(t.name)), None)
        if match is not None:
            ours[t.name] = match
    # The build's own buffer names (RPC[host:port] before 4033) for the plan's devices.
    to_engine = {d.name: f"RPC[{d.endpoint}]" for d in devices}
    if builds.has(old_engine.build, builds.RPC_DEVICE_NAMES):
        to_engine = {}
    assert logged == {name: to_engine.get(buft, buft) for name, buft in ours.items()}
