"""The advisor: -b/-ub from the RAM-resident experts and the PCIe link, the offload threshold,
NUMA binding and threads."""

from __future__ import annotations

from functools import cache

from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, NumaNode, Rig
from moe_studio.core.plan.advisor import advise
from moe_studio.core.plan.autoplace import auto_place
from moe_studio.core.plan.layers import plan_layer_split
from moe_studio.core.plan.memory import estimate, offload_threshold
from moe_studio.core.plan.placement import Plan, initial_plan
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB


@cache
def layout(spec: str) -> ModelLayout:
    return catalog.load_catalog(spec)


def _rig(
    gpu: int = 24,
    gen: int | None = 4,
    width: int | None = 16,
    numa: tuple[NumaNode, ...] = (),
    ram: int = 256,
) -> Rig:
    devices = (
        (Device("CUDA0", DeviceKind.CUDA, gpu * GiB, pcie_gen=gen, pcie_width=width),)
        if gpu
        else ()
    )
    host = HostInfo(ram * GiB, cores_physical=32, cores_logical=64, numa_nodes=numa)
    return Rig("t", host, devices)


def _advise(lay: ModelLayout, plan: Plan, rig: Rig, s: Settings):  # type: ignore[no-untyped-def]
    split = plan_layer_split(lay, plan, rig, s)
    return advise(lay, plan, rig, s, estimate(lay, plan, rig, s, split.kv_devices))


def test_threshold_is_ik_rule_and_mainline_32() -> None:
    ds = layout("deepseek-v3")
    assert offload_threshold(ds, Settings()) == 32 * 256 // 8  # 1024 for 256 experts, 8 used
    assert offload_threshold(ds, Settings(dialect="mainline")) == 32
    assert offload_threshold(layout("gpt-oss-120b"), Settings()) == 32 * 128 // 4


def test_batch_advice_picks_the_largest_fitting_ubatch_that_offloads() -> None:
    ds = layout("deepseek-v3@IQ2_KS")
    rig = _rig()
    s = Settings(cache_type_k="q8_0", cache_type_v="q8_0")
    lean = auto_place(ds, initial_plan(ds), rig, s, experts=False).plan
    advice = _advise(ds, lean, rig, s)
    chosen = next(o for o in advice.options if o.ubatch == advice.ubatch)
    assert chosen.fits and chosen.offloads and advice.ubatch >= 1024
    assert advice.batch >= advice.ubatch
    below = [o for o in advice.options if o.ubatch < 1024]
    assert below and not any(o.offloads for o in below)
    # Copy time is the RAM-resident expert bytes over the PCIe 4.0 x16 link (at 80 %).
    cpu_experts = sum(
        t.nbytes
        for t, d in zip(ds.tensors, lean.devices, strict=True)
        if d == "CPU" and t.group.is_routed_expert
    )
    assert abs(chosen.copy_seconds - cpu_experts / (31.5e9 * 0.8)) < 0.05
    assert (
        chosen.pp_ceiling is not None
        and abs(chosen.pp_ceiling - chosen.ubatch / chosen.copy_seconds) < 1e-6
    )
    # Bigger batches cost compute-buffer memory.
    computes = [o.compute_bytes for o in advice.options]
    assert computes == sorted(computes)
    assert any("-ub" in line and "PCIe" in line for line in advice.lines)


def test_a_slow_link_makes_the_copy_not_pay_off_for_short_prompts() -> None:
    ds = layout("deepseek-v3@IQ2_KS")
    rig = _rig(gen=3, width=4)
    s = Settings(dialect="mainline", cache_type_k="q8_0", cache_type_v="q8_0", ubatch=512)
    plan = auto_place(ds, initial_plan(ds), rig, s, experts=False).plan
    advice = _advise(ds, plan, rig, s)
    assert "GGML_OP_OFFLOAD_MIN_BATCH" in advice.env
    assert int(advice.env["GGML_OP_OFFLOAD_MIN_BATCH"]) > 32
    ik = _advise(ds, plan, rig, s.with_(dialect="ik", ubatch=2048))
    assert not ik.env  # ik's own rule already keeps ubatches under 1024 on the CPU
    if ik.extra_args:
        assert ik.extra_args[0] == "-cuda" and ik.extra_args[1].startswith("offload-batch-size=")


def test_no_gpu_or_no_ram_experts_means_no_copy_to_amortize() -> None:
    q = layout("qwen3-30b-a3b")
    advice = _advise(q, initial_plan(q), _rig(gpu=0), Settings())
    assert "no CUDA GPU" in advice.lines[0] and not advice.options


def test_over_budget_devices_are_warned_about() -> None:
    ds = layout("deepseek-v3")
    rig = _rig(gpu=24)
    everything = Plan(tuple("CUDA0" if t.loaded else "" for t in ds.tensors))
    advice = _advise(ds, everything, rig, Settings())
    assert any("CUDA0 is" in w and "over" in w for w in advice.warnings)


def test_numa_binds_when_the_cpu_part_fits_one_node_and_interleaves_otherwise() -> None:
    q = layout("qwen3-235b-a22b@IQ2_KS")
    nodes = (
        NumaNode(0, tuple(range(0, 32)), 384 * GiB),
        NumaNode(1, tuple(range(32, 64)), 384 * GiB),
    )
    rig = _rig(numa=nodes, ram=768)
    s = Settings()
    plan = auto_place(q, initial_plan(q), rig, s).plan
    advice = _advise(q, plan, rig, s)
    assert advice.numactl[:2] == ("numactl", "--cpunodebind=0") and advice.numa == "numactl"
    assert advice.threads == 16  # 32 logical CPUs on the node, 2 threads per core
    small_nodes = (
        NumaNode(0, tuple(range(0, 32)), 32 * GiB),
        NumaNode(1, tuple(range(32, 64)), 32 * GiB),
    )
    big = _advise(q, plan, _rig(numa=small_nodes, ram=64), s)
    assert big.numactl == ("numactl", "--interleave=all") and big.numa == "distribute"
    assert big.threads == 32
    single = _advise(q, plan, _rig(), s)
    assert single.threads == 32 and not single.numactl


def test_an_old_build_s_mla_0_default_is_called_out() -> None:
    from moe_studio.core.gguf import catalog as cat
    from moe_studio.core.plan.planning import Planner

    layout = cat.load_catalog(cat.DEMO)
    gpu = Device("CUDA0", DeviceKind.CUDA, 24 * GiB, index=0)
    rig = Rig("r", HostInfo(256 * GiB, cores_physical=16), (gpu,))
    old = Planner(layout, rig, Settings(engine_build=3737))
    advice = old.result(old.initial()).advice
    assert advice is not None
    assert any("defaults to -mla 0" in w and "-mla 3" in w for w in advice.warnings)
    new = Planner(layout, rig, Settings())
    advice = new.result(new.initial()).advice
    assert advice is not None and not any("-mla 0" in w for w in advice.warnings)
