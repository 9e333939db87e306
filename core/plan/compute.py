"""The compute-buffer model: what each backend's ``compute buffer size`` line will say.

Neither engine has a closed form: both build a worst-case graph (``T`` tokens — ``-ub`` capped
at ``-b`` and at the padded context — against the whole KV cache of ``kv`` cells), hand it to
``ggml_backend_sched``, and ``ggml-alloc`` reserves per backend what is live at its peak. This
module models that peak term by term; each term names the engine code it comes from. Source
read: ik_llama.cpp at 8337e4cd (2026-08-15, build 4840) and mainline llama.cpp via engines.md §0.

* **mask** (ik ``llm_build_context::build_inp_KQ_mask``, ``src/llama-build-context.cpp``):
  ``kv × pad16(T)``, created as f16 when flash attention is on and f32 without (builds before
  3907, PR #825: always f32 on the host, cast to f16 on the device for flash attention). It is a
  graph input, so the host builds it and every backend that runs attention gets a copy.
  **SWA mask** (``build_inp_KQ_mask_swa``, used by ``build_openai.cpp`` for gpt-oss and by the
  other sliding-window graphs): a second mask of the same shape — ik keeps full-context rows for
  sliding-window layers. Mainline (``llm_graph_input_attn_kv_iswa``) sizes it to the SWA cache.
  Mainline always creates the host mask as f32 and casts it to f16 for flash attention
  (``llm_graph_context::build_attn_inp_kv``), so the host copy is 4 bytes per element there.
* **attention phase** — per token ``4 · (Q + K + V rows + attention output + 2 · n_embd)``; without
  flash attention also the K·Q scores ``n_head · kv · T · 4``, which ik splits per head when they
  exceed ``-amb`` MiB (``llm_build_context::llm_build_kqv``). DeepSeek MLA in ik
  (``src/graphs/build_deepseek2.cpp``): the prompt path (``-mla`` 2/3, FA, ``T ≥ 128``)
  decompresses K and V for a chunk of heads, ``(nope + v_head) · 6`` bytes per head and cell,
  heads chunked to stay under ``-amb`` MiB (down to one head since PR #1211, 2026-01-31).
* **FFN phase** — ik's ``get_layer_sizes`` activations: routed experts ``ne1 · n_used · 4``,
  shared and dense FFN ``ne1 · 4`` per token and matrix, plus the layer input and its norm.
* **logits** — ``n_vocab · T · 4`` where the output matmul runs.
* **offloaded weights** (CUDA only) — ``ggml_backend_sched_backend_id_from_cur``
  (``ggml/src/ggml-backend.cpp``; ``ggml-backend.c`` before build 3877) moves an op whose weights
  sit in host RAM to the *first* backend whose ``supports_op`` and ``offload_op`` accept it — the
  first CUDA device, one GPU only. The weight is copied into that backend's compute buffer as a
  split input at full size (``ggml_dup_tensor_layout``; ik's "offload only active experts"
  transfers only the active experts' rows but allocates the whole tensor). Every weight on
  another backend starts a new split, so one op's copies are live at a time: up and gate
  together under ik's fused MoE, down alone (:func:`offload_terms`). ik's
  ``ggml_backend_cuda_offload_op`` (``ggml/src/ggml-cuda.cu``) offloads a MoE matmul when
  ``T · n_used ≥ 32 · n_expert`` (since build 3745, PR #520; before, from 32 tokens, and before
  build 3683, PR #405, never the fused up/gate op) and any other op with a weight when ``T ≥ 32``;
  mainline offloads when ``T ≥ GGML_OP_OFFLOAD_MIN_BATCH`` (32). So a RAM-resident output matrix
  sends the output matmul (weight copy + logits) to the first GPU too, and the layers left in RAM
  (``-ngl`` below the layer count, ``-ngl 0``) run there whole, attention included, their K/V
  views copied in (:func:`attention_offloaded`): the host keeps only the graph inputs. Only
  weight types the CUDA backend multiplies are copied (:data:`CUDA_MATMUL_TYPES`, the IQk_R4
  ones since builds 3714-3729: :data:`CUDA_MATMUL_SINCE`); ik's ``-rtr`` repacks RAM tensors into
  row-interleaved types, most of which it cannot (:func:`cuda_can_offload`).
* **-amb** (ik): values below 128 MiB are raised to 128 (:func:`attention_max_batch`). The MLA
  head chunks it bounds are intermediate tensors of each layer's attention, so they sit on every
  device that holds some layer's KV cache (the layer's ``kv_self.k_l[il]`` and ``wkv_b``), not on
  the first GPU only; what the first GPU alone carries is the offloaded-weight copy above.

* **DeepSeek MLA devices** (ik builds with ``MLA_PROMPT_SPLIT``, where the caller knows the
  device's layers): the attention term is :func:`mla_device_attention`, a replay of ggml-alloc
  over the tensors the device's layers create (:mod:`moe_studio.core.plan.mla_alloc`). The holes
  its best-fit placement leaves around the small per-token latent tensors decide the peak as
  much as the per-cell ones (tiny-deepseek2: −19…−22 % and +20…+52 % before, within ±0.3 % now
  on every RPC device; DeepSeek-V3 attention: 48 of 49 dry-run figures within ±10 %).

An ik GPU's buffer is its largest phase: ``max(mask + max(attention, FFN, offloaded matmul),
output)``. ``ggml_backend_sched_split_graph`` adds each split input (the mask's copy, every weight
copy) as a node at the start of its split and ``ggml_gallocr_alloc_graph_impl`` frees a node after
its last use, so a copy lives only through its split and the mask only until the device's last
attention (:class:`ComputeTerms`); a GPU's FFN phase counts only the matmuls of weights it holds
(:func:`layer_compute_by_device`). Mainline's
output matmul runs after the mask is freed (:func:`mainline_output_phase`), and its mask and
KV terms follow the build (``engine_builds.MAINLINE_CHANGES``, read at b5269, b5331 and the
newest source). The host runs
the attention and FFN phases only for layers whose KV it holds; otherwise it holds the token
embeddings and, when it has experts, their up/gate output. ``-sm graph`` (each GPU a share of
every layer) is :func:`graph_compute_terms`, derived from source in
:mod:`moe_studio.core.plan.graph_split`. Not modelled: pipeline-parallel copies (``n_copies > 1``,
only without tensor overrides), CUDA pool and cuBLAS workspaces (the per-GPU overhead setting
covers those).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from moe_studio.core.gguf.ggml_types import GGMLType, type_by_name
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, ROUTED_EXPERT_GROUPS, TensorGroup
from moe_studio.core.plan import engine_builds, mla_alloc
from moe_studio.core.plan.mla_alloc import MlaLayer
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import MiB

# GGML_CUDA_MIN_BATCH_OFFLOAD (ik) / GGML_OP_OFFLOAD_MIN_BATCH (mainline) default.
OP_OFFLOAD_MIN_BATCH = 32
KQ_MASK_PAD = 16  # GGML_KQ_MASK_PAD (ik ggml/include/ggml.h): the mask's token dimension
MLA_PP_MIN_TOKENS = 128  # ik's MLA prompt path (pp_opt) starts at this many tokens

# The engine builds this model describes. Published logs from older builds are reported, not
# asserted (tests/data/cuda_corpus): ik changed the MLA compute buffers in PR #1211
# (2026-01-31) and the -amb head split with it. Mainline's terms follow its build
# (engine_builds.MAINLINE_CHANGES) back to its MLA cache (b5137, 2025-04-15).
MODELLED_BUILDS = {
    "ik_llama.cpp": ("2026-02-01", "ik_llama.cpp after PR #1211 (MLA -amb head split)"),
    "llama.cpp": (
        engine_builds.ML_MLA.date,
        f"mainline llama.cpp from b{engine_builds.MAINLINE_OLDEST_DESCRIBED} (DeepSeek MLA cache)",
    ),
}


def describes_build(engine: str, date: str, build: int | None = None) -> bool:
    """Whether the model claims to describe a build of ``engine`` dated ``date`` (ISO), or
    numbered ``build`` when the engine printed one (ik: :data:`engine_builds.OLDEST_DESCRIBED`,
    mainline: :data:`engine_builds.MAINLINE_OLDEST_DESCRIBED`)."""
    if engine == "ik_llama.cpp" and build is not None:
        return build >= engine_builds.OLDEST_DESCRIBED
    if engine == "llama.cpp" and build is not None:
        return build >= engine_builds.MAINLINE_OLDEST_DESCRIBED
    since = MODELLED_BUILDS.get(engine)
    return since is not None and bool(date) and date >= since[0]


# ik ``ggml_backend_cuda_supports_op`` (``ggml/src/ggml-cuda.cu`` at 8337e4cd, the MUL_MAT /
# MUL_MAT_ID type switch): the weight types a CUDA backend can multiply. The scheduler offers a
# RAM-resident weight's matmul to a GPU only when ``supports_op`` and ``offload_op`` both agree
# (``ggml_backend_sched_backend_id_from_cur``, ``ggml/src/ggml-backend.cpp``), so a RAM tensor of
# another type is never copied into a compute buffer.
CUDA_MATMUL_TYPES = frozenset(
    {
        "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q6_0", "q8_0", "q2_k", "q3_k",
        "q4_k", "q5_k", "q6_k", "q8_k", "iq1_m", "iq1_s", "iq2_s", "iq2_xs", "iq2_xxs", "iq3_s",
        "iq3_xxs", "iq4_nl", "mxfp4", "iq4_xs", "iq2_kl", "iq3_ks", "iq4_ks", "iq4_kss", "iq5_ks",
        "iq2_k", "iq2_ks", "iq1_kt", "iq2_kt", "iq3_kt", "iq4_kt", "iq3_k", "iq4_k", "iq5_k",
        "iq6_k", "iq1_bn", "iq2_bn", "iq2_k_r4", "iq3_k_r4", "iq4_k_r4", "iq4_ks_r4", "iq5_k_r4",
        "iq5_ks_r4", "iq1_s_r4", "iq1_m_r4",
    }
)  # fmt: skip
# The row-interleaved types the CUDA type switch gained later (``git log -S'case
# GGML_TYPE_IQ4_K_R4:' -- ggml/src/ggml-cuda.cu`` and so on): earlier builds return false for them.
CUDA_MATMUL_SINCE = {
    "iq2_k_r4": engine_builds.CUDA_IQK_R4,
    "iq3_k_r4": engine_builds.CUDA_IQK_R4,
    "iq4_k_r4": engine_builds.CUDA_IQK_R4,
    "iq5_k_r4": engine_builds.CUDA_IQK_R4,
    "iq4_ks_r4": engine_builds.CUDA_IQKS_R4,
    "iq5_ks_r4": engine_builds.CUDA_IQKS_R4,
    "iq1_s_r4": engine_builds.CUDA_IQ1_S_R4,
    "iq1_m_r4": engine_builds.CUDA_IQ1_M_R4,
}
# ik ``-rtr`` repacks every tensor in a host buffer at load (``src/llama.cpp``, "Repacked %d
# tensors"; the map is ``get_repack_info`` in ``ggml/src/iqk/iqk_quantize.cpp``). Most targets are
# row-interleaved CPU layouts the CUDA backend cannot multiply (Q4_K_R4, Q8_0_R8, IQ4_XS_R8, …).
RTR_REPACK = {
    "iq2_k": "iq2_k_r4", "iq3_k": "iq3_k_r4", "iq4_k": "iq4_k_r4", "iq5_k": "iq5_k_r4",
    "iq4_xs": "iq4_xs_r8", "iq4_ks": "iq4_ks_r4", "iq5_ks": "iq5_ks_r4", "iq4_nl": "iq4_nl_r4",
    "iq2_bn": "iq2_bn_r4", "iq2_xxs": "iq2_xxs_r4", "iq2_xs": "iq2_xs_r4", "iq2_s": "iq2_s_r4",
    "iq3_xxs": "iq3_xxs_r4", "iq3_s": "iq3_s_r4", "q2_k": "q2_k_r4", "q3_k": "q3_k_r4",
    "q4_k": "q4_k_r4", "q5_k": "q5_k_r4", "q6_k": "q6_k_r4", "q4_0": "q4_0_r8", "q5_0": "q5_0_r4",
    "q6_0": "q6_0_r4", "q8_0": "q8_0_r8", "q8_k": "q8_k_r8", "mxfp4": "mxfp4_r8",
}  # fmt: skip


def cuda_can_offload(type_name: str, settings: Settings) -> bool:
    """Whether a CUDA backend can take the matmul of a RAM-resident weight of this type.

    With ik's ``-rtr`` the weight has been repacked first (:data:`RTR_REPACK`), and only the
    IQk_R4 targets are in :data:`CUDA_MATMUL_TYPES`; so ``-rtr`` with k-quant or legacy-quant
    experts keeps their big-batch matmuls on the CPU and out of every CUDA compute buffer. The
    IQk_R4 types joined the CUDA type switch in May-June 2025 (:data:`CUDA_MATMUL_SINCE`); a
    build before that keeps those matmuls on the CPU too.
    Mainline's CUDA backend multiplies every type its GGUFs use.
    """
    name = type_name.lower()
    if not settings.is_ik:
        return True
    if settings.rtr:
        name = RTR_REPACK.get(name, name)
    since = CUDA_MATMUL_SINCE.get(name)
    return name in CUDA_MATMUL_TYPES and (since is None or settings.has(since))


def attention_max_batch(settings: Settings) -> int:
    """``-amb`` as ik applies it: a value below 128 MiB is raised to 128 (the ``-amb`` parser in
    ik ``common/common.cpp``: "amb = %d is too low. Changing to 128"); 0 turns the split off."""
    amb = settings.effective_amb
    if not settings.has(engine_builds.AMB_MIN_128):
        return amb  # older builds took any value (build 4550, PR #1899, added the floor)
    return 128 if 0 < amb < 128 else amb


def cache_type(name: str) -> GGMLType:
    found = type_by_name(name)
    if found is None:
        from moe_studio.core.errors import CommandError

        raise CommandError(
            f"{name!r} is not a KV cache type; use f16, q8_0, q4_0 or another ggml type."
        )
    return found


def effective_mla(layout: ModelLayout, settings: Settings) -> int:
    """ik's MLA mode after its own adjustments (0 for models without MLA).

    A mainline-converted DeepSeek GGUF has ``attn_k_b``/``attn_v_b`` but no ``attn_kv_b``; ik
    rebuilds ``attn_kv_b`` at load for ``-mla`` 2/3 (``llm_prepare_mla``, ``src/llama.cpp``), so
    the "missing wkv_b … changing MLA to 1" fallback in ``llama_kv_cache_init`` does not fire and
    the requested mode stands (see :func:`rebuilt_kv_b_bytes`).
    """
    if not layout.hparams.is_mla or not settings.is_ik:
        return 0
    return settings.effective_mla


def rebuilt_kv_b_bytes(layout: ModelLayout, settings: Settings) -> dict[int, int]:
    """Bytes of the ``attn_kv_b`` ik computes per layer for a GGUF that lacks it.

    ``llm_prepare_mla`` (ik ``src/llama.cpp``) builds ``kv_lora × n_head · (nope + v_head)`` from
    ``attn_k_b`` and ``attn_v_b`` for ``-mla`` 2/3, as f16 (bf16) when both are f16 (bf16) and
    q8_0 otherwise, in the buffer type of ``attn_k_b``. Keyed by the tensor index of ``attn_k_b``.
    """
    hp = layout.hparams
    if not settings.is_ik or not hp.is_mla or layout.has_attn_kv_b:
        return {}
    if effective_mla(layout, settings) < 2:
        return {}
    n_head = max(hp.head_count or (1,))
    nope = (hp.key_length_mla or hp.key_length) - hp.n_rot
    v_head = hp.value_length_mla or hp.value_length
    out = {}
    by_layer: dict[int, list[int]] = {}
    for i, t in enumerate(layout.tensors):
        if t.name.endswith(("attn_k_b.weight", "attn_v_b.weight")) and t.layer != GLOBAL_LAYER:
            by_layer.setdefault(t.layer, []).append(i)
    for indices in by_layer.values():
        types = {layout.tensors[i].type_name.lower() for i in indices}
        name = types.pop() if len(types) == 1 and types <= {"f16", "bf16"} else "q8_0"
        gtype = type_by_name(name)
        assert gtype is not None
        k_b = next(i for i in indices if layout.tensors[i].name.endswith("attn_k_b.weight"))
        out[k_b] = gtype.row_bytes(hp.kv_lora_rank) * n_head * (nope + v_head)
    return out


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


_FFN_ROWS: dict[int, tuple[ModelLayout, list[tuple[int, int, int, int]]]] = {}


def ffn_rows(layout: ModelLayout) -> list[tuple[int, int, int, int]]:
    """(tensor index, layer, kind, ne1) of the FFN matrices (kind 0 routed experts, 1 shared,
    2 dense), kept per layout: the per-edit estimate need not walk every tensor's name."""
    hit = _FFN_ROWS.get(id(layout))
    if hit is not None and hit[0] is layout:
        return hit[1]
    rows = []
    for i, t in enumerate(layout.tensors):
        if not t.loaded or t.layer == GLOBAL_LAYER or not t.name.endswith(".weight"):
            continue
        if t.group in ROUTED_EXPERT_GROUPS:
            kind = 0
        elif t.group is TensorGroup.SHARED:
            kind = 1
        elif t.group is TensorGroup.FFN:
            kind = 2
        else:
            continue
        rows.append((i, t.layer, kind, t.shape[1] if len(t.shape) > 1 else 1))
    if len(_FFN_ROWS) > 8:
        _FFN_ROWS.clear()
    _FFN_ROWS[id(layout)] = (layout, rows)
    return rows


def layer_compute_by_device(
    layout: ModelLayout, settings: Settings, placement: Sequence[str]
) -> dict[str, float]:
    """:func:`layer_compute_bytes` per device, counting only the matmuls of the weights each
    device holds (``placement``: a device per tensor). A matmul runs where its weight is, or on
    the first CUDA device when the weight is in RAM (:func:`offload_terms`)."""
    hp = layout.hparams
    ub = graph_tokens(settings)
    per_token = (max(1, hp.n_expert_used) * ub * 4, ub * 4, ub * 4)
    parts: dict[str, tuple[dict[int, int], dict[int, int], dict[int, int]]] = {}
    for i, layer, kind, ne1 in ffn_rows(layout):
        device = placement[i]
        if not device:
            continue
        sums = parts.get(device)
        if sums is None:
            sums = parts[device] = ({}, {}, {})
        table = sums[kind]
        table[layer] = table.get(layer, 0) + ne1 * per_token[kind]
    inp = hp.n_embd * ub * 4 * 2
    out = {}
    for device, (exps, shexp, dense) in parts.items():
        out[device] = float(
            max(
                (
                    max(exps.get(il, 0), shexp.get(il, 0), dense.get(il, 0)) + inp
                    for il in range(hp.n_layer_kv)
                ),
                default=0,
            )
        )
    return out


def _head_chunk(n_head: int, full_mib: int, amb: int) -> int:
    """Heads per chunk when ik splits a ``full_mib`` MiB tensor to stay under ``-amb`` MiB
    (``build_deepseek2``: the first divisor of ``n_head`` that brings a chunk under the cap)."""
    if amb <= 0 or full_mib <= amb:
        return n_head
    for split in range(2, n_head):
        if n_head % split == 0 and full_mib // split <= amb:
            return n_head // split
    return 1


def mla_prompt_attention_bytes(layout: ModelLayout, settings: Settings, tokens: int) -> int:
    """Peak of ik's MLA prompt path (``-mla`` 2/3, flash attention, ``T ≥ 128``), one layer.

    ``build_deepseek2`` (``src/graphs/build_deepseek2.cpp``, the ``pp_opt`` branch) decompresses
    K and V for ``h`` heads at a time, ``h`` the largest chunk that keeps ``kv_f32`` under
    ``-amb`` MiB (:func:`_head_chunk`). Live per head and KV cell: ``kv_f32`` = ``wkv_b`` × cache
    (f32, nope + v) and the f16 casts ``V`` (v) and ``k_nope`` (nope). When ``-amb`` splits the
    heads over several passes, ``K`` = concat(k_rope, k_nope) (f16, rope + nope) and the repeated
    ``k_rope`` (f16, rope) join them (1792 bytes per head and cell for DeepSeek-V3 instead of
    1536), and Q (f32, all heads) with the per-pass outputs being concatenated (``cur`` old and
    new, ~2.5 · n_head · v floats per token) stay live beside the chunk. Checked against what ik
    8337e4cd printed for DeepSeek-V3 attention (``tests/data/mla_dryrun.json``: 42 of 49 device
    figures within ±10 %, median 3.6 %; before this term: 13 of 39, median 12 %).
    """
    hp = layout.hparams
    kv = settings.kv_size
    n_head = max(hp.head_count or (1,))
    rope = hp.n_rot
    nope = (hp.key_length_mla or hp.key_length) - rope
    v_head = hp.value_length_mla or hp.value_length
    if not settings.has(engine_builds.MLA_PROMPT_SPLIT):
        # Older builds: the replay of a typical first GPU (a dense layer, then MoE layers whose
        # experts run elsewhere); estimate() replays each device's own layers instead.
        layers = (
            MlaLayer(True, mla_alloc.Ffn.DENSE),
            MlaLayer(False, mla_alloc.Ffn.MOE_CPU),
            MlaLayer(False, mla_alloc.Ffn.MOE_CPU),
        )
        replay = mla_device_attention(
            layout, settings, layers, holds_last=False, first_attention=True
        )
        if replay is not None:
            return int(replay)
    full_mib = n_head * (nope + v_head) * kv * 4 // MiB
    heads = _head_chunk(n_head, full_mib, attention_max_batch(settings))
    if heads == n_head:
        # One pass: Q (f32) and the layer input stay live beside kv_f32 and the two f16 casts
        # (the repeated k_rope would add 2·rope per head and cell: closer for DeepSeek-V3 at
        # 8k-64k context, but 5-8 % over the tiny-deepseek2 calibration points).
        q = n_head * (nope + rope) * tokens * 4
        inp = 2 * hp.n_embd * tokens * 4
        return q + inp + heads * kv * (4 * (nope + v_head) + 2 * v_head + 2 * nope)
    per_cell = 4 * (nope + v_head) + 2 * v_head + 2 * (nope + rope) + 2 * rope
    rows = tokens * 4 * n_head * (nope + rope + 2 * v_head + v_head // 2)
    return heads * kv * per_cell + rows


def mainline_mla_attention_bytes(layout: ModelLayout, tokens: int) -> int:
    """Peak of mainline's MLA attention with flash attention (a GGUF with ``attn_k_b``), one
    layer, without the mask.

    ``llm_build_deepseek2`` (src/llama-model.cpp at b5331; src/models/deepseek2.cpp in the newest
    source, the same tensors) builds, in graph order and f32: the layer input and its norm
    (``n_embd`` each, live until ``wkv_a_mqa`` and the residual add), ``q_a`` (``q_lora_rank``,
    absent for Lite), ``q`` (``n_head · (nope + rope)``), the roped ``q_pe`` (``n_head · rope``),
    ``q_nope_absorbed`` (``n_head · kv_lora_rank``) and ``Qcur`` = concat (``n_head ·
    (kv_lora_rank + rope)``). ggml-alloc frees ``q_a`` and ``q`` before ``Qcur`` is allocated,
    but its best-fit allocator (``ggml_dyn_tallocr_alloc``, ggml/src/ggml-alloc.c) cannot put
    the larger ``Qcur`` into their hole, so the peak is the sum of all of them. DeepSeek-V3 at
    ``-ub 1024``: 734 MiB + the 32 MiB mask = 766 MiB; b5331 printed 788 MiB on the three GPUs
    of ik PR #394 that take no weight copy (-2.8 %; the rest is the previous layers' holes).
    Without flash attention the K·Q scores dominate; that path keeps the generic rows.
    """
    hp = layout.hparams
    n_head = max(hp.head_count or (1,))
    rope = hp.n_rot
    nope = hp.key_length_mla - rope
    latent = hp.kv_lora_rank
    per_token = 2 * hp.n_embd + hp.q_lora_rank
    per_token += n_head * ((nope + rope) + rope + latent + (latent + rope))
    return per_token * tokens * 4


def _attention_phase(layout: ModelLayout, settings: Settings, tokens: int) -> float:
    """Bytes live while one layer's attention runs (see the module docstring)."""
    hp = layout.hparams
    kv = settings.kv_size
    n_head = max(hp.head_count or (1,))
    inp = 2 * hp.n_embd * tokens * 4
    if not settings.is_ik and hp.is_mla and hp.key_length_mla and settings.flash_attn:
        return float(mainline_mla_attention_bytes(layout, tokens))
    mla = effective_mla(layout, settings)
    if mla:
        if mla >= 2 and settings.flash_attn and tokens >= MLA_PP_MIN_TOKENS:
            return float(mla_prompt_attention_bytes(layout, settings, tokens))
        rope = hp.n_rot
        latent = 3 * (hp.kv_lora_rank + rope) * n_head * tokens * 4
        if settings.flash_attn:
            return float(latent)
        kq_mib = n_head * kv * tokens * 4 // MiB
        amb = attention_max_batch(settings)
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
                settings.is_ik
                and kv_heads == heads
                and 0 < attention_max_batch(settings) < full // MiB
            )
            worst = max(worst, rows * tokens * 4 + inp + (kv * tokens * 4 if split else full))
    return float(worst)


def output_phase_bytes(layout: ModelLayout, tokens: int) -> float:
    """The output phase: logits ``n_vocab · T · 4`` beside the last layer's output and its norm
    (``2 · n_embd · T · 4``). Published Qwen3-235B logs print exactly this on the GPU that holds
    the output matrix (312.75 MiB at -ub 512, 2502 MiB at -ub 4096, whatever the context)."""
    hp = layout.hparams
    return float((hp.n_vocab + 2 * hp.n_embd) * tokens * 4)


def mla_shape(layout: ModelLayout) -> mla_alloc.MlaShape:
    """The sizes :mod:`~moe_studio.core.plan.mla_alloc` replays a DeepSeek layer with."""
    hp = layout.hparams
    rope = hp.n_rot
    return mla_alloc.MlaShape(
        n_embd=hp.n_embd,
        n_head=max(hp.head_count or (1,)),
        q_lora=hp.q_lora_rank,
        kv_lora=hp.kv_lora_rank,
        rope=rope,
        nope=(hp.key_length_mla or hp.key_length) - rope,
        v_head=hp.value_length_mla or hp.value_length,
        n_expert=hp.n_expert,
        n_expert_used=max(hp.n_expert_used, 1),
        n_ff_exp=hp.n_ff_exp,
        n_ff_shexp=hp.n_ff_exp * hp.n_expert_shared,
        n_ff_dense=hp.n_ff[0] if hp.n_ff else 0,
    )


def mla_device_attention(
    layout: ModelLayout,
    settings: Settings,
    layers: tuple[MlaLayer, ...],
    *,
    holds_last: bool,
    gpu_backends: bool = True,
    first_attention: bool = False,
    holds_output: bool = False,
) -> float | None:
    """The attention term of a device running the MLA ``layers``: ik's allocation of the whole
    device graph replayed by :func:`mla_alloc.device_peak`, less the mask (a term of its own).
    None where the replay does not apply (older builds, paths it does not follow): the closed
    form of :func:`_attention_phase` stands there.

    ``gpu_backends``: other backends than the CPU exist, so the prompt path decompresses K and V
    as f16; a CPU-only run keeps the cache type (``kv_type`` in ``build_deepseek2``).

    Builds before 4161 (:class:`mla_alloc.Legacy`, flash-attention prompt path only): the device
    that runs the model's first attention (``first_attention``) casts the f32 mask of builds
    before 3907; a device that ``holds_output`` has the logits in the replay, which then covers
    the output phase too (:func:`compute_terms` ``mla_output``).
    """
    mla = effective_mla(layout, settings)
    if not layers or not mla or not settings.is_ik:
        return None
    mask = mask_bytes(layout, settings, host=False)
    legacy = None
    if not settings.has(engine_builds.MLA_PROMPT_SPLIT):
        if not (settings.flash_attn and mla > 1 and graph_tokens(settings) >= MLA_PP_MIN_TOKENS):
            return None
        cast = first_attention and not settings.has(engine_builds.HOST_MASK_F16)
        # the command writes -fmoe from build 3571 (cmdline), and it is the default from 3928
        fused = settings.has(engine_builds.FUSED_MOE_FLAG) and not any(
            a in ("-no-fmoe", "--no-fused-moe") for a in settings.extra_args
        )
        legacy = mla_alloc.Legacy(
            mask_cast=cast,
            fused_moe=fused,
            n_vocab=layout.hparams.n_vocab if holds_output else 0,
        )
        rows = -(-graph_tokens(settings) // KQ_MASK_PAD) * KQ_MASK_PAD
        mask_in = settings.kv_size * rows * (4 if cast else 2)
    # The latent cache's type: -ctk, but -ctv for -mla 2/3 without flash attention (ik then
    # keeps c^KV in kv_self.k_l with the V type; memory.kv_layer_bytes sizes it the same way).
    k_type = cache_type(
        settings.cache_type_v if mla > 1 and not settings.flash_attn else settings.cache_type_k
    )
    cache_elt = k_type.row_bytes(256) / 256
    run = mla_alloc.MlaRun(
        tokens=graph_tokens(settings),
        kv=settings.kv_size,
        mla=mla,
        flash_attn=settings.flash_attn,
        amb=attention_max_batch(settings),
        mask_bytes=int(mask) if legacy is None else mask_in,
        kv_elt=2.0 if gpu_backends else cache_elt,
        cache_elt=cache_elt,
        rope_cast=gpu_backends and k_type != cache_type("f16"),
    )
    shape = mla_shape(layout)
    if not mla_alloc.covered(shape, run):
        return None
    peak = mla_alloc.device_peak(shape, run, layers, holds_last=holds_last, legacy=legacy)
    return float(peak) - mask


def offload_threshold(layout: ModelLayout, settings: Settings) -> int:
    """Smallest ubatch at which the GPU takes over MoE matmuls of RAM-resident experts.

    ik ``ggml_backend_cuda_offload_op`` (``ggml/src/ggml-cuda.cu``): since PR #520
    (:data:`engine_builds.MOE_OFFLOAD_RATIO`) ``T · n_used ≥ 32 · n_expert``; before, like
    mainline, ``op->ne[2] ≥ 32`` for MUL_MAT_ID / MOE_FUSED_UP_GATE, i.e. 32 tokens.
    """
    hp = layout.hparams
    if not settings.is_ik or not hp.n_expert or not hp.n_expert_used:
        return OP_OFFLOAD_MIN_BATCH
    if not settings.has(engine_builds.MOE_OFFLOAD_RATIO):
        return OP_OFFLOAD_MIN_BATCH
    return -(-OP_OFFLOAD_MIN_BATCH * hp.n_expert // hp.n_expert_used)


def mask_count(layout: ModelLayout) -> int:
    """KQ masks the graph builds: two for models with sliding-window layers (gpt-oss)."""
    hp = layout.hparams
    return 2 if hp.sliding_window and any(hp.swa_layers) else 1


def mainline_mask_rows(settings: Settings) -> int:
    """Rows of mainline's KQ mask: ``GGML_PAD(n_tokens, GGML_KQ_MASK_PAD)``
    (``build_attn_inp_kv_unified``, ``src/llama-graph.cpp``), the pad 32 before #11583, 64 from
    it and 1 from #17505 (:data:`engine_builds.ML_KQ_MASK_PAD_64`, ``ML_KQ_MASK_PAD_1``)."""
    tokens = graph_tokens(settings)
    if settings.has_mainline(engine_builds.ML_KQ_MASK_PAD_1):
        return tokens
    pad = 64 if settings.has_mainline(engine_builds.ML_KQ_MASK_PAD_64) else 32
    return -(-tokens // pad) * pad


def mask_bytes(layout: ModelLayout, settings: Settings, *, host: bool) -> float:
    """Bytes of the KQ mask(s) one backend holds (see the module docstring)."""
    tokens = graph_tokens(settings)
    rows = -(-tokens // KQ_MASK_PAD) * KQ_MASK_PAD
    kv = settings.kv_size
    if settings.is_ik:
        if settings.has(engine_builds.HOST_MASK_F16) or not settings.flash_attn:
            size = 2 if settings.flash_attn else 4
        else:
            # Older builds: an f32 mask on the host (build 3737 printed f32 mask + embeddings on
            # the CPU), cast to f16 at the first flash attention; the device's f32 copy is freed
            # right after the cast, and later devices receive the f16 cast, so a device's peak
            # holds 2 bytes per element (build 3737's allocation trace; the MLA replay keeps the
            # cast's own moment, mla_alloc.Legacy).
            size = 4 if host else 2
        return float(mask_count(layout) * kv * rows * size)
    rows = mainline_mask_rows(settings)
    size = 4 if host or not settings.flash_attn else 2
    total = float(kv * rows * size)
    if mask_count(layout) == 2:
        hp = layout.hparams
        swa_cells = min(kv, -(-(hp.sliding_window + settings.ubatch) // 256) * 256)
        total += swa_cells * rows * size
    return total


@dataclass(frozen=True, slots=True)
class RamWeights:
    """Weights left in host RAM that a CUDA backend may copy in for big batches (bytes)."""

    expert_max: int = 0  # largest routed-expert tensor in RAM
    output: int = 0  # the output matrix, when it stays in RAM
    dense_max: int = 0  # largest other repeating-layer matrix in RAM (``-ngl 0``)
    has_cuda: bool = False  # a CUDA backend exists to take big-batch matmuls of RAM weights
    kv_max: int = 0  # largest KV cache of a layer held in RAM with its attention weights


@dataclass(frozen=True, slots=True)
class ComputeTerms:
    """The parts of one device's compute-buffer estimate (bytes; see the module docstring)."""

    ffn: float = 0.0
    attention: float = 0.0
    logits: float = 0.0
    mask: float = 0.0
    offload_copy: float = 0.0
    reduce: float = 0.0  # -sm graph: partial results gathered from every GPU
    extra_alloc: float = 0.0  # -sm graph: inputs copied from other GPUs, up to -mea MiB
    host: bool = False  # the CPU, whose mask is a graph input of its own
    host_logits: float = 0.0  # the host's output phase: n_vocab · T · 4
    # mainline: the output matmul after the last layer, when the mask and the layers' weight
    # copies are already freed (:func:`mainline_output_phase`); ik keeps the logits in ``logits``
    output: float = 0.0
    # mainline: a weight copy is a split input of its own matmul's split, live in the FFN phase
    # only (:func:`offload_terms`), not beside the attention of a layer
    copy_with_ffn_only: bool = False
    # ik: the first CUDA device's offloaded matmuls, their weight copies included: a copy is a
    # split input freed after its split (:func:`ik_offload_phases`), so it is not added on top
    offload_phase: float = 0.0
    copy_in_phase: bool = False

    @property
    def total(self) -> int:
        if self.copy_with_ffn_only:
            peak = max(self.ffn + self.offload_copy, self.attention, self.logits)
            layers = int(self.mask + peak + self.reduce + self.extra_alloc)
            return max(layers, int(self.output))
        # ik: a device's mask copy is freed after its last attention, so its output phase does
        # not carry it (published Qwen3 logs print the same buffer at -c 16384 and 32768 when
        # the logits are the peak). The host's mask is allocated first, as a graph input, and
        # the logits land above it (tiny-deepseek2 at 1024 cells: tests/data/mla_tiny_grid.json).
        if self.host:
            peak = self.mask + max(self.ffn, self.attention, self.host_logits)
        elif self.copy_in_phase:
            peak = max(self.mask + max(self.ffn, self.attention, self.offload_phase), self.logits)
            return max(int(peak + self.reduce + self.extra_alloc), int(self.output))
        else:
            peak = max(self.mask + max(self.ffn, self.attention), self.logits)
        layers = int(peak + self.offload_copy + self.reduce + self.extra_alloc)
        return max(layers, int(self.output))


def offload_terms(
    layout: ModelLayout, settings: Settings, ram: RamWeights, layer_compute: float
) -> tuple[float, float, float]:
    """Mainline: (weight copy, FFN activations, logits) the first CUDA device takes on for RAM
    weights (ik: :func:`ik_offload_phases`)."""
    tokens = graph_tokens(settings)
    copy = ffn = logits = 0.0
    # ik: up and gate live together (fused MoE). Mainline multiplies up, gate and down apart
    # (``build_moe_ffn``/``build_ffn``, src/llama-graph.cpp), and ``ggml_backend_sched_split_graph``
    # (ggml/src/ggml-backend.cpp, at b5269 and b7800 alike) starts a new split at each weight from
    # another backend "so that the memory of the previously offloaded weights can be reused": one
    # weight copy at a time. The output matrix's copy is :func:`mainline_output_phase`'s there.
    pair = 2.0 if settings.is_ik else 1.0
    if ram.expert_max and tokens >= offload_threshold(layout, settings):
        copy = pair * ram.expert_max
        ffn = layer_compute
    if tokens >= OP_OFFLOAD_MIN_BATCH:
        if ram.output:
            if settings.is_ik:
                copy = max(copy, float(ram.output))
                logits = output_phase_bytes(layout, tokens)
            else:
                logits = float(layout.hparams.n_vocab * tokens * 4)
        if ram.dense_max:
            copy = max(copy, pair * ram.dense_max)
            ffn = layer_compute
    return copy, ffn, logits


def ik_offload_phases(
    layout: ModelLayout, settings: Settings, ram: RamWeights, layer_compute: float
) -> tuple[float, float, float]:
    """(largest weight copy, offload phase, output phase) of ik's first CUDA device.

    ``ggml_backend_sched_split_graph`` (ik ``ggml/src/ggml-backend.c`` at 58f08e43, ``.cpp`` at
    8337e4cd) starts a new split at every node whose weight sits on another backend ("by
    starting a new split, the memory of the previously offloaded weights can be reused") and
    adds the weight's copy (``ggml_dup_tensor_layout``) as a node at the split's start, so
    ``ggml_gallocr_alloc_graph_impl`` frees it once the split's ops have run. One split holds
    the copies of one op: up and gate together under fused MoE (``MOE_FUSED_UP_GATE`` has both
    as sources), down alone. Live with the up/gate copies: the layer input and its norm
    (``2 · n_embd · T · 4``) and the op's ``[n_ff_exp, n_used, T]`` f32 result; with the down
    copy: that result, down's ``[n_embd, n_used, T]`` result and the residual; after down,
    the weighted experts (:func:`moe_return_bytes`). (Mainline: :func:`offload_terms`.)
    """
    hp = layout.hparams
    tokens = graph_tokens(settings)
    rows = hp.n_embd * tokens * 4
    copy = phase = output = 0.0
    if ram.expert_max and tokens >= offload_threshold(layout, settings):
        used = max(1, hp.n_expert_used)
        up_gate_out = max(hp.n_ff_exp, 1) * used * tokens * 4
        down = ram.expert_max + up_gate_out + hp.n_embd * used * tokens * 4 + rows
        if up_gate_offloaded(settings):
            copy, up_gate = 2.0 * ram.expert_max, 2 * ram.expert_max + up_gate_out + 2 * rows
        else:
            copy, up_gate = float(ram.expert_max), 0  # only down comes over
        phase = float(max(up_gate, down, moe_return_bytes(layout, settings)))
    if tokens >= OP_OFFLOAD_MIN_BATCH:
        if ram.dense_max:
            copy = max(copy, 2.0 * ram.dense_max)
            phase = max(phase, 2.0 * ram.dense_max + layer_compute)
        if ram.output:
            copy = max(copy, float(ram.output))
            output = output_phase_bytes(layout, tokens) + ram.output
    return copy, phase, output


def moe_return_bytes(layout: ModelLayout, settings: Settings) -> float:
    """Bytes live where the experts' outputs are weighted and summed: down's ``[n_embd, n_used,
    T]`` f32 result, ``ggml_mul`` by the router weights (another one) and the residual
    (``n_embd · T · 4``). The weight-less ops after the down matmul take the backend of the
    next GPU op (the scheduler's "expand gpu up/down" passes skip the CPU), so when the CPU ran
    the down matmul its result is copied to the GPU of the layer. Measured: ik 3737, Qwen3-30B-A3B
    with ``-ot exps=CPU`` on an RPC device, ``-ub 512``, c32768: 100.50 MiB = 32 (f16 mask) +
    2 · 32 + 4 + the router's outputs."""
    hp = layout.hparams
    tokens = graph_tokens(settings)
    used = max(1, hp.n_expert_used)
    return float(2 * hp.n_embd * used * tokens * 4 + hp.n_embd * tokens * 4)


def up_gate_offloaded(settings: Settings) -> bool:
    """Whether the fused up/gate op of RAM experts can go to the GPU (ik; fused MoE assumed:
    every ik run in the corpus passes ``-fmoe``, the default since
    :data:`engine_builds.FA_FMOE_DEFAULT`). Before :data:`engine_builds.FUSED_UP_GATE_OFFLOAD`
    ``ggml_backend_cuda_offload_op`` took only MUL_MAT_ID, so up/gate ran on the CPU."""
    return not settings.is_ik or settings.has(engine_builds.FUSED_UP_GATE_OFFLOAD)


def attention_offloaded(settings: Settings, ram: RamWeights) -> bool:
    """Whether the first CUDA device runs the attention of layers held in RAM.

    ``ggml_backend_cuda_offload_op`` accepts any op with a RAM weight once ``op->ne[1] ≥ 32``
    (all but GET_ROWS: the norms, Q/K/V/O and MLA matmuls, in every ik build read, 3596 to
    4840), and the scheduler's expansion passes give the weight-less ops between them (the
    attention itself) the same GPU. The layer's K and V views are then split inputs copied in
    from RAM, and the host keeps only its graph inputs (mask, token embeddings). Measured: ik
    3722 ``-ngl 0`` and 3737 ``-ngl 63`` printed host buffers of exactly mask (f32) +
    ``n_embd · T · 4`` (334.01 and 1088.05 MiB; tests/data/cuda_corpus).
    """
    return ram.has_cuda and ram.kv_max > 0 and graph_tokens(settings) >= OP_OFFLOAD_MIN_BATCH


def mainline_output_phase(
    layout: ModelLayout, settings: Settings, logits: float, output_copy: float
) -> float:
    """Mainline's peak while the output matmul runs (bytes): the logits, their input
    (``result_norm``, ``n_embd · T · 4``) and, for a RAM output matrix, its copy.

    ggml-alloc (``ggml_gallocr_alloc_graph_impl``, ggml/src/ggml-alloc.c) frees a tensor after
    its last consumer, so by then the KQ mask (used by the layers' attention only) and the
    layers' weight copies are gone: the output phase does not sit on top of them. Checked on
    the b5269 Qwen3-235B log of ik discussion #357 (2x3090, CUDA1 holds the output): 296.75 MiB
    of logits + 8 MiB of input = 304.75 MiB printed.
    """
    if not logits:
        return 0.0
    return logits + layout.hparams.n_embd * graph_tokens(settings) * 4 + output_copy


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
    offload_target: bool | None = None,
    ram: RamWeights | None = None,
    mla_attention: float | None = None,
    mla_output: bool = False,
    own_ffn: float | None = None,
    ram_experts: bool = False,
) -> ComputeTerms:
    """Compute-buffer model for one device (see the module docstring).

    Args:
        holds_layers: The device holds weights of repeating layers.
        holds_output: The device holds the output matrix.
        is_cuda: A CUDA device (RAM-resident weights may be copied into its buffer).
        cpu_expert_tensor_max: Bytes of the largest routed-expert tensor left in RAM.
        layer_compute: :func:`layer_compute_bytes` when the caller caches it.
        hosts_kv: The device holds the KV cache of some layers, so their attention runs there
            (default: ``holds_layers``).
        is_host: The CPU, which builds the graph inputs (mask, token embeddings).
        offload_target: The first CUDA device, which runs the offloaded matmuls of RAM weights
            (default: ``is_cuda and holds_layers``, for callers that look at one GPU).
        ram: Every kind of RAM-resident weight (default: just ``cpu_expert_tensor_max``).
        mla_attention: :func:`mla_device_attention` for this device, where the caller knows its
            layers (replaces the closed-form attention phase).
        mla_output: ``mla_attention`` covers the output phase too (older builds' replay).
        own_ffn: The FFN phase of the weights this device holds (:func:`layer_compute_by_device`;
            default ``layer_compute``): a matmul runs where its weight is, or on the first CUDA
            device when the weight is in RAM (:func:`ik_offload_phases`), so routed experts left
            in RAM add nothing to another GPU's FFN phase (ik; mainline keeps ``layer_compute``).
        ram_experts: Some layer whose attention runs here has its routed experts in RAM: when
            the CPU multiplies them, their result comes back here (:func:`moe_return_bytes`).
    """
    runs_attention = holds_layers if hosts_kv is None else hosts_kv
    if offload_target is None:
        offload_target = is_cuda and holds_layers
    if ram is None:
        ram = RamWeights(expert_max=cpu_expert_tensor_max)
    ram_attention = settings.is_ik and attention_offloaded(settings, ram)
    takes_offloads = is_cuda and offload_target
    if is_host and ram_attention:
        runs_attention = False
    if takes_offloads and ram_attention:
        runs_attention = True
    offloads = takes_offloads and (ram.expert_max or ram.output or ram.dense_max or ram_attention)
    if not (holds_layers or holds_output or runs_attention or is_host or offloads):
        return ComputeTerms()
    hp = layout.hparams
    tokens = graph_tokens(settings)
    if layer_compute is None:
        layer_compute = layer_compute_bytes(layout, settings)
    if own_ffn is None or not settings.is_ik:
        own_ffn = layer_compute
    mask = mask_bytes(layout, settings, host=is_host) if runs_attention or is_host else 0.0
    ffn = float(hp.n_embd * tokens * 4) if is_host else 0.0
    attention = 0.0
    if runs_attention:
        ffn = own_ffn if holds_layers else 0.0
        if mla_attention is not None:
            # The replay holds the FFN phases of the device's layers too.
            ffn, attention = 0.0, mla_attention
        else:
            attention = _attention_phase(layout, settings, tokens)
            moe_on_cpu = not (
                ram.has_cuda and ram.expert_max and tokens >= offload_threshold(layout, settings)
            )
            if settings.is_ik and ram_experts and not is_host and moe_on_cpu and hp.n_expert:
                ffn = max(ffn, moe_return_bytes(layout, settings))
        if takes_offloads and ram_attention:
            # The RAM layers' attention, their K/V views copied in as split inputs.
            attention = max(attention, _attention_phase(layout, settings, tokens) + ram.kv_max)
    elif holds_layers:
        if is_host:
            # The token embeddings stay live beside the experts' up/gate output (ik PR #259's
            # CUDA_Host line: mask + n_embd·T·4 + n_ff_exp·n_used·T·4); when the first GPU
            # takes the expert matmuls, only the embeddings (mainline log in ik PR #394).
            if not (
                ram.has_cuda
                and ram.expert_max
                and tokens >= offload_threshold(layout, settings)
                and up_gate_offloaded(settings)
            ):
                exps = float(max(hp.n_ff_exp, 1) * max(hp.n_expert_used, 1) * tokens * 4)
                if (
                    ram.has_cuda
                    and tokens < offload_threshold(layout, settings)  # no expert op offloaded
                    and settings.has(engine_builds.MLA_PP_OPT)
                    and not settings.has(engine_builds.HOST_MASK_F16)
                ):
                    # Builds of the f32 host mask: the experts' down output (n_embd · n_used ·
                    # T · 4) is what sits on the mask (published CUDA_Host lines: 176.01 MiB =
                    # 64 + 112 for DeepSeek at -c 32768 -ub 512, 1408.05 = 512 + 896 at -ub
                    # 4096, 128.01 = 64 + 64 for Qwen3-235B at -c 32768 -ub 512).
                    down = float(hp.n_embd * max(hp.n_expert_used, 1) * tokens * 4)
                    ffn = max(ffn, down)
                else:
                    ffn = ffn + exps if ram.has_cuda else max(ffn, exps)
        else:
            ffn = layer_compute
    logits = output_phase_bytes(layout, tokens) if holds_output and not mla_output else 0.0
    if is_host and ram.output and tokens >= OP_OFFLOAD_MIN_BATCH:
        # A CUDA device takes the output matmul of the RAM-resident output matrix (the caller
        # sets ``ram.output`` only when there is one); the logits live there.
        logits = 0.0
    copy = 0.0
    output_copy = 0.0
    if offloads and not settings.is_ik:
        copy, off_ffn, off_logits = offload_terms(layout, settings, ram, layer_compute)
        ffn = max(ffn, off_ffn)
        if off_logits > logits:
            logits, output_copy = off_logits, float(ram.output)
    if settings.is_ik:
        phase = 0.0
        if offloads:
            copy, phase, off_output = ik_offload_phases(layout, settings, ram, layer_compute)
            logits = max(logits, off_output)
        host_logits = float(hp.n_vocab * tokens * 4) if logits else 0.0
        return ComputeTerms(
            ffn,
            attention,
            logits,
            mask,
            copy,
            host=is_host,
            host_logits=host_logits,
            offload_phase=phase,
            copy_in_phase=not is_host,
        )
    raw_logits = float(hp.n_vocab * tokens * 4) if logits else 0.0
    output = mainline_output_phase(layout, settings, raw_logits, output_copy)
    return ComputeTerms(ffn, attention, 0.0, mask, copy, output=output, copy_with_ffn_only=True)


def graph_compute_terms(
    layout: ModelLayout,
    settings: Settings,
    *,
    share: float,
    n_gpus: int,
    layer_compute: float,
    holds_output: bool,
    output_split: bool,
    reduce_size: int,
    extra_alloc: int,
) -> ComputeTerms:
    """One GPU's compute buffer under ik's ``-sm graph`` (derived from source, not measured).

    The GPU runs ``share`` of every layer's heads and FFN rows (the weights' ``-ts`` split) on the
    full layer input (``2 · n_embd · T · 4``, not split), holds the whole KQ mask, receives one
    ``n_embd · T`` partial per GPU for the sum (``reduce_size`` bytes each, ``-grt``), and with
    split-mode-graph scheduling keeps ``extra_alloc`` bytes of copied inputs
    (:mod:`moe_studio.core.plan.graph_split`). A split output matrix gives it ``share`` of the
    logits; a whole one, all of them where it sits.
    """
    hp = layout.hparams
    tokens = graph_tokens(settings)
    inp = 2.0 * hp.n_embd * tokens * 4
    attention = share * max(0.0, _attention_phase(layout, settings, tokens) - inp) + inp
    ffn = share * max(0.0, layer_compute - inp) + inp
    logits = output_phase_bytes(layout, tokens)
    if output_split:
        logits *= share
    elif not holds_output:
        logits = 0.0
    mask = mask_bytes(layout, settings, host=False)
    reduce = float(n_gpus * hp.n_embd * tokens * reduce_size)
    return ComputeTerms(ffn, attention, logits, mask, 0.0, reduce, float(extra_alloc))
