"""Advice on ``-b/-ub``, the op-offload threshold, NUMA, threads and multi-GPU.

Batch sizing (seed guide; ik PR #520; llama.cpp #17026): when a ubatch is large enough, the GPU
takes over the matmuls of RAM-resident experts, which means copying those weights over PCIe once
per ubatch. ik does it when ``ub · n_used ≥ 32 · n_expert`` (ggml-cuda.cu), mainline when
``ub ≥ 32``. A ubatch of ``ub`` tokens then costs at least ``cpu_expert_bytes / bandwidth``
seconds, so prompt processing is capped at ``ub / copy_time`` tokens/s — and the compute buffer
grows with ``ub``. We list each choice with its copy time, ceiling and compute-buffer cost and
pick the largest that fits and crosses the threshold. When a copy cannot pay off for short
prompts we suggest raising the threshold (``GGML_OP_OFFLOAD_MIN_BATCH`` / ik
``-cuda offload-batch-size``) to the estimated break-even prompt length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.gguf.tensors import ROUTED_EXPERT_GROUPS
from moe_studio.core.hardware.devices import CPU_NAME, DeviceKind, Rig
from moe_studio.core.plan import engine_builds as builds
from moe_studio.core.plan.memory import (
    Estimate,
    compute_margin,
    compute_terms,
    layer_compute_bytes,
    offload_threshold,
)
from moe_studio.core.plan.placement import Plan
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import format_bytes

# Assumed when the GPU's PCIe link is unknown (PCIe 4.0 x16), and the share of the theoretical
# bandwidth a host-to-device copy reaches in practice.
DEFAULT_BANDWIDTH = 31.5e9
PCIE_EFFICIENCY = 0.8
# Rough CPU prompt-processing throughput per physical core for quantized matmuls (FLOP/s).
CPU_FLOPS_PER_CORE = 50e9
UBATCH_CHOICES = (256, 512, 1024, 2048, 4096, 8192)
# Above this many tokens/s the copy is not what limits prompt processing (GPU compute is): a
# ceiling of ~900000 tokens/s from a 100 MiB copy says nothing a user can act on.
MEANINGFUL_PP_CEILING = 20_000.0


@dataclass(frozen=True, slots=True)
class BatchOption:
    ubatch: int
    offloads: bool  # the GPU takes the RAM-resident experts at this size
    copy_seconds: float
    pp_ceiling: float | None  # tokens/s the PCIe copy allows (None: no copy)
    compute_bytes: int
    fits: bool


@dataclass(frozen=True, slots=True)
class Advice:
    """What the advisor recommends and why (``lines`` are ready to show)."""

    ubatch: int
    batch: int
    options: tuple[BatchOption, ...] = ()
    threads: int | None = None
    numa: str = ""
    numactl: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def _main_gpu(rig: Rig, estimate: Estimate) -> str | None:
    for name in estimate.layer_devices:
        dev = rig.device(name)
        if dev is not None and dev.kind is DeviceKind.CUDA:
            return name
    return rig.gpus[0].name if rig.gpus else None


def advise(
    layout: ModelLayout, plan: Plan, rig: Rig, settings: Settings, estimate: Estimate
) -> Advice:
    """Recommendations for this plan, rig and settings."""
    lines: list[str] = []
    warnings: list[str] = []
    env: dict[str, str] = {}
    extra: list[str] = []
    for d in estimate.devices:
        if not d.fits:
            where = "host RAM" if d.kind is DeviceKind.CPU else d.name
            warnings.append(
                f"{where} is {format_bytes(d.overflow)} over its usable "
                f"{format_bytes(d.usable)}: move cells off it or shrink -c/-ub."
            )
    warnings.extend(estimate.notes)
    hp = layout.hparams
    if settings.is_ik and hp.is_mla and settings.mla is None and settings.effective_mla == 0:
        # Builds before 3983 (PR #943) default to -mla 0: the full per-head K and V cache.
        best = 3 if settings.has(builds.MLA_3) else 2
        fix = (
            f"set MLA to {best} (-mla {best}) to cache the compressed latent instead"
            if settings.has(builds.MLA_TAKES_VALUE)
            else "a build from 3575 on takes -mla N and caches the compressed latent; update it"
        )
        warnings.append(
            f"ik_llama.cpp build {settings.engine_build} defaults to -mla 0, which caches full "
            f"K and V for every head; {fix}."
        )
    cpu_experts = [
        t
        for t, dev in zip(layout.tensors, plan.devices, strict=True)
        if dev == CPU_NAME and t.group in ROUTED_EXPERT_GROUPS
    ]
    cpu_expert_bytes = sum(t.nbytes for t in cpu_experts)
    main = _main_gpu(rig, estimate)
    ubatch, batch = settings.ubatch, settings.batch
    options: list[BatchOption] = []
    if main is None or not cpu_experts:
        reason = "no CUDA GPU" if main is None else "no routed experts in RAM"
        lines.append(
            f"-ub {settings.ubatch}: with {reason} there is no weight copy to amortize; "
            "a larger -ub only costs compute-buffer memory."
        )
    else:
        gpu = rig.device(main)
        assert gpu is not None
        theoretical = gpu.pcie_bandwidth
        bandwidth = (theoretical or DEFAULT_BANDWIDTH) * PCIE_EFFICIENCY
        if theoretical is None:
            lines.append(f"{main}'s PCIe link is unknown; assuming PCIe 4.0 x16.")
        budget = estimate.device(main)
        assert budget is not None
        threshold = offload_threshold(layout, settings)
        biggest = max(t.nbytes for t in cpu_experts)
        copy = cpu_expert_bytes / bandwidth
        for ub in UBATCH_CHOICES:
            if ub > max(settings.ctx, 512):
                break
            s = settings.with_(ubatch=ub)
            terms = compute_terms(
                layout,
                s,
                holds_layers=True,
                holds_output=budget.compute > 0 and main == estimate.layer_devices[-1],
                is_cuda=True,
                cpu_expert_tensor_max=biggest,
                layer_compute=layer_compute_bytes(layout, s),
            )
            total = budget.total - budget.compute + terms.total
            offloads = ub >= threshold
            options.append(
                BatchOption(
                    ub,
                    offloads,
                    copy if offloads else 0.0,
                    ub / copy if offloads else None,
                    terms.total,
                    total + compute_margin(terms.total) <= budget.usable,  # with its band
                )
            )
        good = [o for o in options if o.fits and o.offloads and o.ubatch <= 4096]
        fitting = [o for o in options if o.fits]
        if good:
            pick = good[-1]
            ceiling = pick.pp_ceiling or 0.0
            limit = (
                f"~{_round_rate(ceiling)} tokens/s ceiling for long prompts"
                if ceiling <= MEANINGFUL_PP_CEILING
                else "too little to limit prompt processing"
            )
            lines.append(
                f"-ub {pick.ubatch}: {format_bytes(cpu_expert_bytes)} of experts in RAM cross "
                f"PCIe in {_format_seconds(pick.copy_seconds)} per ubatch ({limit}); the offload "
                f"starts at -ub {threshold}."
            )
        elif fitting:
            pick = fitting[-1]
            lines.append(
                f"-ub {pick.ubatch}: the GPU takes over RAM-resident experts only from -ub "
                f"{threshold}, which does not fit in {main}; prompt processing of those experts "
                "stays on the CPU."
            )
        else:
            pick = options[0]
            warnings.append(f"Even -ub {pick.ubatch} does not fit in {main}'s remaining memory.")
        ubatch = pick.ubatch
        batch = max(ubatch, settings.batch if settings.batch >= ubatch else ubatch)
        # Break-even prompt length: below it the CPU is faster than copying the experts.
        cores = rig.host.cores_physical or 8
        active = sum(t.n_params for t in cpu_experts) * (hp.n_expert_used / max(1, hp.n_expert))
        cpu_rate = cores * CPU_FLOPS_PER_CORE / max(1.0, 2 * active)
        break_even = int(copy * cpu_rate)
        if break_even > threshold and ubatch >= threshold:
            if settings.is_ik:
                min_batch = -(-break_even * max(1, hp.n_expert_used) // max(1, hp.n_expert))
                extra += ["-cuda", f"offload-batch-size={min_batch}"]
                how = f"-cuda offload-batch-size={min_batch}"
            else:
                env["GGML_OP_OFFLOAD_MIN_BATCH"] = str(break_even)
                how = f"GGML_OP_OFFLOAD_MIN_BATCH={break_even}"
            lines.append(
                f"Prompts shorter than ~{break_even} tokens are faster on the CPU than copying "
                f"{format_bytes(cpu_expert_bytes)} over PCIe (estimate); {how} keeps them there."
            )
    threads, numa, numactl = _numa(layout, plan, rig, settings, lines)
    gpus = rig.gpus
    if (
        settings.is_ik
        and len({d for d in estimate.layer_devices if d.startswith("CUDA")}) >= 2
        and not settings.split_mode_graph
    ):
        lines.append(
            "Several GPUs hold layers: ik's -sm graph runs them in parallel instead of in turn."
        )
    if len(gpus) > 1 and settings.dialect == "mainline":
        lines.append(
            "Layers run on the GPUs in turn (layer split); "
            "keep the experts of a layer with its GPU."
        )
    return Advice(
        ubatch,
        batch,
        tuple(options),
        threads,
        numa,
        numactl,
        env,
        tuple(extra),
        tuple(dict.fromkeys(lines)),
        tuple(dict.fromkeys(warnings)),
    )


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def _round_rate(rate: float) -> str:
    """Two significant digits: an estimate, not a measurement (~490, ~4,900 tokens/s)."""
    return f"{float(f'{rate:.2g}'):,.0f}"


def _numa(
    layout: ModelLayout, plan: Plan, rig: Rig, settings: Settings, lines: list[str]
) -> tuple[int | None, str, tuple[str, ...]]:
    host = rig.host
    nodes = host.numa_nodes
    if len(nodes) <= 1:
        if host.cores_physical:
            lines.append(f"-t {host.cores_physical}: one thread per physical core.")
        return host.cores_physical, "", ()
    cpu_bytes = sum(
        t.nbytes for t, d in zip(layout.tensors, plan.devices, strict=True) if d == CPU_NAME
    )
    node = max(nodes, key=lambda n: n.memory_total)
    # A node lists logical CPUs; with SMT each physical core shows up twice.
    logical = host.cores_logical or sum(len(n.cpus) for n in nodes)
    smt = max(1, round(logical / host.cores_physical)) if host.cores_physical else 1
    node_cores = max(1, len(node.cpus) // smt)
    if cpu_bytes <= node.memory_total * 0.9:
        lines.append(
            f"NUMA: the {format_bytes(cpu_bytes)} in RAM fit in node {node.id} "
            f"({format_bytes(node.memory_total)}): bind to it with numactl and use its "
            f"{node_cores} physical cores (--numa numactl)."
        )
        return (
            node_cores,
            "numactl",
            ("numactl", f"--cpunodebind={node.id}", f"--membind={node.id}"),
        )
    lines.append(
        f"NUMA: {format_bytes(cpu_bytes)} in RAM exceed one node "
        f"({format_bytes(node.memory_total)}); "
        "interleave memory over all nodes (numactl --interleave=all, --numa distribute) and use "
        "every physical core."
    )
    return host.cores_physical, "distribute", ("numactl", "--interleave=all")
