"""ik's ``-sm graph`` in the plan (moe_studio.core.plan.graph_split): each term as the source at
8337e4cd computes it, on a tiny qwen3moe and on the sparse full-size DeepSeek-V3 layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.engine.log_parser import parse_log
from moe_studio.core.errors import CommandError
from moe_studio.core.gguf.model import ModelLayout, open_model
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, ROUTED_EXPERT_GROUPS, TensorGroup
from moe_studio.core.hardware.devices import CPU_NAME, Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.cmdline import build_command
from moe_studio.core.plan.compute import _attention_phase, graph_tokens, mask_bytes
from moe_studio.core.plan.graph_split import DERIVED_NOTE, MAX_EXTRA_ALLOC, graph_split
from moe_studio.core.plan.layers import graph_tensor_split, ik_tensor_split, plan_layer_split
from moe_studio.core.plan.learned import Learned, MeasuredRun
from moe_studio.core.plan.memory import (
    ComputeSource,
    Estimate,
    estimate,
    kv_bytes,
    layer_compute_bytes,
)
from moe_studio.core.plan.placement import Plan, assign, expert_cells, initial_plan, range_cells
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB, MiB
from tests.support.sparse import write_catalog_sparse
from tests.support.tiny_models import write_tiny_model

GRAPH_LOG = (
    Path(__file__).resolve().parents[1]
    / "data/logs/ik/cap_tiny_models_qwen3moe_rpc2_sm_graph_dry_run.log"
)
OUTPUT = [(GLOBAL_LAYER, g) for g in (TensorGroup.OUTPUT, TensorGroup.OUTPUT_NORM)]


def gpus(kind: DeviceKind = DeviceKind.CUDA) -> Rig:
    if kind is DeviceKind.RPC:
        devices = tuple(
            Device(f"RPC0[127.0.0.1:5005{i}]", kind, 80 * GiB, endpoint=f"127.0.0.1:5005{i}")
            for i in range(2)
        )
    else:
        devices = tuple(Device(f"CUDA{i}", kind, 80 * GiB, index=i) for i in range(2))
    return Rig("two", HostInfo(ram_total=1024 * GiB), devices)


def spread(layout: ModelLayout, rig: Rig, *, experts_in_ram: bool = False) -> Plan:
    """First half of the layers on the first GPU, the rest and the output on the second."""
    a, b = (d.name for d in rig.devices)
    half = layout.n_layer // 2
    plan = assign(layout, initial_plan(layout), range_cells(layout, 0, half - 1), a).after
    plan = assign(layout, plan, range_cells(layout, half, layout.n_layer - 1), b).after
    plan = assign(layout, plan, OUTPUT, b).after
    if experts_in_ram:
        plan = assign(layout, plan, expert_cells(layout), CPU_NAME).after
    return plan


def run(layout: ModelLayout, plan: Plan, rig: Rig, settings: Settings) -> Estimate:
    split = plan_layer_split(layout, plan, rig, settings)
    ts = graph_tensor_split(layout, settings, split)
    return estimate(layout, plan, rig, settings, split.kv_devices, tensor_split=ts)


def shares(layout: ModelLayout, plan: Plan, rig: Rig, settings: Settings) -> list[float]:
    ts = ik_tensor_split(layout, settings, plan_layer_split(layout, plan, rig, settings))
    return [v / sum(ts) for v in ts]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ModelLayout:
    return open_model(write_tiny_model(tmp_path_factory.mktemp("t") / "q.gguf", "qwen3moe"))


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory: pytest.TempPathFactory) -> ModelLayout:
    shards = write_catalog_sparse("deepseek-v3", tmp_path_factory.mktemp("ds"))
    return open_model(shards[0])


TINY = Settings(ctx=1024, ubatch=512, batch=1024)
GRAPH = TINY.with_(split_mode_graph=True)


def test_weights_and_kv_split_by_ts_on_the_tiny_model(tiny: ModelLayout) -> None:
    rig = gpus()
    plan = spread(tiny, rig)
    layer, graph = run(tiny, plan, rig, TINY), run(tiny, plan, rig, GRAPH)
    s = shares(tiny, plan, rig, GRAPH)
    # Every offloaded layer's matrices are split by -ts; 1-D tensors (norms, biases) are copied
    # to both GPUs (prepare_split_tensors(-1, …, mirror)); the output stays whole (PR #1038).
    on_gpu = [
        t
        for t, d in zip(tiny.tensors, plan.devices, strict=True)
        if d != CPU_NAME and t.layer != GLOBAL_LAYER
    ]
    output = sum(t.nbytes for t in tiny.tensors if t.name.startswith("output"))
    matrices = sum(t.nbytes for t in on_gpu if len(t.shape) >= 2)
    vectors = sum(t.nbytes for t in on_gpu if len(t.shape) < 2)
    for i, name in enumerate(("CUDA0", "CUDA1")):
        dev = graph.device(name)
        assert dev is not None
        assert dev.weights == round(matrices * s[i]) + vectors + (output if i == 1 else 0)
        # KV: the K/V heads of each GPU's attention split (src/llama.cpp 1544-1578).
        assert dev.kv == sum(round(kv * s[i]) for kv in kv_bytes(tiny, GRAPH))
    total_kv = sum(d.kv for d in layer.devices)
    assert sum(d.kv for d in graph.devices) == pytest.approx(total_kv, abs=4)
    assert graph.host.weights == layer.host.weights  # token_embd stays in RAM
    assert DERIVED_NOTE in graph.notes and DERIVED_NOTE not in layer.notes


def test_compute_terms_per_gpu_on_the_tiny_model(tiny: ModelLayout) -> None:
    rig = gpus()
    plan = spread(tiny, rig)
    graph = run(tiny, plan, rig, GRAPH)
    s = shares(tiny, plan, rig, GRAPH)
    hp = tiny.hparams
    tokens = graph_tokens(GRAPH)
    inp = 2 * hp.n_embd * tokens * 4  # the layer input and its norm, not split
    mask = mask_bytes(tiny, GRAPH, host=False)  # the whole KQ mask on every GPU
    reduce = 2 * hp.n_embd * tokens * 2  # one f16 partial from each of the two GPUs
    for i, name in enumerate(("CUDA0", "CUDA1")):
        attention = s[i] * (_attention_phase(tiny, GRAPH, tokens) - inp) + inp
        ffn = s[i] * (layer_compute_bytes(tiny, GRAPH) - inp) + inp
        logits = hp.n_vocab * tokens * 4 if i == 1 else 0  # where the whole output matrix is
        want = int(mask + max(attention, ffn, logits) + reduce + MAX_EXTRA_ALLOC)
        dev = graph.device(name)
        assert dev is not None and dev.compute == want


def test_deepseek_mla_cache_is_replicated_and_ram_experts_turn_scheduling_off(
    deepseek: ModelLayout,
) -> None:
    rig = gpus()
    plan = spread(deepseek, rig, experts_in_ram=True)
    settings = Settings(ctx=32768, ubatch=4096, batch=4096)
    layer = run(deepseek, plan, rig, settings)
    graph = run(deepseek, plan, rig, settings.with_(split_mode_graph=True))
    total_kv = sum(d.kv for d in layer.devices)
    assert total_kv > 2 * GiB
    for name in ("CUDA0", "CUDA1"):
        dev = graph.device(name)
        assert dev is not None
        # "KV cache size per device (MLA replicated)": every GPU holds the whole latent cache.
        assert dev.kv == total_kv
    # Routed experts in RAM are tensor overrides: no split-mode-graph scheduling, no -mea buffer.
    split = plan_layer_split(deepseek, plan, rig, settings)
    kv = kv_bytes(deepseek, settings)
    gs = graph_split(deepseek, plan, split.kv_devices, kv, ["CUDA0", "CUDA1"])
    assert gs.overridden and gs.extra_alloc == 0
    whole = spread(deepseek, rig)
    assert graph_split(deepseek, whole, split.kv_devices, kv, ["CUDA0", "CUDA1"]).extra_alloc == (
        MAX_EXTRA_ALLOC
    )
    experts_ram = sum(
        t.nbytes
        for t, d in zip(deepseek.tensors, plan.devices, strict=True)
        if t.group in ROUTED_EXPERT_GROUPS and d == CPU_NAME
    )
    assert graph.host.weights == layer.host.weights >= experts_ram
    gpu_weights = sum(d.weights for d in layer.devices if d.kind is DeviceKind.CUDA)
    graph_weights = sum(d.weights for d in graph.devices if d.kind is DeviceKind.CUDA)
    assert gpu_weights <= graph_weights < gpu_weights + 64 * MiB  # + norms on both GPUs
    first, second = graph.device("CUDA0"), graph.device("CUDA1")
    assert first is not None and second is not None
    # The copy of RAM experts for big batches stays on the first GPU, as in layer mode.
    lay_first = layer.device("CUDA0")
    assert lay_first is not None
    assert first.compute > second.compute
    assert first.compute - second.compute > lay_first.compute // 4


def test_the_command_says_sm_graph_and_refuses_rpc(tiny: ModelLayout) -> None:
    rig = gpus()
    argv = build_command(tiny, spread(tiny, rig), rig, GRAPH).argv
    assert argv[argv.index("-sm") + 1] == "graph" and "-ts" in argv
    rpc = gpus(DeviceKind.RPC)
    with pytest.raises(CommandError, match=r"with RPC devices .* Use -sm layer"):
        build_command(tiny, spread(tiny, rpc), rpc, GRAPH)
    assert "-sm" not in build_command(tiny, spread(tiny, rpc), rpc, TINY).argv


def test_cli_split_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(write_tiny_model(tmp_path / "q.gguf", "qwen3moe"))
    common = [model, "--gpu", "8GiB", "--gpu", "8GiB", "--ram", "16GiB", "--ctx", "1024"]
    assert main(["plan", *common, "--split-mode", "graph"]) == 0
    out = capsys.readouterr().out
    assert " -sm graph " in out and "not measured on CUDA" in out
    assert main(["plan", *common, "--split-mode", "graph", "--dialect", "mainline"]) == 1
    err = capsys.readouterr().err
    assert "--split-mode graph is an ik_llama.cpp option" in err
    assert main(["plan", *common, "--split-mode", "layer"]) == 0
    command = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("llama-server"))
    assert " -sm " not in command


def test_mla_heads_not_a_multiple_of_four_are_refused(tmp_path: Path) -> None:
    # Measured: ik 8337e4cd loading the tiny deepseek2 (2 heads) with -sm graph on two
    # rpc-servers stops with "llama-load-tensors.cpp:397: GGML_ASSERT(nr % granularity == 0)".
    layout = open_model(write_tiny_model(tmp_path / "d.gguf", "deepseek2"))
    assert max(layout.hparams.head_count) % 4
    rig = gpus()
    with pytest.raises(CommandError, match=r"groups of 4 heads and this model has \d+"):
        build_command(layout, spread(layout, rig), rig, GRAPH)
    assert "-sm" not in build_command(layout, spread(layout, rig), rig, TINY).argv


def test_split_matches_what_ik_printed_for_the_tiny_model(tiny: ModelLayout) -> None:
    # ik 8337e4cd, CPU+RPC build, two local rpc-servers, this tiny qwen3moe (seed 0):
    #   -ngl 99 -ts 1,1 -c 1024 -sm graph --dry-run
    # printed "Estimated model buffer size per device: Device 0: 0.79 MiB, Device 1: 0.79 MiB"
    # and "KV cache size per device: Device 0: 1 MiB, Device 1: 1 MiB" (the split pieces; the RPC
    # build then allocates them beside the whole tensors on device 0, see graph_split's notes).
    plan = assign(tiny, initial_plan(tiny), range_cells(tiny, 0, 1), "CUDA0").after
    plan = assign(tiny, plan, range_cells(tiny, 2, 3), "CUDA1").after
    homes = ["CUDA0", "CUDA0", "CUDA1", "CUDA1"]
    kv = kv_bytes(tiny, TINY)
    ts = {"CUDA0": 1.0, "CUDA1": 1.0}
    gs = graph_split(tiny, plan, homes, kv, ["CUDA0", "CUDA1"], ts)
    for name in ("CUDA0", "CUDA1"):
        assert round(gs.weights[name] / MiB, 2) == 0.79
        assert gs.kv[name] == 1 * MiB
    # The same run, captured (-dev lists both devices, as our command does): the parser reads
    # ik's per-device figures.
    report = parse_log(GRAPH_LOG.read_text(encoding="utf-8").splitlines())
    for i, name in enumerate(("CUDA0", "CUDA1")):
        assert abs(report.split_model[i] - gs.weights[name]) <= 0.005 * MiB
        assert report.split_kv[i] == gs.kv[name]


def test_the_inputs_copied_at_run_time_are_not_in_the_printed_compute(tiny: ModelLayout) -> None:
    # ggml_sched_prepare_graph allocates the input copies from ggml_backend_sched_alloc_graph
    # (ggml/src/ggml-backend.cpp 2661-2755), at the first decode: after the compute buffer lines,
    # so neither a dry run nor a launch's log shows them.
    rig = gpus()
    plan = spread(tiny, rig)
    est = run(tiny, plan, rig, GRAPH)
    for name in ("CUDA0", "CUDA1"):
        dev = est.device(name)
        assert dev is not None and dev.unprinted_compute == MAX_EXTRA_ALLOC
        assert dev.printed_compute == dev.compute - MAX_EXTRA_ALLOC
    assert est.host.unprinted_compute == 0
    # A run's printed figures are learned; the run-time part stays on top of them.
    printed = {d.name: d.printed_compute for d in est.devices}
    measured = MeasuredRun(GRAPH.to_dict(), printed, {n: 3 * MiB for n in printed})
    same = Learned((measured,)).correct(est, GRAPH).device("CUDA0")
    assert same is not None and same.compute_source is ComputeSource.MEASURED
    assert same.compute == 3 * MiB + MAX_EXTRA_ALLOC
    nearby_settings = GRAPH.with_(ctx=2048)
    nearby_est = run(tiny, plan, rig, nearby_settings)
    nearby = Learned((measured,)).correct(nearby_est, nearby_settings).device("CUDA0")
    before = nearby_est.device("CUDA0")
    assert nearby is not None and before is not None
    assert nearby.compute_source is ComputeSource.SCALED
    want = before.printed_compute * 3 * MiB // printed["CUDA0"] + MAX_EXTRA_ALLOC
    assert nearby.compute == want
