"""The compute-buffer terms taken from the engines' source (moe_studio.core.plan.compute)."""

from __future__ import annotations

from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, TensorGroup
from moe_studio.core.hardware.devices import CPU_NAME, Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.compute import (
    RamWeights,
    compute_terms,
    describes_build,
    graph_tokens,
    mask_bytes,
    mask_count,
    rebuilt_kv_b_bytes,
)
from moe_studio.core.plan.layers import plan_layer_split
from moe_studio.core.plan.memory import Estimate, estimate
from moe_studio.core.plan.placement import assign, expert_cells, initial_plan, range_cells
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB

OUTPUT = [(GLOBAL_LAYER, g) for g in (TensorGroup.OUTPUT, TensorGroup.OUTPUT_NORM)]


def two_gpus() -> Rig:
    gpus = tuple(Device(f"CUDA{i}", DeviceKind.CUDA, 80 * GiB, index=i) for i in range(2))
    return Rig("two", HostInfo(ram_total=1024 * GiB), gpus)


def run(model: str, plan_of: str, settings: Settings) -> Estimate:
    layout = catalog.load_catalog(model)
    rig = two_gpus()
    plan = initial_plan(layout)
    half = layout.n_layer // 2
    if plan_of != "ngl0":
        plan = assign(layout, plan, range_cells(layout, 0, half - 1), "CUDA0").after
        plan = assign(layout, plan, range_cells(layout, half, layout.n_layer - 1), "CUDA1").after
        plan = assign(layout, plan, OUTPUT, "CUDA1").after
        plan = assign(layout, plan, expert_cells(layout), CPU_NAME).after
    split = plan_layer_split(layout, plan, rig, settings)
    return estimate(layout, plan, rig, settings, split.kv_devices)


def test_ram_experts_are_copied_to_the_first_gpu_only() -> None:
    layout = catalog.load_catalog("catalog:qwen3-30b-a3b")
    ram = RamWeights(expert_max=max(t.nbytes for t in layout.tensors if "_exps" in t.name))

    def copy(ubatch: int, *, first: bool) -> float:
        s = Settings(ctx=8192, ubatch=ubatch, batch=ubatch)
        terms = compute_terms(
            layout,
            s,
            holds_layers=True,
            holds_output=False,
            is_cuda=True,
            cpu_expert_tensor_max=ram.expert_max,
            offload_target=first,
            ram=ram,
        )
        return terms.offload_copy

    # ik offloads a MoE matmul once ub · n_used ≥ 32 · n_expert: 32 · 128 / 8 = 512 tokens.
    assert copy(4096, first=True) == 2 * ram.expert_max  # up and gate live together
    assert copy(4096, first=False) == 0  # the second GPU never takes the copies
    assert copy(256, first=True) == 0  # below the threshold the CPU runs the matmul


def test_ngl_0_still_reserves_a_cuda_compute_buffer_in_a_cuda_build() -> None:
    est = run("catalog:deepseek-v3@IQ2_KS", "ngl0", Settings(ctx=8192, ubatch=4096, batch=4096))
    cuda0, cuda1 = est.device("CUDA0"), est.device("CUDA1")
    assert cuda0 is not None and cuda1 is not None
    assert cuda0.weights == 0 and cuda0.compute > 2 * GiB  # the offloaded matmuls
    assert cuda1.compute == 0


def test_sliding_window_models_hold_a_second_mask() -> None:
    oss = catalog.load_catalog("catalog:gpt-oss-120b")
    qwen = catalog.load_catalog("catalog:qwen3-30b-a3b")
    assert mask_count(oss) == 2 and mask_count(qwen) == 1
    s = Settings(ctx=32768, ubatch=512)
    rows = -(-graph_tokens(s) // 16) * 16
    assert mask_bytes(oss, s, host=False) == 2 * s.kv_size * rows * 2  # ub × ctx × 2 B each
    assert mask_bytes(oss, s.with_(flash_attn=False), host=False) == 2 * s.kv_size * rows * 4


def test_ik_rebuilds_attn_kv_b_for_a_mainline_deepseek_gguf() -> None:
    mainline = catalog.load_catalog("catalog:deepseek-v3@Q4_K_M")
    ik = catalog.load_catalog("catalog:deepseek-v3@IQ2_KS")
    assert not mainline.has_attn_kv_b and ik.has_attn_kv_b
    rebuilt = rebuilt_kv_b_bytes(mainline, Settings())
    assert len(rebuilt) == mainline.n_layer
    # 512 × 128·(128+128) in q8_0 (34 bytes per 32 values) per layer.
    assert set(rebuilt.values()) == {512 // 32 * 34 * 128 * 256}
    assert rebuilt_kv_b_bytes(mainline, Settings(mla=1)) == {}
    assert rebuilt_kv_b_bytes(ik, Settings()) == {}
    assert rebuilt_kv_b_bytes(mainline, Settings(dialect="mainline")) == {}


def test_the_model_says_which_builds_it_describes() -> None:
    assert describes_build("ik_llama.cpp", "2026-08-15")
    assert not describes_build("ik_llama.cpp", "2025-03-16")
    assert not describes_build("ik_llama.cpp", "")
    assert not describes_build("ollama", "2026-08-15")
