"""The compute-buffer terms taken from the engines' source (moe_studio.core.plan.compute)."""

from __future__ import annotations

from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, TensorGroup
from moe_studio.core.hardware.devices import CPU_NAME, Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.compute import (
    ComputeTerms,
    RamWeights,
    compute_terms,
    cuda_can_offload,
    describes_build,
    graph_tokens,
    mask_bytes,
    mask_count,
    offload_threshold,
    rebuilt_kv_b_bytes,
)
from moe_studio.core.plan.layers import plan_layer_split
from moe_studio.core.plan.memory import Estimate, estimate
from moe_studio.core.plan.placement import assign, expert_cells, initial_plan, range_cells
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB, MiB

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


def test_old_ik_builds_offload_moe_matmuls_from_32_tokens() -> None:
    # ggml_backend_cuda_offload_op before PR #520 (build 3745): op->ne[2] >= 32 for MUL_MAT_ID.
    ds = catalog.load_catalog("catalog:deepseek-v3@IQ2_KS")
    assert offload_threshold(ds, Settings(engine_build=3744)) == 32
    assert offload_threshold(ds, Settings(engine_build=3745)) == 32 * 256 // 8
    assert offload_threshold(ds, Settings()) == 32 * 256 // 8


def test_cuda_multiplies_iqk_r4_types_only_from_pr_461() -> None:
    # ggml_backend_cuda_supports_op gained IQ2_K_R4..IQ5_K_R4 in build 3714: before, -rtr'd IQk
    # experts (and R4 files) kept their matmuls on the CPU.
    for build, expected in ((3713, False), (3714, True), (None, True)):
        s = Settings(engine_build=build)
        assert cuda_can_offload("iq3_k_r4", s) is expected
        assert cuda_can_offload("iq3_k", s.with_(rtr=True)) is expected
        assert cuda_can_offload("iq3_k", s)  # not repacked: CUDA multiplies it in every build
    assert not cuda_can_offload("iq4_ks_r4", Settings(engine_build=3714))
    assert cuda_can_offload("iq4_ks_r4", Settings(engine_build=3715))
    assert not cuda_can_offload("iq1_m_r4", Settings(engine_build=3728))


def test_before_pr_405_only_down_of_the_fused_moe_goes_to_the_gpu() -> None:
    layout = catalog.load_catalog("catalog:deepseek-v3@IQ2_KS")
    ram = RamWeights(expert_max=1000 * MiB, has_cuda=True)

    def terms(build: int) -> tuple[ComputeTerms, ComputeTerms]:
        s = Settings(ctx=8192, ubatch=512, batch=512, engine_build=build)
        gpu = compute_terms(
            layout, s, holds_layers=True, holds_output=False, is_cuda=True,
            cpu_expert_tensor_max=ram.expert_max, offload_target=True, ram=ram,
        )  # fmt: skip
        host = compute_terms(
            layout, s, holds_layers=True, holds_output=False, is_cuda=False,
            cpu_expert_tensor_max=ram.expert_max, hosts_kv=False, is_host=True, ram=ram,
        )  # fmt: skip
        return gpu, host

    (old_gpu, old_host), (new_gpu, new_host) = terms(3682), terms(3683)
    assert old_gpu.offload_copy == ram.expert_max  # down alone
    assert new_gpu.offload_copy == 2 * ram.expert_max  # the fused up/gate op, both weights
    hp = layout.hparams
    up_gate_out = hp.n_ff_exp * hp.n_expert_used * 512 * 4
    assert old_host.ffn - new_host.ffn == up_gate_out  # up/gate's result stays on the host


def test_split_inputs_are_freed_with_their_split() -> None:
    # ggml-backend adds the mask and every weight copy as a node at the start of its split, so
    # ggml-alloc frees them after their last use: the output phase holds no mask, the copy
    # phase no attention. ik 3737/3738 printed 2502.00 MiB on every GPU holding Qwen3-235B's
    # output at -ub 4096, whatever the context: logits + the last layer's output and its norm.
    layout = catalog.load_catalog("catalog:qwen3-235b-a22b@Q4_K_M")
    hp = layout.hparams
    ram = RamWeights(expert_max=630 * MiB, has_cuda=True)
    for ctx in (4096, 32768, 65536):
        s = Settings(ctx=ctx, ubatch=4096, batch=4096, engine_build=3737)
        # Its layers' experts sit in RAM, so its own FFN phase is the layer input and its norm.
        last = compute_terms(
            layout, s, holds_layers=True, holds_output=True, is_cuda=True,
            cpu_expert_tensor_max=ram.expert_max, offload_target=False, ram=ram,
            own_ffn=2 * hp.n_embd * 4096 * 4,
        )  # fmt: skip
        assert last.total == (hp.n_vocab + 2 * hp.n_embd) * 4096 * 4 == int(2502 * MiB)
        first = compute_terms(
            layout, s, holds_layers=True, holds_output=False, is_cuda=True,
            cpu_expert_tensor_max=ram.expert_max, offload_target=True, ram=ram,
        )  # fmt: skip
        assert first.offload_copy == 2 * ram.expert_max
        assert first.total == first.mask + max(first.attention, first.ffn, first.offload_phase)
        assert first.total < first.mask + first.attention + first.offload_copy


def test_the_first_gpu_runs_the_attention_of_layers_left_in_ram() -> None:
    # offload_op takes every op with a RAM weight from 32 tokens: with -ngl 0 the host keeps
    # only the graph inputs (ik 3722 printed mask + n_embd·T·4 for its CUDA_Host buffer).
    layout = catalog.load_catalog("catalog:deepseek-v3@IQ2_KS")
    s = Settings(ctx=8192, ubatch=512, batch=512, engine_build=3722)  # MoE offload from 32 tokens
    est = run("catalog:deepseek-v3@IQ2_KS", "ngl0", s)
    host, cuda0 = est.host, est.device("CUDA0")
    assert cuda0 is not None
    mask = mask_bytes(layout, s, host=True)
    assert host.compute == int(mask + layout.hparams.n_embd * 512 * 4)
    assert cuda0.compute > mask_bytes(layout, s, host=False) + 2 * GiB  # attention + copies
    # Below 32 tokens nothing is offloaded: the host runs every layer, the GPU reserves nothing.
    small = run("catalog:deepseek-v3@IQ2_KS", "ngl0", s.with_(ubatch=16, batch=16))
    small_cuda0 = small.device("CUDA0")
    assert small_cuda0 is not None and small_cuda0.compute == 0
    assert small.host.compute > mask_bytes(layout, s.with_(ubatch=16, batch=16), host=True) * 2


def test_experts_the_cpu_multiplies_return_to_the_layers_gpu() -> None:
    # ik 3737 on an RPC device, Qwen3-30B-A3B with -ot exps=CPU, -ub 512, c32768, q8_0 cache,
    # output kept on the CPU: 100.50 MiB printed = 32 (f16 mask) + down's [n_embd, n_used, T]
    # result copied back + its weighted copy + the residual (+ 0.5 of router outputs).
    layout = catalog.load_catalog("catalog:qwen3-30b-a3b@Q4_K_M")
    hp = layout.hparams
    s = Settings(ctx=32768, ubatch=512, batch=512, engine_build=3737)
    kwargs = dict(
        holds_layers=True, holds_output=False, is_cuda=False, cpu_expert_tensor_max=0,
        offload_target=False, own_ffn=2 * hp.n_embd * 512 * 4,
    )  # fmt: skip
    back = compute_terms(layout, s, ram_experts=True, **kwargs)  # type: ignore[arg-type]
    assert back.ffn == (2 * hp.n_embd * hp.n_expert_used + hp.n_embd) * 512 * 4  # 68 MiB
    assert abs(back.ffn / MiB - (100.50 - 32)) < 1
    alone = compute_terms(layout, s, ram_experts=False, **kwargs)  # type: ignore[arg-type]
    assert alone.ffn == 2 * hp.n_embd * 512 * 4
