"""Failure diagnosis: the sentence, which fixes for which buffer, how experts are chosen, and the
predicted-vs-actual rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_studio.core.engine.diagnosis import Diagnosis, FixKind, _choose_layers, compare, diagnose
from moe_studio.core.engine.log_events import Failure, FailureKind
from moe_studio.core.engine.log_parser import parse_log
from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, ROUTED_EXPERT_GROUPS, TensorGroup
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.memory import DeviceBudget, Estimate
from moe_studio.core.plan.placement import Plan, assign, expert_cells, initial_plan, range_cells
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB, MiB

LOGS = Path(__file__).resolve().parents[1] / "data" / "logs" / "ik"


@pytest.fixture(scope="module")
def deepseek() -> ModelLayout:
    return catalog.load("catalog:deepseek-v3")


@pytest.fixture(scope="module")
def rig() -> Rig:
    return Rig("test", HostInfo(512 * GiB), (Device("CUDA0", DeviceKind.CUDA, 24 * GiB),))


@pytest.fixture(scope="module")
def plan(deepseek: ModelLayout) -> Plan:
    """Layers 0–60 and the output on CUDA0, experts of layers 3–50 on CPU: experts of 51–60
    stay on the GPU. (An output matrix in RAM would send the output matmul to CUDA0 for any
    -ub ≥ 32, a part of the compute buffer that does not shrink with -ub.)"""
    on_gpu = assign(
        deepseek, initial_plan(deepseek), range_cells(deepseek, 0, 60), "CUDA0", pin=False
    )
    output = [(GLOBAL_LAYER, g) for g in (TensorGroup.OUTPUT, TensorGroup.OUTPUT_NORM)]
    on_gpu = assign(deepseek, on_gpu.after, output, "CUDA0", pin=False)
    return assign(deepseek, on_gpu.after, expert_cells(deepseek, 3, 50), "CPU", pin=False).after


# -mla 1: the latent attention path, whose compute buffer scales with -ub (the -mla 3 prompt
# path is sized by the context instead, so halving -ub would not be the first fix).
SETTINGS = Settings(ctx=32768, cache_type_k="q8_0", cache_type_v="q8_0", ubatch=512, mla=1)


def diagnosis_of(
    log: str, layout: ModelLayout, plan: Plan, rig: Rig, settings: Settings
) -> Diagnosis:
    report = parse_log((LOGS / log).read_text().splitlines())
    assert report.failure is not None
    return diagnose(report.failure, layout, plan, rig, settings, report=report)


def test_compute_buffer_oom(deepseek: ModelLayout, plan: Plan, rig: Rig) -> None:
    d = diagnosis_of("syn_cuda_oom_compute.log", deepseek, plan, rig, SETTINGS)
    # 23884 MiB free, 17043.52 + 1166.62 MiB already allocated, 6144 MiB asked for.
    assert d.sentence == (
        "CUDA0 ran out of memory allocating the 6.0 GiB compute buffer; 470.1 MiB was missing."
    )
    assert [f.kind for f in d.fixes][:2] == [FixKind.LOWER_UBATCH, FixKind.MOVE_EXPERTS]
    ub = d.fixes[0]
    assert ub.settings.ubatch == 256 and ub.edit is None and ub.plan is plan
    # Halving -ub halves the engine's 6 GiB request (the estimate's share, scaled to it).
    assert ub.frees is not None and ub.frees >= 3 * GiB - 64 * MiB and ub.sufficient
    move = next(f for f in d.fixes if f.kind is FixKind.MOVE_EXPERTS)
    assert move.label.startswith("Move the experts of layer ") and "from CUDA0 to CPU" in move.label
    assert move.sufficient and move.frees is not None and move.frees >= 470 * MiB + 256 * MiB
    assert not move.moves_pinned  # those experts were not pinned
    moved = {layer for layer, group in move.edit.cells} if move.edit else set()
    assert len(moved) == 1 and moved <= set(range(51, 61))


def test_kv_oom(deepseek: ModelLayout, plan: Plan, rig: Rig) -> None:
    settings = SETTINGS.with_(cache_type_k="f16", cache_type_v="f16", ctx=65536)
    d = diagnosis_of("syn_cuda_oom_kv.log", deepseek, plan, rig, settings)
    assert d.sentence.startswith("CUDA0 ran out of memory allocating the 8.6 GiB KV cache; ")
    kinds = [f.kind for f in d.fixes]
    assert kinds[0] is FixKind.QUANTIZE_CACHE
    assert set(kinds) == {FixKind.QUANTIZE_CACHE, FixKind.MOVE_EXPERTS, FixKind.SMALLER_CONTEXT}
    ctx = next(f for f in d.fixes if f.kind is FixKind.SMALLER_CONTEXT)
    assert ctx.settings.ctx == 32768 and ctx.label == "Halve the context: -c 65536 → 32768"


def test_model_oom_only_moves_experts(deepseek: ModelLayout, rig: Rig) -> None:
    everything = assign(deepseek, initial_plan(deepseek), range_cells(deepseek, 0, 60), "CUDA0")
    d = diagnosis_of("syn_cuda_oom_model.log", deepseek, everything.after, rig, SETTINGS)
    assert "allocating the 25.1 GiB buffer for the model weights" in d.sentence
    assert [f.kind for f in d.fixes] == [FixKind.MOVE_EXPERTS]
    fix = d.fixes[0]
    assert fix.moves_pinned and fix.label.endswith("(includes cells you pinned)")
    # The moved cells are routed experts only, whole layers, on CPU now and pinned there.
    assert fix.edit is not None
    assert {group for _, group in fix.edit.cells} == set(ROUTED_EXPERT_GROUPS) & {
        g for (_, g) in deepseek.cells
    }
    for cell in fix.edit.cells:
        assert all(fix.plan.devices[i] == "CPU" for i in deepseek.cells[cell])
        assert cell in fix.plan.pinned


def test_pinned_layers_move_last() -> None:
    sizes = {0: 10, 1: 10, 2: 10, 3: 5}
    assert _choose_layers(sizes, set(), 18) == [2, 1]
    assert _choose_layers(sizes, {2}, 18) == [1, 0]
    assert _choose_layers(sizes, set(), 4) == [3]  # the smallest layer that is enough
    assert _choose_layers(sizes, set(), 100) == [2, 1, 0, 3]  # all, still not enough


@pytest.mark.parametrize(
    ("ubatch", "batch", "expected"),
    [(512, 2048, (256, 2048)), (384, 2048, (256, 2048)), (256, 128, (128, 128)), (128, 2048, None)],
)
def test_lower_ubatch(
    ubatch: int, batch: int, expected: tuple[int, int] | None, deepseek: ModelLayout, rig: Rig
) -> None:
    failure = Failure(FailureKind.COMPUTE_BUFFERS, "failed", 0, "CUDA0", 2 * GiB)
    settings = SETTINGS.with_(ubatch=ubatch, batch=batch)
    d = diagnose(failure, deepseek, initial_plan(deepseek), rig, settings)
    ub = [f for f in d.fixes if f.kind is FixKind.LOWER_UBATCH]
    if expected is None:
        assert not ub
    else:
        assert (ub[0].settings.ubatch, ub[0].settings.batch) == expected


def test_cache_fix_depends_on_flash_attention(deepseek: ModelLayout, rig: Rig) -> None:
    failure = Failure(FailureKind.KV_CACHE, "failed", 0, "CUDA0", GiB)
    plain = Settings(ctx=8192)
    q8 = next(f for f in diagnose(failure, deepseek, initial_plan(deepseek), rig, plain).fixes)
    assert q8.label == "Use a q8_0 KV cache"
    no_fa = plain.with_(flash_attn=False)
    k_only = diagnose(failure, deepseek, initial_plan(deepseek), rig, no_fa).fixes[0]
    assert (k_only.settings.cache_type_k, k_only.settings.cache_type_v) == ("q8_0", "f16")
    assert "needs flash attention" in k_only.detail
    done = diagnose(failure, deepseek, initial_plan(deepseek), rig, SETTINGS.with_(ctx=4096))
    assert done.fixes == ()  # already q8_0, -c at its floor, nothing on CUDA0 to move
    assert done.sentence == "CUDA0 ran out of memory allocating the 1.0 GiB KV cache."


def test_host_memory_and_other_failures(deepseek: ModelLayout, rig: Rig, plan: Plan) -> None:
    host = Failure(FailureKind.BUFFER_ALLOCATION, "failed", None, "CPU", 300 * GiB)
    d = diagnose(host, deepseek, plan, rig, SETTINGS)
    assert d.sentence.startswith("The host (CPU) ran out of memory allocating the 300.0 GiB")
    assert all(f.kind is not FixKind.MOVE_EXPERTS for f in d.fixes)
    other = Failure(FailureKind.UNKNOWN_ARGUMENT, "unknown argument", argument="-fmoe")
    d = diagnose(other, deepseek, plan, rig, SETTINGS)
    assert d.sentence == other.describe() and d.fixes == () and not d.out_of_memory


def test_oom_although_the_log_said_enough_was_free(
    deepseek: ModelLayout, rig: Rig, plan: Plan
) -> None:
    report = parse_log(
        [
            "CUDA0: using device CUDA0 - 23884 MiB free",
            "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 100.00 MiB on device 0: "
            "cudaMalloc failed: out of memory",
        ]
    )
    assert report.failure is not None
    d = diagnose(report.failure, deepseek, plan, rig, SETTINGS, report=report)
    assert d.missing is None
    assert d.sentence == (
        "CUDA0 ran out of memory allocating the 100.0 MiB buffer, although about 23.3 GiB seemed "
        "free (another program may be using it, or its memory is fragmented)."
    )


def test_compare_rows() -> None:
    def budget(name: str, kind: DeviceKind, w: int, kv: int, c: int) -> DeviceBudget:
        return DeviceBudget(name, kind, 24 * GiB, 0, w, kv, c, 0)

    estimate = Estimate(
        (
            budget("CUDA0", DeviceKind.CUDA, 10 * MiB, 4 * MiB, 2 * MiB),
            budget("CUDA1", DeviceKind.CUDA, 0, 0, 0),
            budget("CPU", DeviceKind.CPU, 100 * MiB, 0, 1 * MiB),
        ),
        (),
    )
    report = parse_log(
        [
            "llm_load_tensors:      CUDA0 buffer size =    11.00 MiB",
            "llm_load_tensors:        CPU buffer size =   100.00 MiB",
            "llm_load_tensors: CUDA_Split buffer size =     1.00 MiB",
            "llama_kv_cache_init:      CUDA0 KV buffer size =     4.00 MiB",
            "llama_init_from_model:  CUDA_Host  output buffer size =     0.50 MiB",
            "llama_init_from_model:      CUDA0 compute buffer size =     3.00 MiB",
            "llama_init_from_model:  CUDA_Host compute buffer size =     1.00 MiB",
        ]
    )
    rows = {r.device: r for r in compare(estimate, report)}
    assert list(rows) == ["CUDA0", "CPU", "CUDA_Split"]  # CUDA1 holds nothing anywhere
    cuda = rows["CUDA0"]
    assert (cuda.diff_weights, cuda.diff_kv, cuda.diff_compute) == (MiB, 0, MiB)
    assert rows["CPU"].actual_compute == 1 * MiB + MiB // 2  # output buffer counted as compute
    assert rows["CUDA_Split"].predicted_weights is None and rows["CUDA_Split"].diff_weights is None
