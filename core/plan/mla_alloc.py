"""ik_llama.cpp's allocation of a DeepSeek (MLA) device's compute graph, replayed tensor by tensor.

A backend's ``compute buffer size`` is the highest offset ``ggml-alloc`` reaches while it places
the worst-case graph's tensors one node at a time (``ggml_gallocr_alloc_graph_impl``,
``ggml/src/ggml-alloc.c``): a node's result is allocated before its parents are released, freed
space is reused best-fit, and what is freed between two live tensors stays a hole. For the small
per-token tensors of an MLA layer (the latent ``kv_rope_compressed``, its norm, the concat
written to the cache), those holes decide the peak as much as the big per-cell tensors do; a sum
of "what is live at the peak" misses them (−19…−22 % on tiny-deepseek2 at 512 cells, +20…+52 %
without flash attention). So this module replays the allocator itself over the tensors one
device's layers create, in the order ik creates and frees them:

* :class:`DynAllocator` is ``ggml_dyn_tallocr`` (``ggml-alloc.c``): ``ggml_dyn_tallocr_alloc``
  takes the smallest free block that fits, searching every block but the last and falling back
  to the last (the unbounded tail); ``ggml_dyn_tallocr_free_tensor`` merges a freed range with
  its neighbours; ``max_size`` is the buffer size.
* :func:`device_peak` lays out the graph inputs first (``ggml_backend_sched_split_graph``,
  ``ggml/src/ggml-backend.cpp``, puts a split's input copies at the start of the split: the
  layer input, ``inp_pos``, ``KQ_mask``), then per layer on the device the attention of
  ``build_deepseek2`` (``src/graphs/build_deepseek2.cpp``) and the FFN of
  ``llm_build_context::llm_build_moe_ffn`` / ``llm_build_ffn`` (``src/llama-build-context.cpp``).

The order of the events below is the order in which ik 8337e4cd (build 4840) allocated and freed
them for tiny-deepseek2 (read with a shim on ``ggml_backend_buft_get_alloc_size`` under
``--dry-run``, replayed by this allocator to the byte of every printed ``compute buffer size``);
the sizes are the tensors' shapes in the graph code. Ops ``ggml-alloc`` computes in place
(``ggml_op_can_inplace``: ADD, SCALE, UNARY, ROPE, SOFT_MAX with a sole consumer) take no
space of their own and are left out.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

ALIGNMENT = 32  # the CPU/RPC buffer alignment (TENSOR_ALIGNMENT); CUDA's 128 changes < 0.01 %


class DynAllocator:
    """``ggml_dyn_tallocr`` (``ggml/src/ggml-alloc.c``): best-fit over the free blocks."""

    def __init__(self, alignment: int = ALIGNMENT) -> None:
        self.alignment = alignment
        self.blocks: list[list[int]] = [[0, 1 << 62]]  # [offset, size], sorted by offset
        self.live: dict[str, tuple[int, int]] = {}
        self.max_size = 0

    def _aligned(self, size: int) -> int:
        return -(-size // self.alignment) * self.alignment

    def alloc(self, name: str, size: int) -> None:
        """``ggml_dyn_tallocr_alloc``: the smallest block besides the last that fits (the last
        such one on ties), else the last block."""
        size = self._aligned(size)
        best, best_size = -1, 0
        for i, (_, free) in enumerate(self.blocks[:-1]):
            if free >= size and (best < 0 or free <= best_size):
                best, best_size = i, free
        if best < 0:
            best = len(self.blocks) - 1
        block = self.blocks[best]
        offset = block[0]
        block[0] += size
        block[1] -= size
        if block[1] == 0:
            del self.blocks[best]
        self.live[name] = (offset, size)
        self.max_size = max(self.max_size, offset + size)

    def free(self, name: str) -> None:
        """``ggml_dyn_tallocr_free_tensor``: merge with the block ending or starting here."""
        offset, size = self.live.pop(name)
        blocks = self.blocks
        for i, block in enumerate(blocks):
            if block[0] + block[1] == offset:
                block[1] += size
                if i + 1 < len(blocks) and block[0] + block[1] == blocks[i + 1][0]:
                    block[1] += blocks[i + 1][1]
                    del blocks[i + 1]
                return
            if offset + size == block[0]:
                block[0] = offset
                block[1] += size
                if i > 0 and blocks[i - 1][0] + blocks[i - 1][1] == block[0]:
                    blocks[i - 1][1] += block[1]
                    del blocks[i]
                return
        at = 0
        while at < len(blocks) and blocks[at][0] < offset:
            at += 1
        blocks.insert(at, [offset, size])


class Ffn(Enum):
    """What a layer's FFN leaves in this device's buffer."""

    DENSE = "dense"  # llm_build_ffn: gate, up, fused up·gate, down
    MOE = "moe"  # routed experts here: llm_build_moe_ffn's router, fused up/gate, down
    MOE_CPU = "moe_cpu"  # router here, experts on the CPU: their down output comes back
    MOE_OTHER = "moe_other"  # router here, experts on another device: the sum comes back


@dataclass(frozen=True, slots=True)
class MlaShape:
    """The sizes one layer's tensors are made of (elements; see ``build_deepseek2``)."""

    n_embd: int
    n_head: int
    q_lora: int
    kv_lora: int
    rope: int
    nope: int
    v_head: int
    n_expert: int
    n_expert_used: int
    n_ff_exp: int
    n_ff_shexp: int  # shared experts' width (0: none)
    n_ff_dense: int


@dataclass(frozen=True, slots=True)
class MlaRun:
    """The graph's settings: tokens, KV cells, ik's MLA mode, flash attention, -amb (MiB)."""

    tokens: int
    kv: int
    mla: int
    flash_attn: bool
    amb: int
    mask_bytes: int
    kv_elt: float  # bytes per element of decompressed K/V (f16; the cache type when CPU-only)
    cache_elt: float  # bytes per element of the latent cache (for kv_cache_trans)
    rope_cast: bool = False  # the cache's rope part is cast to f16 before the repeat


# ("A" alloc | "F" free | "R" rename "old>new" | "O" a split starts here, name, bytes)
Event = tuple[str, str, int]


def pp_opt(run: MlaRun) -> bool:
    """``build_deepseek2``: ``bool pp_opt = n_tokens >= 128 && lctx.cparams.mla_attn > 1``."""
    return run.tokens >= 128 and run.mla > 1


def head_chunk(shape: MlaShape, run: MlaRun) -> int:
    """Heads per pass of the FA prompt path: ``n_max_head`` in ``build_deepseek2`` (the first
    divisor ``niter`` of ``n_head`` with ``kv_f32_size/niter <= attn_max_batch``, in MiB)."""
    kv_f32_mib = shape.n_head * (shape.nope + shape.v_head) * run.kv * 4 // (1 << 20)
    if run.amb <= 0 or kv_f32_mib <= run.amb:
        return shape.n_head
    for niter in range(2, shape.n_head):
        if shape.n_head % niter == 0 and kv_f32_mib // niter <= run.amb:
            return shape.n_head // niter
    return 1


def fa_on_latent(run: MlaRun) -> bool:
    """Flash attention on the latent cache: ``lctx.cparams.flash_attn && (mla_attn == 1 ||
    mla_attn == 3)`` outside the prompt path."""
    return run.flash_attn and run.mla in (1, 3)


def covered(shape: MlaShape, run: MlaRun) -> bool:
    """Paths this replay follows: the FA prompt path, FA on the latent cache, and the single K·Q
    product (``attn_max_batch <= 0 || attn_max_batch >= kq_size``); the per-head K·Q split of
    ``-amb`` is left to the closed form."""
    if run.tokens <= 1 or shape.q_lora <= 0:
        return False
    if (run.flash_attn and pp_opt(run)) or fa_on_latent(run):
        return True
    kq_mib = run.kv * run.tokens * shape.n_head * 4 // (1 << 20)
    return run.amb <= 0 or run.amb >= kq_mib


def _attention(
    s: MlaShape, r: MlaRun, il: int, resid: str, *, output_rows: bool = False
) -> Iterator[Event]:
    """One layer's attention (``build_deepseek2``), from ``attn_norm`` to ``ffn_inp``."""
    t, h = r.tokens, s.n_head
    f = 4  # f32 activations
    n = f"-{il}"
    yield "A", "attn_norm" + n, s.n_embd * t * f  # llm_build_norm(inpL)
    yield "A", "q_a" + n, s.q_lora * t * f  # ggml_mul_mat(wq_a, cur)
    yield "A", "kvrc" + n, (s.kv_lora + s.rope) * t * f  # ggml_mul_mat(wkv_a_mqa, cur)
    yield "F", "attn_norm" + n, 0
    yield "A", "q_a_norm" + n, s.q_lora * t * f  # llm_build_norm(q, attn_q_a_norm)
    yield "F", "q_a" + n, 0
    yield "A", "q" + n, h * (s.nope + s.rope) * t * f  # ggml_mul_mat(wq_b, q)
    yield "F", "q_a_norm" + n, 0
    yield "A", "q_rope" + n, h * s.rope * t * f  # ggml_rope_ext(view of q)
    yield "A", "k_rope" + n, s.rope * t * f  # ggml_rope_ext(view of kv_rope_compressed)
    yield "A", "kv_compressed" + n, s.kv_lora * t * f  # llm_build_norm(kv_compressed)
    yield "F", "kvrc" + n, 0
    yield "A", "kvr" + n, (s.kv_lora + s.rope) * t * f  # ggml_concat(k_rope, kv_compressed)
    yield "F", "k_rope" + n, 0
    yield "F", "kv_compressed" + n, 0
    yield "F", "kvr" + n, 0  # after ggml_cpy(kvr, kv_cache_view)
    if r.flash_attn and pp_opt(r):
        yield from _fa_prompt(s, r, n)
    else:
        yield from _latent_attention(s, r, n)
    yield "A", "kqv_out" + n, s.n_embd * t * f  # ggml_mul_mat(wo, cur)
    yield "F", "kqv" + n, 0
    if output_rows:
        # the last layer: cur = ggml_get_rows(cur, inp_out_ids), inpSA likewise
        yield "A", "last_attn" + n, s.n_embd * t * f
        yield "F", "kqv_out" + n, 0
        yield "A", "last_ffn_inp" + n, s.n_embd * t * f
        yield "F", resid, 0
        yield "F", "out_ids", 0
        yield "F", "last_ffn_inp" + n, 0  # ffn_inp = ggml_add(cur, inpSA) reuses last_attn
        yield "R", "last_attn" + n + ">kqv_out" + n, 0
        return
    # ffn_inp = ggml_add(cur, inpSA) reuses kqv_out; the layer input goes.
    yield "F", resid, 0


def _fa_prompt(s: MlaShape, r: MlaRun, n: str) -> Iterator[Event]:
    """The ``pp_opt`` flash-attention branch: K and V decompressed for ``n_max_head`` heads."""
    t, kv, f = r.tokens, r.kv, 4
    heads = head_chunk(s, r)
    passes = s.n_head // heads
    yield "A", "q_concat" + n, s.n_head * (s.nope + s.rope) * t * f  # ggml_concat(q_rope, q_nope)
    yield "F", "q_rope" + n, 0
    yield "F", "q" + n, 0
    for i in range(passes):
        p = f"{n}.{i}"
        yield "A", "kv_f32" + p, heads * (s.nope + s.v_head) * kv * f  # ggml_mul_mat(wkv_b, nope)
        yield "A", "k_nope" + p, int(heads * s.nope * kv * r.kv_elt)  # ggml_cast(k_nope_f32)
        yield "A", "v" + p, int(heads * s.v_head * kv * r.kv_elt)  # ggml_cast(v_f32)
        yield "F", "kv_f32" + p, 0
        if i == 0:
            # ggml_repeat(kv_cache_rope, repeater): built once, used by every pass's K; from
            # ggml_cast(kv_cache_rope, GGML_TYPE_F16) when the cache is not of kv_type
            if r.rope_cast:
                yield "A", "k_rope_f16" + n, s.rope * kv * 2
            yield "A", "k_rope_rep" + n, int(heads * s.rope * kv * r.kv_elt)
            if r.rope_cast:
                yield "F", "k_rope_f16" + n, 0
        yield "A", "k" + p, int(heads * (s.rope + s.nope) * kv * r.kv_elt)  # ggml_concat
        if i == passes - 1:
            yield "F", "k_rope_rep" + n, 0
        yield "F", "k_nope" + p, 0
        yield "A", "kqv" + p, heads * s.v_head * t * f  # ggml_flash_attn_ext
        if i == passes - 1:
            yield "F", "q_concat" + n, 0
        yield "F", "k" + p, 0
        yield "F", "v" + p, 0
        if i > 0:
            # cur = ggml_concat(ctx0, cur, kqv reshaped, 0)
            yield "A", "cur" + p, (i + 1) * heads * s.v_head * t * f
            yield "F", ("kqv" + n + ".0") if i == 1 else ("cur" + f"{n}.{i - 1}"), 0
            yield "F", "kqv" + p, 0
    last = "kqv" + n + ".0" if passes == 1 else "cur" + f"{n}.{passes - 1}"
    yield "R", last + ">kqv" + n, 0  # the attention output, freed after ``wo``


def _latent_attention(s: MlaShape, r: MlaRun, n: str) -> Iterator[Event]:
    """Attention on the latent cache: ``q_nope2 = wk_b × q_nope``, then flash attention on the
    cache or K·Q, softmax and V on the transposed cache, then ``wv_b``."""
    t, kv, h, f = r.tokens, r.kv, s.n_head, 4
    trans = not fa_on_latent(r) and r.mla > 1
    if trans:
        # kv_cache_trans = ggml_cont(ggml_transpose(kv_cache_lora)), in the latent cache's type
        yield "A", "kv_cache_trans" + n, int(s.kv_lora * kv * r.cache_elt)
    yield "A", "q_nope2" + n, h * s.kv_lora * t * f  # ggml_mul_mat(wk_b, q_nope_perm)
    yield "F", "q" + n, 0
    yield "A", "q_cat" + n, h * (s.kv_lora + s.rope) * t * f  # ggml_concat(q_rope, q_nope2)
    yield "F", "q_rope" + n, 0
    yield "F", "q_nope2" + n, 0
    if fa_on_latent(r):
        yield "A", "kqv_compressed" + n, h * s.kv_lora * t * f  # ggml_flash_attn_ext
        yield "F", "q_cat" + n, 0
    else:
        yield "A", "kq" + n, h * kv * t * f  # ggml_mul_mat(kv_cache, q)
        yield "F", "q_cat" + n, 0
        if not pp_opt(r):
            yield "A", "kq_perm" + n, h * kv * t * f  # ggml_cont(ggml_permute(kq))
            yield "F", "kq" + n, 0
            yield "R", "kq_perm" + n + ">kq" + n, 0
        # kq_soft_max_ext reuses kq; kqv_compressed = ggml_mul_mat(kv_cache_trans, kq)
        yield "A", "kqv_compressed" + n, h * s.kv_lora * t * f
        if trans:
            yield "F", "kv_cache_trans" + n, 0
        yield "F", "kq" + n, 0
    yield "A", "kqv_wv" + n, h * s.v_head * t * f  # ggml_mul_mat(wv_b, kqv_compressed)
    yield "F", "kqv_compressed" + n, 0
    if t > 1:
        yield "A", "kqv" + n, h * s.v_head * t * f  # ggml_cont(ggml_permute(kqv))
        yield "F", "kqv_wv" + n, 0
    else:
        yield "R", "kqv_wv" + n + ">kqv" + n, 0


def _router(s: MlaShape, t: int, n: str) -> Iterator[Event]:
    """``llm_build_moe_ffn``'s sigmoid router with bias, normalised and scaled weights."""
    x, u, f = s.n_expert, s.n_expert_used, 4
    yield "A", "logits" + n, x * t * f  # ggml_mul_mat(gate_inp, cur); sigmoid in place
    yield "A", "probs_biased" + n, x * t * f  # ggml_add(probs, exp_probs_b)
    yield "A", "argsort" + n, x * t * f  # ggml_argsort_top_k
    yield "F", "probs_biased" + n, 0
    yield "A", "weights" + n, u * t * f  # ggml_get_rows(probs, selected_experts)
    yield "F", "logits" + n, 0
    yield "A", "weights_sum" + n, t * f  # ggml_sum_rows
    yield "A", "weights_norm" + n, u * t * f  # ggml_div
    yield "F", "weights" + n, 0
    yield "F", "weights_sum" + n, 0
    yield "A", "weights_scaled" + n, u * t * f  # ggml_scale
    yield "F", "weights_norm" + n, 0


def _dense_ffn(s: MlaShape, t: int, n: str) -> Iterator[Event]:
    """``llm_build_ffn`` of a dense layer after its norm (the same in every build replayed)."""
    f, e = 4, s.n_embd
    yield "A", "gate" + n, s.n_ff_dense * t * f
    yield "A", "up" + n, s.n_ff_dense * t * f
    yield "F", "ffn_norm" + n, 0
    yield "A", "up_gate" + n, s.n_ff_dense * t * f  # ggml_fused_mul_unary
    yield "F", "gate" + n, 0
    yield "F", "up" + n, 0
    yield "A", "l_out" + n, e * t * f  # ggml_mul_mat(down); l_out = add in place
    yield "F", "up_gate" + n, 0
    yield "F", "kqv_out" + n, 0  # ffn_inp


def _shared_expert(s: MlaShape, t: int, n: str) -> Iterator[Event]:
    """The shared experts' ``llm_build_ffn`` (none: the norm is freed), after the routed ones."""
    f, e = 4, s.n_embd
    if not s.n_ff_shexp:
        yield "F", "ffn_norm" + n, 0
        return
    yield "A", "sh_gate" + n, s.n_ff_shexp * t * f
    yield "A", "sh_up" + n, s.n_ff_shexp * t * f
    yield "F", "ffn_norm" + n, 0
    yield "A", "sh_up_gate" + n, s.n_ff_shexp * t * f
    yield "F", "sh_gate" + n, 0
    yield "F", "sh_up" + n, 0
    yield "A", "shexp" + n, e * t * f
    yield "F", "sh_up_gate" + n, 0
    yield "F", "shexp" + n, 0


def _ffn(s: MlaShape, r: MlaRun, il: int, kind: Ffn) -> Iterator[Event]:
    """One layer's FFN; its output (``l_out``, in place on the last sum) is named ``l_out-il``."""
    t, f, e = r.tokens, 4, s.n_embd
    n = f"-{il}"
    yield "A", "ffn_norm" + n, e * t * f  # llm_build_norm(ffn_inp)
    if kind is Ffn.DENSE:
        yield from _dense_ffn(s, t, n)
        return
    yield from _router(s, t, n)
    u = s.n_expert_used
    if kind is Ffn.MOE:
        yield "A", "gate_par" + n, s.n_ff_exp * u * t * f  # ggml_moe_up_gate
        yield "A", "down" + n, e * u * t * f  # ggml_mul_mat_id(down_exps)
        yield "F", "gate_par" + n, 0
        yield "F", "argsort" + n, 0
    else:
        yield "F", "argsort" + n, 0
    if kind is Ffn.MOE_OTHER:
        # The other device sums the experts; the sum comes back as a split input copy
        # (ggml_backend_sched_split_graph) and ffn_out, l_out are added to it in place.
        yield "F", "weights_scaled" + n, 0
        yield "A", "l_out" + n, e * t * f
        yield "O", "split start", 0
    else:
        if kind is Ffn.MOE_CPU:
            # the CPU's ggml_mul_mat_id result comes back as a split input copy
            yield "A", "down" + n, e * u * t * f
            yield "O", "split start", 0
        yield "A", "l_out" + n, e * t * f  # ggml_multi_add; ffn_out, l_out in place
        yield "F", "down" + n, 0
        yield "F", "weights_scaled" + n, 0
    yield from _shared_expert(s, t, n)
    yield "F", "kqv_out" + n, 0  # ffn_inp


@dataclass(frozen=True, slots=True)
class MlaLayer:
    """One KV layer on the device: whether its input arrives from another backend (a split input
    copy: the device's first layer, or one whose predecessor ran elsewhere) and its FFN."""

    copied_input: bool
    ffn: Ffn


def _split_starts(layers: Sequence[MlaLayer]) -> list[int]:
    """Where the scheduler starts a split on this device: ``2·i`` before layer ``i``'s attention
    (its input is copied in), ``2·i + 1`` at the copy its FFN gets back from another backend."""
    starts = []
    for i, layer in enumerate(layers):
        if layer.copied_input:
            starts.append(2 * i)
        if layer.ffn in (Ffn.MOE_CPU, Ffn.MOE_OTHER):
            starts.append(2 * i + 1)
    return starts


def compressed(layers: Sequence[MlaLayer]) -> tuple[MlaLayer, ...]:
    """``layers`` with each run of more than four equal consecutive layers cut to its first
    three and its last: from the second equal layer on, ggml-alloc repeats the same placement
    (each layer frees what it allocated), so the peak is reached within the first few."""
    out: list[MlaLayer] = []
    i = 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[i]:
            j += 1
        run = list(layers[i : j + 1])
        out += run if len(run) <= 4 else [*run[:3], run[-1]]
        i = j + 1
    return tuple(out)


@lru_cache(maxsize=256)
def device_peak(
    shape: MlaShape,
    run: MlaRun,
    layers: tuple[MlaLayer, ...],
    *,
    holds_last: bool = False,
    legacy: Legacy | None = None,
) -> int:
    """Bytes ``ggml-alloc`` reserves on a device running the attention and FFN of ``layers`` (its
    KV layers, in order). ``holds_last``: the last of them is the model's last layer, whose
    ``inp_out_ids`` (``T`` int32) is copied in at the start of its split and whose attention output
    and input are gathered to the output rows (``ggml_get_rows``; all ``T`` rows in the
    worst-case graph) before its FFN. ``legacy``: replay the order of ik builds before 4161
    (:class:`Legacy`)."""
    layers = compressed(layers)
    alloc = DynAllocator()
    t, e = run.tokens, shape.n_embd
    last = len(layers) - 1
    out_ids_at = -1
    if holds_last and layers:
        out_ids_at = max((c for c in _split_starts(layers) if c <= 2 * last), default=0)
    alias: dict[str, str] = {}
    resid = ""
    for il, layer in enumerate(layers):
        if layer.copied_input:
            if resid:
                alloc.free(resid)  # the previous layer's output was sent on
            resid = f"inp-{il}"
            alloc.alloc(resid, e * t * 4)
            if il == 0:
                alloc.alloc("inp_pos", t * 4)
                alloc.alloc("mask", run.mask_bytes)
        if out_ids_at == 2 * il:
            alloc.alloc("out_ids", t * 4)
        if legacy is None:
            events = list(_attention(shape, run, il, resid, output_rows=holds_last and il == last))
            ffn = _ffn(shape, run, il, layer.ffn)
        else:
            events = list(
                _attention_legacy(
                    shape,
                    run,
                    il,
                    resid,
                    legacy,
                    output_rows=holds_last and il == last,
                    last=il == last,
                )
            )
            ffn = _ffn_legacy(shape, run, il, layer.ffn, legacy.fused_moe)
        for op, name, size in (*events, *ffn):
            if op == "R":  # a tensor that later events call by another name
                old, new = name.split(">")
                alias[new] = old
            elif op == "O":
                if out_ids_at == 2 * il + 1:
                    alloc.alloc("out_ids", t * 4)
            elif op == "A":
                alloc.alloc(name, size)
            else:
                alloc.free(alias.pop(name, name))
        resid = f"l_out-{il}"
    if legacy is not None and legacy.n_vocab and resid:
        # the output: result_norm (rms_norm of the last layer's output), then the logits
        alloc.alloc("result_norm", e * t * 4)
        alloc.free(resid)
        alloc.alloc("result_output", legacy.n_vocab * t * 4)
    return alloc.max_size


# --- ik builds before 4161 (PR #1211) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Legacy:
    """How an ik build before 4161 differs in the replay (``build_deepseek2`` in ``src/llama.cpp``
    at 58f08e43, build 3737; the order below is that build's own allocation trace, replayed to the
    byte: ``tests/data/mla_dryrun_3737.json``).

    * The ``-amb`` head split halves the heads while their number is even (``while
      (n_max_head%2 == 0 && kv_f32_size > attn_max_batch) n_max_head /= 2``).
    * Only ``k_nope``, ``v`` and ``k`` of each head chunk are expanded into the graph inside the
      loop; the chunks' flash attention and the concatenation of their outputs follow after the
      loop (``ggml_build_forward_expand(gf, cur)``), so every chunk's K and V are live together.
    * The K path (``kv_rope_compressed`` → cache copy) runs before the Q path.
    * Before build 3907 the mask arrives as f32 and is cast to f16 at the first flash attention
      (``mask_cast``: the device running the model's first attention; later devices receive the
      f16 cast); it is freed at the device's last attention, like ``inp_pos`` after its last RoPE.
    * Fused MoE was an option (``-fmoe``) before build 3928.
    * ``n_vocab``: the device computes the logits (``result_norm``, then ``result_output``).
    """

    mask_cast: bool = False
    fused_moe: bool = True
    n_vocab: int = 0


def legacy_head_chunk(shape: MlaShape, run: MlaRun) -> int:
    """Heads per pass before PR #1211: halved while even and above ``-amb`` MiB."""
    kv_f32_mib = shape.n_head * (shape.nope + shape.v_head) * run.kv * 4 // (1 << 20)
    heads = shape.n_head
    if run.amb > 0 and kv_f32_mib > run.amb:
        while heads % 2 == 0 and kv_f32_mib > run.amb:
            heads //= 2
            kv_f32_mib //= 2
    return heads


def _attention_legacy(
    s: MlaShape,
    r: MlaRun,
    il: int,
    resid: str,
    legacy: Legacy,
    *,
    output_rows: bool,
    last: bool,
) -> Iterator[Event]:
    """One layer's attention in an ik build before 4161 (flash attention, prompt path)."""
    t, h, f, kv = r.tokens, s.n_head, 4, r.kv
    n = f"-{il}"
    yield "A", "attn_norm" + n, s.n_embd * t * f
    yield "A", "kvrc" + n, (s.kv_lora + s.rope) * t * f  # ggml_mul_mat(wkv_a_mqa, cur)
    yield "A", "k_rope" + n, s.rope * t * f  # ggml_rope_ext
    yield "A", "kv_compressed" + n, s.kv_lora * t * f  # llm_build_norm
    yield "F", "kvrc" + n, 0
    yield "A", "kvr" + n, (s.kv_lora + s.rope) * t * f  # ggml_concat, copied into the cache
    yield "F", "k_rope" + n, 0
    yield "F", "kv_compressed" + n, 0
    yield "F", "kvr" + n, 0
    yield "A", "q_a" + n, s.q_lora * t * f  # ggml_mul_mat(wq_a, cur)
    yield "F", "attn_norm" + n, 0
    yield "A", "q_a_norm" + n, s.q_lora * t * f
    yield "F", "q_a" + n, 0
    yield "A", "q" + n, h * (s.nope + s.rope) * t * f  # ggml_mul_mat(wq_b, q)
    yield "F", "q_a_norm" + n, 0
    yield "A", "q_rope" + n, h * s.rope * t * f
    if last:
        yield "F", "inp_pos", 0  # the device's last RoPE has run
    yield "A", "q_concat" + n, h * (s.nope + s.rope) * t * f  # ggml_concat(q_rope, q_nope)
    yield "F", "q_rope" + n, 0
    yield "F", "q" + n, 0
    heads = legacy_head_chunk(s, r)
    passes = h // heads
    for i in range(passes):
        p = f"{n}.{i}"
        yield "A", "kv_f32" + p, heads * (s.nope + s.v_head) * kv * f
        yield "A", "k_nope" + p, int(heads * s.nope * kv * r.kv_elt)
        yield "A", "v" + p, int(heads * s.v_head * kv * r.kv_elt)
        yield "F", "kv_f32" + p, 0
        if i == 0:
            if r.rope_cast:
                yield "A", "k_rope_f16" + n, s.rope * kv * 2
            yield "A", "k_rope_rep" + n, int(heads * s.rope * kv * r.kv_elt)
            if r.rope_cast:
                yield "F", "k_rope_f16" + n, 0
        yield "A", "k" + p, int(heads * (s.rope + s.nope) * kv * r.kv_elt)
        if i == passes - 1:
            yield "F", "k_rope_rep" + n, 0
        yield "F", "k_nope" + p, 0
    if il == 0 and legacy.mask_cast:
        yield "A", "mask_f16", kv * (-(-t // 16) * 16) * 2  # ggml_cast(KQ_mask, F16)
        yield "F", "mask", 0
    for i in range(passes):
        p = f"{n}.{i}"
        yield "A", "kqv" + p, heads * s.v_head * t * f  # ggml_flash_attn_ext
        if i == passes - 1:
            yield "F", "q_concat" + n, 0
        yield "F", "k" + p, 0
        yield "F", "v" + p, 0
        if i == passes - 1 and last:
            yield "F", "mask_f16" if legacy.mask_cast else "mask", 0
        if i > 0:
            yield "A", "cur" + p, (i + 1) * heads * s.v_head * t * f  # ggml_concat(cur, kqv)
            yield "F", ("kqv" + n + ".0") if i == 1 else ("cur" + f"{n}.{i - 1}"), 0
            yield "F", "kqv" + p, 0
    out = "kqv" + n + ".0" if passes == 1 else "cur" + f"{n}.{passes - 1}"
    yield "A", "kqv_out" + n, s.n_embd * t * f  # ggml_mul_mat(wo, cur)
    yield "F", out, 0
    if output_rows:
        yield "A", "last_attn" + n, s.n_embd * t * f
        yield "F", "kqv_out" + n, 0
        yield "A", "last_ffn_inp" + n, s.n_embd * t * f
        yield "F", resid, 0
        yield "F", "out_ids", 0
        yield "F", "last_ffn_inp" + n, 0
        yield "R", "last_attn" + n + ">kqv_out" + n, 0
        return
    yield "F", resid, 0


def _ffn_legacy(s: MlaShape, r: MlaRun, il: int, kind: Ffn, fused: bool) -> Iterator[Event]:
    """One layer's FFN in an ik build before 4161: the router's weights are gathered after the
    experts' down projection, and without ``-fmoe`` up and gate are separate matmuls."""
    t, f, e = r.tokens, 4, s.n_embd
    n = f"-{il}"
    yield "A", "ffn_norm" + n, e * t * f
    if kind is Ffn.DENSE:
        yield from _dense_ffn(s, t, n)
        return
    x, u = s.n_expert, s.n_expert_used
    yield "A", "logits" + n, x * t * f  # ggml_mul_mat(gate_inp, cur); sigmoid in place
    yield "A", "probs_biased" + n, x * t * f
    yield "A", "argsort" + n, x * t * f
    yield "F", "probs_biased" + n, 0
    if kind is Ffn.MOE:
        if not fused:
            yield "A", "moe_gate" + n, s.n_ff_exp * u * t * f
            yield "A", "moe_up" + n, s.n_ff_exp * u * t * f
        yield "A", "gate_par" + n, s.n_ff_exp * u * t * f
        if not fused:
            yield "F", "moe_gate" + n, 0
            yield "F", "moe_up" + n, 0
        yield "A", "down" + n, e * u * t * f
        yield "F", "gate_par" + n, 0
    yield "A", "weights" + n, u * t * f  # ggml_get_rows(probs, selected_experts)
    yield "F", "logits" + n, 0
    yield "F", "argsort" + n, 0
    yield "A", "weights_sum" + n, t * f
    yield "A", "weights_norm" + n, u * t * f
    yield "F", "weights" + n, 0
    yield "F", "weights_sum" + n, 0
    yield "A", "weights_scaled" + n, u * t * f
    yield "F", "weights_norm" + n, 0
    yield "F", "weights_scaled" + n, 0
    yield "A", "l_out" + n, e * t * f  # moe_out (or the experts' sum copied back); in place after
    if kind is Ffn.MOE:
        yield "F", "down" + n, 0
    else:
        yield "O", "split start", 0
    yield from _shared_expert(s, t, n)
    yield "F", "kqv_out" + n, 0
