"""Memory per device: weights, KV cache, compute buffer and fixed overhead, for both engines.

Weights are exact tensor bytes. KV follows engines.md §5 (ik ``llama_model::cache_size``,
mainline ``llama_kv_cache``) and lives on each layer's *default* device (the
``-ngl``/``-dev``/``-ts`` split), not where ``-ot`` put the attention weights (engines.md §11).

The compute buffer has no closed form in either engine: both reserve a worst-case graph and
measure it. Our model (:func:`compute_terms`) is documented term by term in the comment above
it; its calibration points — sizes real engines printed — live in
``resources/calibration/compute.json`` and ``tests/core/test_calibration.py`` checks the model
against each of them (``benchmarks/calibration.py`` prints the table).

ik changes some settings by itself; :func:`engine_settings` applies those that move memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from moe_studio.core.gguf.ggml_types import GGMLType, type_by_name
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, ROUTED_EXPERT_GROUPS, TensorGroup
from moe_studio.core.hardware.devices import CPU_NAME, DeviceKind, Rig
from moe_studio.core.plan.placement import Plan
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import MiB

# ik's CUDA backend offloads a MoE matmul whose weights live in RAM when
# batch * n_used >= MIN_BATCH * n_expert (ggml-cuda.cu, engines.md §1.1); mainline when batch >= 32.
OP_OFFLOAD_MIN_BATCH = 32


def cache_type(name: str) -> GGMLType:
    found = type_by_name(name)
    if found is None:
        from moe_studio.core.errors import CommandError

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


def engine_settings(layout: ModelLayout, settings: Settings, ngl: int) -> Settings:
    """The settings ik actually runs with at this ``-ngl``.

    ik switches an MLA model to ``-mla 3`` whenever only some repeating layers are offloaded
    (``0 < ngl < n_layer``), whatever ``-mla`` asked for ("MLA models with ngl < n_layer … =>
    changing mla to 3", ik ``src/llama.cpp`` ``llm_load_tensors`` and ``llama_init_from_model``),
    before it sizes the layers for its split and allocates the KV cache.
    """
    hp = layout.hparams
    if settings.is_ik and hp.is_mla and 0 < ngl < hp.n_layer and settings.effective_mla != 3:
        return settings.with_(mla=3)
    return settings


def ik_ngl(layer_devices: Sequence[str]) -> int:
    """ik's ``-ngl`` for a per-layer default-device list (CPU layers can only lead)."""
    if all(d == CPU_NAME for d in layer_devices):
        return 0
    cpu_prefix = next(i for i, d in enumerate(layer_devices) if d != CPU_NAME)
    return len(layer_devices) - cpu_prefix


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
#
# Both engines size the compute buffer by reserving a worst-case graph: ``T`` tokens (``-ub``
# capped at ``-b`` and at the padded context) against the whole KV cache (``kv`` cells). The
# allocator reuses memory between ops, so a device's buffer is what is live at its peak. Our model
# of that peak, term by term (bytes; calibrated against the sizes ik_llama.cpp printed, see
# ``resources/calibration/compute.json`` and ``tests/core/test_calibration.py``):
#
# * mask — the KQ mask ``kv × pad16(T)``, f16 with flash attention and f32 without; every device
#   that runs attention holds a copy, and the CPU always builds one (the graph inputs live there).
# * attention phase — per token ``4 · (Q + K + V rows + attention output + 2 · n_embd)`` (the
#   input and its norm stay live); without flash attention plus the K·Q scores
#   ``n_head · kv · T · 4`` (ik splits them per head when they exceed ``-amb`` MiB and K has as
#   many heads as Q). DeepSeek MLA in ik: the prompt path (``-mla`` 2/3, FA, ``T ≥ 128``)
#   decompresses K and V for a chunk of heads, ``(nope + v_head) · 6`` bytes per head and cell
#   (the f32 product and its f16 K/V casts), heads chunked to stay under ``-amb`` MiB; the latent
#   path (``-mla 1``, or fewer tokens) keeps ``3 · (kv_lora + rope) · n_head · 4`` per token, and
#   without FA also the scores (twice when ik permutes them: ``-mla 1``) and, for ``-mla`` 2/3, the
#   transposed latent cache.
# * FFN phase — ik's ``get_layer_sizes`` activations: routed experts ``ne1 · n_used · 4``, shared
#   and dense FFN ``ne1 · 4`` per token and matrix (the largest of the three), plus the layer input
#   and its norm ``2 · n_embd · 4``.
# * logits — ``n_vocab · T · 4`` on the device holding the output.
# * offload copy (CUDA only) — weights of RAM-resident experts copied in for the GPU matmul once
#   ``T`` reaches the op-offload threshold (llama.cpp PR #6083); up and gate are live together.
#
# A device's buffer is ``mask + max(attention, FFN, logits) + offload copy``. The CPU runs the
# attention and FFN phases only for layers whose KV it holds; otherwise it holds the token
# embeddings ``n_embd · T · 4`` and, when it has experts, their up/gate output
# ``n_ff_exp · n_used · T · 4``. Not modelled: the second (SWA) mask, mainline's f32 mask on the
# host when it casts to f16, pipeline-parallel copies, CUDA pool and cuBLAS workspaces (the
# per-GPU overhead setting covers those).

KQ_MASK_PAD = 16  # GGML_KQ_MASK_PAD: the mask's token dimension is padded to this
MLA_PP_MIN_TOKENS = 128  # ik's MLA prompt path (pp_opt) starts at this many tokens


def graph_tokens(settings: Settings) -> int:
    """Tokens of the worst-case graph: ``-ub``, capped at ``-b``, which is capped at the context."""
    return max(1, min(settings.ubatch, settings.batch, settings.kv_size))


def layer_compute_bytes(layout: ModelLayout, settings: Settings) -> float:
    """The FFN phase of the worst layer (bytes): ik's ``get_layer_sizes`` activations.

    Routed experts ``ne1 · T · n_used · 4`` per expert matrix, shared and dense FFN ``ne1 · T · 4``
    per matrix; the largest of the three plus the layer input and its norm ``2 · n_embd · T · 4``.
    """
    hp = layout.hparams
    ub = graph_tokens(settings)
    used = max(1, hp.n_expert_used)
    exps: Counter[int] = Counter()
    shexp: Counter[int] = Counter()
    dense: Counter[int] = Counter()
    for t in layout.tensors:
        if not t.loaded or t.layer == GLOBAL_LAYER or not t.name.endswith(".weight"):
            continue
        ne1 = t.shape[1] if len(t.shape) > 1 else 1
        if t.group in ROUTED_EXPERT_GROUPS:
            exps[t.layer] += ne1 * ub * used * 4
        elif t.group is TensorGroup.SHARED:
            shexp[t.layer] += ne1 * ub * 4
        elif t.group is TensorGroup.FFN:
            dense[t.layer] += ne1 * ub * 4
    inp = hp.n_embd * ub * 4 * 2
    worst = 0.0
    for il in range(hp.n_layer_kv):
        worst = max(worst, max(exps[il], shexp[il], dense[il]) + inp)
    return worst


def _head_chunk(n_head: int, full_mib: int, amb: int) -> int:
    """Heads per chunk when ik splits a ``full_mib`` MiB tensor to stay under ``-amb`` MiB
    (``build_deepseek2``: the first divisor of ``n_head`` that brings a chunk under the cap)."""
    if amb <= 0 or full_mib <= amb:
        return n_head
    for split in range(2, n_head):
        if n_head % split == 0 and full_mib // split <= amb:
            return n_head // split
    return 1


def _attention_phase(layout: ModelLayout, settings: Settings, tokens: int) -> float:
    """Bytes live while one layer's attention runs (see the comment above)."""
    hp = layout.hparams
    kv = settings.kv_size
    n_head = max(hp.head_count or (1,))
    inp = 2 * hp.n_embd * tokens * 4
    mla = effective_mla(layout, settings)
    if mla:
        rope = hp.n_rot
        nope = (hp.key_length_mla or hp.key_length) - rope
        v_head = hp.value_length_mla or hp.value_length
        if mla >= 2 and settings.flash_attn and tokens >= MLA_PP_MIN_TOKENS:
            full_mib = n_head * (nope + v_head) * kv * 4 // MiB
            heads = _head_chunk(n_head, full_mib, settings.effective_amb)
            q = n_head * (nope + rope) * tokens * 4
            return float(q + inp + (nope + v_head) * 6 * heads * kv)
        latent = 3 * (hp.kv_lora_rank + rope) * n_head * tokens * 4
        if settings.flash_attn:
            return float(latent)
        kq_mib = n_head * kv * tokens * 4 // MiB
        amb = settings.effective_amb
        if amb > 0 and kq_mib > amb:
            steps = min(-(-kq_mib // amb), n_head)
            scores = -(-n_head // steps) * kv * tokens * 4
        else:
            pp_opt = mla > 1 and tokens >= MLA_PP_MIN_TOKENS
            scores = n_head * kv * tokens * 4 * (1 if pp_opt else 2)
        trans = cache_type(settings.cache_type_v).row_bytes(hp.kv_lora_rank) * kv if mla > 1 else 0
        return float(latent + scores + trans)
    worst = 0
    for il in range(hp.n_layer_kv):
        heads = hp.head_count[il] or n_head
        kv_heads = hp.head_count_kv[il] or heads
        rows = heads * hp.key_length + kv_heads * (hp.key_length + hp.value_length)
        rows += heads * hp.value_length
        worst = max(worst, rows * tokens * 4 + inp)
        if not settings.flash_attn:
            full = heads * kv * tokens * 4
            split = (
                settings.is_ik and kv_heads == heads and 0 < settings.effective_amb < full // MiB
            )
            worst = max(worst, rows * tokens * 4 + inp + (kv * tokens * 4 if split else full))
    return float(worst)


def offload_threshold(layout: ModelLayout, settings: Settings) -> int:
    """Smallest ubatch at which the GPU takes over MoE matmuls of RAM-resident experts."""
    hp = layout.hparams
    if not settings.is_ik or not hp.n_expert or not hp.n_expert_used:
        return OP_OFFLOAD_MIN_BATCH
    return -(-OP_OFFLOAD_MIN_BATCH * hp.n_expert // hp.n_expert_used)


@dataclass(frozen=True, slots=True)
class ComputeTerms:
    """The parts of one device's compute-buffer estimate (bytes; see the comment above)."""

    ffn: float = 0.0
    attention: float = 0.0
    logits: float = 0.0
    mask: float = 0.0
    offload_copy: float = 0.0

    @property
    def total(self) -> int:
        return int(self.mask + max(self.ffn, self.attention, self.logits) + self.offload_copy)


def compute_terms(
    layout: ModelLayout,
    settings: Settings,
    *,
    holds_layers: bool,
    holds_output: bool,
    is_cuda: bool,
    cpu_expert_tensor_max: int,
    layer_compute: float | None = None,
    hosts_kv: bool | None = None,
    is_host: bool = False,
) -> ComputeTerms:
    """Compute-buffer model for one device (see the comment above).

    Args:
        holds_layers: The device holds weights of repeating layers.
        holds_output: The device holds the output matrix.
        is_cuda: A CUDA device (RAM-resident experts may be copied into its buffer).
        cpu_expert_tensor_max: Bytes of the largest routed-expert tensor left in RAM.
        layer_compute: :func:`layer_compute_bytes` when the caller caches it.
        hosts_kv: The device holds the KV cache of some layers, so their attention runs there
            (default: ``holds_layers``).
        is_host: The CPU, which builds the graph inputs (mask, token embeddings).
    """
    runs_attention = holds_layers if hosts_kv is None else hosts_kv
    if not holds_layers and not holds_output and not runs_attention and not is_host:
        return ComputeTerms()
    hp = layout.hparams
    tokens = graph_tokens(settings)
    mask = 0.0
    if runs_attention or is_host:
        pad_tokens = -(-tokens // KQ_MASK_PAD) * KQ_MASK_PAD
        mask = float(settings.kv_size * pad_tokens * (2 if settings.flash_attn else 4))
    ffn = float(hp.n_embd * tokens * 4) if is_host else 0.0
    attention = 0.0
    if runs_attention:
        ffn = layer_compute_bytes(layout, settings) if layer_compute is None else layer_compute
        attention = _attention_phase(layout, settings, tokens)
    elif holds_layers:
        if is_host:
            ffn = max(ffn, float(max(hp.n_ff_exp, 1) * max(hp.n_expert_used, 1) * tokens * 4))
        else:
            ffn = layer_compute_bytes(layout, settings) if layer_compute is None else layer_compute
    logits = float(hp.n_vocab * tokens * 4) if holds_output else 0.0
    copy = 0.0
    offloading = tokens >= offload_threshold(layout, settings)
    if is_cuda and holds_layers and cpu_expert_tensor_max and offloading:
        # The weights of RAM-resident experts are copied into the compute buffer for the GPU
        # matmul (llama.cpp PR #6083); up and gate are live together (fused MoE), hence 2×.
        copy = 2 * cpu_expert_tensor_max
    return ComputeTerms(ffn, attention, logits, mask, copy)


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
    """Memory per device for ``plan`` with KV on ``layer_devices`` (from
    ``moe_studio.core.plan.layers``).

    ``kv_per_layer`` and ``layer_compute`` may be passed in when only the plan changed, so a
    re-estimate after a cell edit does not recompute what depends on settings alone. They are
    recomputed when the split makes ik change the settings (:func:`engine_settings`).
    """
    if settings.is_ik:
        run = engine_settings(layout, settings, ik_ngl(layer_devices[: layout.n_layer]))
        if run != settings:
            settings, kv_per_layer, layer_compute = run, None, None
    weights: Counter[str] = Counter()
    cpu_expert_max = 0
    tensors = layout.tensors
    for t, d in zip(tensors, plan.devices, strict=True):
        if d:
            weights[d] += t.nbytes
            if d == CPU_NAME and t.group in ROUTED_EXPERT_GROUPS and t.nbytes > cpu_expert_max:
                cpu_expert_max = t.nbytes
    # ik splits each attn_kv_b into wk_b/wv_b at load (llm_prepare_mla) and keeps them beside it,
    # outside the "buffer size" lines: about the size of attn_kv_b again (~1 GiB for DeepSeek-V3).
    derived: Counter[str] = Counter()
    if settings.is_ik and effective_mla(layout, settings):
        for i in layout.attn_kv_b_indices:
            if plan.devices[i]:
                derived[plan.devices[i]] += tensors[i].nbytes
    kv_layers = kv_bytes(layout, settings) if kv_per_layer is None else kv_per_layer
    kv: Counter[str] = Counter()
    for il, dev in enumerate(layer_devices):
        kv[dev] += kv_layers[il]
    if layer_compute is None:
        layer_compute = layer_compute_bytes(layout, settings)
    output_index = layout.index.get("output.weight", layout.index.get("token_embd.weight"))
    output_device = plan.devices[output_index] if output_index is not None else CPU_NAME
    layer_set = set(layer_devices)
    layer_weights = {
        d for t, d in zip(tensors, plan.devices, strict=True) if d and t.layer != GLOBAL_LAYER
    }
    budgets = []
    for device in (*rig.devices, rig.cpu):
        is_cpu = device.kind is DeviceKind.CPU
        terms = compute_terms(
            layout,
            settings,
            holds_layers=device.name in layer_set or device.name in layer_weights,
            holds_output=output_device == device.name,
            is_cuda=device.kind is DeviceKind.CUDA,
            cpu_expert_tensor_max=cpu_expert_max,
            layer_compute=layer_compute,
            hosts_kv=device.name in layer_set,
            is_host=is_cpu,
        )
        overhead = settings.gpu_overhead if device.kind is DeviceKind.CUDA else 0
        overhead += derived[device.name]
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
