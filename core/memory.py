"""Memory per device: weights, KV cache, compute buffer and fixed overhead, for both engines.

Weights are exact tensor bytes. KV follows engines.md §5 (ik ``llama_model::cache_size``,
mainline ``llama_kv_cache``) and lives on each layer's *default* device (the
``-ngl``/``-dev``/``-ts`` split), not where ``-ot`` put the attention weights (engines.md §11).

The compute buffer has no closed form in either engine: both reserve a worst-case graph and
measure it. Our model (``compute_buffers``) is documented term by term below; its calibration
points — sizes real engines printed — live in ``resources/calibration/compute.json`` and the
tests check the model against each of them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from core.devices import CPU_NAME, DeviceKind, Rig
from core.ggml_types import GGMLType, type_by_name
from core.model import ModelLayout
from core.placement import Plan
from core.settings import Settings
from core.tensors import GLOBAL_LAYER, ROUTED_EXPERT_GROUPS, TensorGroup
from core.units import MiB

# ik's CUDA backend offloads a MoE matmul whose weights live in RAM when
# batch * n_used >= MIN_BATCH * n_expert (ggml-cuda.cu, engines.md §1.1); mainline when batch >= 32.
OP_OFFLOAD_MIN_BATCH = 32


def cache_type(name: str) -> GGMLType:
    found = type_by_name(name)
    if found is None:
        from core.errors import CommandError

        raise CommandError(
            f"{name!r} is not a KV cache type; use f16, q8_0, q4_0 or another ggml type."
        )
    return found


def effective_mla(layout: ModelLayout, settings: Settings) -> int:
    """ik's MLA mode after its own adjustments (0 for models without MLA)."""
    if not layout.hparams.is_mla or not settings.is_ik:
        return 0
    mla = settings.effective_mla
    if mla and not layout.has_attn_kv_b:
        # "missing wkv_b tensor(s)… changing MLA from %d to 1" (engines.md §5.2).
        return 1
    return mla


def kv_layer_bytes(layout: ModelLayout, settings: Settings, layer: int) -> int:
    """KV cache bytes of one layer, as the chosen engine allocates them."""
    hp = layout.hparams
    if layer >= hp.n_layer_kv:
        return 0
    tk = cache_type(settings.cache_type_k)
    tv = cache_type(settings.cache_type_v)
    if settings.is_ik:
        cells = settings.kv_size
        mla = effective_mla(layout, settings)
        if mla:
            width = hp.kv_lora_rank + hp.n_rot
            if settings.flash_attn:
                return tk.row_bytes(width) * cells
            size = (tk if mla == 1 else tv).row_bytes(width) * cells
            if mla == 1:
                size += tv.row_bytes(hp.kv_lora_rank * cells)
            return size
        n_kv = hp.head_count_kv[layer]
        key, value = hp.key_length, hp.value_length
        if hp.is_mla and hp.key_length_mla:  # ML-converted DeepSeek run with -mla 0
            key, value, n_kv = hp.key_length_mla, hp.value_length_mla, max(hp.head_count)
        # ik keeps full-context rows for sliding-window layers (no SWA compression here).
        return tk.row_bytes(key) * n_kv * cells + tv.row_bytes(value * n_kv) * cells
    # mainline: context padded to 256; one stream when unified (server default) or -np 1.
    n_seq = max(1, settings.parallel)
    pad = 256
    if n_seq == 1:
        cells = -(-settings.ctx // pad) * pad
    else:
        cells = n_seq * (-(-(settings.ctx // n_seq) // pad) * pad)
    if hp.is_swa(layer) and hp.sliding_window:
        swa = hp.sliding_window + settings.ubatch
        cells = min(cells, -(-swa // pad) * pad)
    if hp.is_mla and hp.key_length_mla:
        # MLA GGUF: only the latent K (kv_lora_rank + rope, 1 head) is stored (engines.md §5.2).
        return tk.row_bytes(hp.key_length * hp.head_count_kv[layer]) * cells
    n_kv = hp.head_count_kv[layer]
    return tk.row_bytes(hp.key_length * n_kv) * cells + tv.row_bytes(hp.value_length * n_kv) * cells


def kv_bytes(layout: ModelLayout, settings: Settings) -> list[int]:
    """KV bytes per layer (0 for layers without a KV cache)."""
    return [kv_layer_bytes(layout, settings, il) for il in range(layout.n_layer)]


# --- compute buffer ------------------------------------------------------------------------------


def _layer_compute(layout: ModelLayout, settings: Settings) -> float:
    """ik's per-layer worst-case activation estimate (``get_layer_sizes``), max over layers.

    Routed experts: ``ne1 · ubatch · n_used · 4`` per expert matrix; shared and dense FFN:
    ``ne1 · ubatch · 4``; attention: Q/K/V rows plus the FA output per token; plus the layer input
    (twice with norms); with MLA mode 3 the decompressed K/V ``2 · v_head · heads · ctx · 4``, with
    heads split so one chunk stays under ``-amb`` MiB.
    """
    hp = layout.hparams
    ub = settings.ubatch
    used = max(1, hp.n_expert_used)
    exps: Counter[int] = Counter()
    shexp: Counter[int] = Counter()
    dense: Counter[int] = Counter()
    attn: Counter[int] = Counter()
    for t in layout.tensors:
        if not t.loaded or t.layer == GLOBAL_LAYER or not t.name.endswith(".weight"):
            continue
        ne1 = t.shape[1] if len(t.shape) > 1 else 1
        stem = t.name.rsplit(".", 2)[-2]
        if t.group in ROUTED_EXPERT_GROUPS:
            exps[t.layer] += ne1 * ub * used * 4
        elif t.group is TensorGroup.SHARED:
            shexp[t.layer] += ne1 * ub * 4
        elif t.group is TensorGroup.FFN:
            dense[t.layer] += ne1 * ub * 4
        elif stem in ("attn_q", "attn_k", "attn_v"):
            attn[t.layer] += ne1 * ub * 4
        elif stem == "attn_output":
            attn[t.layer] += t.shape[0] * ub * 4
    inp = hp.n_embd * ub * 4 * 2
    worst = 0.0
    for il in range(hp.n_layer_kv):
        ffn = max(exps[il], shexp[il], dense[il]) + inp
        worst = max(worst, ffn, attn[il])
    if effective_mla(layout, settings) == 3 and hp.is_mla:
        n_head = max(hp.head_count)
        v_head = hp.value_length_mla or hp.value_length
        ctx = settings.kv_size
        full_mib = 2 * v_head * n_head * ctx * 4 / MiB
        heads = n_head
        amb = settings.effective_amb
        if amb > 0 and full_mib > amb:
            heads = 1
            for split in range(2, n_head):
                if n_head % split == 0 and full_mib / split <= amb:
                    heads = n_head // split
                    break
        worst = max(worst, 2 * v_head * heads * ctx * 4)
    return worst


def offload_threshold(layout: ModelLayout, settings: Settings) -> int:
    """Smallest ubatch at which the GPU takes over MoE matmuls of RAM-resident experts."""
    hp = layout.hparams
    if not settings.is_ik or not hp.n_expert or not hp.n_expert_used:
        return OP_OFFLOAD_MIN_BATCH
    return -(-OP_OFFLOAD_MIN_BATCH * hp.n_expert // hp.n_expert_used)


@dataclass(frozen=True, slots=True)
class ComputeTerms:
    """The parts of one device's compute-buffer estimate (bytes)."""

    activations: float = 0.0
    logits: float = 0.0
    attention_scores: float = 0.0
    offload_copy: float = 0.0

    @property
    def total(self) -> int:
        return int(max(self.activations, self.logits) + self.attention_scores + self.offload_copy)


def compute_terms(
    layout: ModelLayout,
    settings: Settings,
    *,
    holds_layers: bool,
    holds_output: bool,
    is_cuda: bool,
    cpu_expert_tensor_max: int,
    layer_compute: float | None = None,
) -> ComputeTerms:
    """Compute-buffer model for one device (see the module docstring)."""
    if not holds_layers and not holds_output:
        return ComputeTerms()
    hp = layout.hparams
    tokens = min(settings.ctx, settings.ubatch)
    act = _layer_compute(layout, settings) if layer_compute is None else layer_compute
    act = act if holds_layers else hp.n_embd * tokens * 4 * 2
    logits = hp.n_vocab * tokens * 4 if holds_output else 0
    scores = 0.0
    if not settings.flash_attn and holds_layers and not effective_mla(layout, settings):
        # K·Q scores in f32 for every head; ik splits heads to keep a chunk under -amb MiB.
        full = max(hp.head_count or (1,)) * settings.kv_size * tokens * 4
        scores = min(full, settings.effective_amb * MiB) if settings.is_ik else full
    copy = 0.0
    offloading = settings.ubatch >= offload_threshold(layout, settings)
    if is_cuda and holds_layers and cpu_expert_tensor_max and offloading:
        # The weights of RAM-resident experts are copied into the compute buffer for the GPU
        # matmul (llama.cpp PR #6083); up and gate are live together (fused MoE), hence 2×.
        copy = 2 * cpu_expert_tensor_max
    return ComputeTerms(act, logits, scores, copy)


# --- the estimate --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceBudget:
    """One device's memory, in bytes."""

    name: str
    kind: DeviceKind
    capacity: int
    reserve: int
    weights: int
    kv: int
    compute: int
    overhead: int
    label: str = ""

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute + self.overhead

    @property
    def usable(self) -> int:
        return max(0, self.capacity - self.reserve)

    @property
    def overflow(self) -> int:
        """Bytes over the usable capacity (0 when it fits)."""
        return max(0, self.total - self.usable)

    @property
    def fits(self) -> bool:
        return self.overflow == 0

    @property
    def free(self) -> int:
        return self.usable - self.total


@dataclass(frozen=True, slots=True)
class Estimate:
    """Per-device budgets (GPU-like devices in engine order, then the host) and notes."""

    devices: tuple[DeviceBudget, ...]
    layer_devices: tuple[str, ...]  # where each layer's KV lives
    notes: tuple[str, ...] = field(default=())

    def device(self, name: str) -> DeviceBudget | None:
        for d in self.devices:
            if d.name == name:
                return d
        return None

    @property
    def host(self) -> DeviceBudget:
        return self.devices[-1]

    @property
    def fits(self) -> bool:
        return all(d.fits for d in self.devices)

    def as_json(self) -> list[dict[str, object]]:
        return [
            {
                "name": d.name,
                "kind": d.kind.value,
                "capacity": d.capacity,
                "reserve": d.reserve,
                "weights": d.weights,
                "kv": d.kv,
                "compute": d.compute,
                "overhead": d.overhead,
                "total": d.total,
                "fits": d.fits,
            }
            for d in self.devices
        ]


def estimate(
    layout: ModelLayout,
    plan: Plan,
    rig: Rig,
    settings: Settings,
    layer_devices: Sequence[str],
    *,
    kv_per_layer: Sequence[int] | None = None,
    layer_compute: float | None = None,
) -> Estimate:
    """Memory per device for ``plan`` with KV on ``layer_devices`` (from ``core.layers``).

    ``kv_per_layer`` and ``layer_compute`` may be passed in when only the plan changed, so a
    re-estimate after a cell edit does not recompute what depends on settings alone.
    """
    weights: Counter[str] = Counter()
    cpu_expert_max = 0
    tensors = layout.tensors
    for t, d in zip(tensors, plan.devices, strict=True):
        if d:
            weights[d] += t.nbytes
            if d == CPU_NAME and t.group in ROUTED_EXPERT_GROUPS and t.nbytes > cpu_expert_max:
                cpu_expert_max = t.nbytes
    kv_layers = kv_bytes(layout, settings) if kv_per_layer is None else kv_per_layer
    kv: Counter[str] = Counter()
    for il, dev in enumerate(layer_devices):
        kv[dev] += kv_layers[il]
    if layer_compute is None:
        layer_compute = _layer_compute(layout, settings)
    output_index = layout.index.get("output.weight", layout.index.get("token_embd.weight"))
    output_device = plan.devices[output_index] if output_index is not None else CPU_NAME
    layer_set = set(layer_devices)
    budgets = []
    for device in (*rig.devices, rig.cpu):
        is_cpu = device.kind is DeviceKind.CPU
        terms = compute_terms(
            layout,
            settings,
            holds_layers=device.name in layer_set or (is_cpu and bool(weights[CPU_NAME])),
            holds_output=output_device == device.name,
            is_cuda=device.kind is DeviceKind.CUDA,
            cpu_expert_tensor_max=cpu_expert_max,
            layer_compute=layer_compute,
        )
        overhead = settings.gpu_overhead if device.kind is DeviceKind.CUDA else 0
        budgets.append(
            DeviceBudget(
                name=device.name,
                kind=device.kind,
                capacity=device.memory_total,
                reserve=0 if is_cpu else settings.reserve,
                weights=weights[device.name],
                kv=kv[device.name],
                compute=terms.total,
                overhead=overhead,
                label=device.label,
            )
        )
    notes = []
    unknown = sorted(set(weights) - {d.name for d in budgets})
    if unknown:
        notes.append(
            f"The plan uses {', '.join(unknown)}, which this rig does not have; "
            "add the device or move those cells."
        )
    return Estimate(tuple(budgets), tuple(layer_devices), tuple(notes))
