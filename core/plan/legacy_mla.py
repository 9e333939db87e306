"""The MLA prompt path of ik_llama.cpp builds before 4161, replayed through ggml-alloc.

Before PR #1211 (33308908d, 2026-01-31) ``build_deepseek2`` (``src/llama.cpp`` at 58f08e43,
build 3737) split the heads for ``-amb`` by halving (``while (n_max_head%2 == 0 &&
kv_f32_size > attn_max_batch) n_max_head /= 2``) and expanded only ``k_nope``, ``v`` and ``k``
of each head chunk into the graph; the flash-attention nodes and the concatenation of their
outputs joined the graph later, when the layer's output was expanded. So every chunk's ``k`` and
``v`` stayed live until the chunks' attention ran, and ggml-alloc packed them around the
transient ``kv_f32`` of the next chunk. The resulting buffer is not a sum of terms: holes left by
freed tensors decide it. This module replays that node order through a port of ggml-alloc's
dynamic allocator (``ggml_dyn_tallocr_alloc`` / ``ggml_dyn_tallocr_free_tensor``,
``ggml/src/ggml-alloc.c``: best fit among the free blocks except the last, the last block as
the last resort, freed blocks merged with their neighbours) and reads off its high-water mark.

Checked against build 3737 itself on an RPC device (the allocation is the same on CUDA: the
published 4090 and 3080 logs at -c 32768 -ub 512 -amb 512 print 3425 MiB, as the RPC device
did): ``tests/data/mla_dryrun_3737.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALIGNMENT = 256  # the CUDA buffer type's alignment (ggml_backend_cuda_buffer_type_get_alignment)


@dataclass
class DynAlloc:
    """ggml-alloc's ``ggml_dyn_tallocr``: free blocks sorted by offset, the last one unbounded."""

    free: list[list[int]] = field(default_factory=lambda: [[0, 1 << 62]])
    max_size: int = 0
    live: dict[str, tuple[int, int]] = field(default_factory=dict)

    def alloc(self, name: str, size: int) -> None:
        size = -(-size // ALIGNMENT) * ALIGNMENT
        best = -1
        best_size = 1 << 63
        for i, (_, block) in enumerate(self.free[:-1]):
            if size <= block <= best_size:
                best, best_size = i, block
        if best == -1:
            best = len(self.free) - 1
        offset, block = self.free[best]
        if block == size:
            del self.free[best]
        else:
            self.free[best] = [offset + size, block - size]
        self.max_size = max(self.max_size, offset + size)
        self.live[name] = (offset, size)

    def release(self, name: str) -> None:
        offset, size = self.live.pop(name)
        for i, (start, block) in enumerate(self.free):
            if start + block == offset:
                self.free[i][1] += size
                if i + 1 < len(self.free) and self.free[i + 1][0] == offset + size:
                    self.free[i][1] += self.free[i + 1][1]
                    del self.free[i + 1]
                return
            if offset + size == start:
                self.free[i] = [offset, block + size]
                if i > 0 and self.free[i - 1][0] + self.free[i - 1][1] == offset:
                    self.free[i - 1][1] += self.free[i][1]
                    del self.free[i]
                return
        self.free.append([offset, size])
        self.free.sort()


@dataclass(frozen=True, slots=True)
class MlaShape:
    """What the replay needs of the model and the run (bytes per element as the graph uses)."""

    n_embd: int
    n_head: int
    q_lora: int  # 0: no q compression (DeepSeek-V2-Lite)
    kv_lora: int
    rope: int
    nope: int
    v_head: int
    kv_elem: float = 2.0  # f16 on a GPU (kv_type in build_deepseek2); the cache type on CPU alone
    rope_cast: bool = True  # the cache's rope part is cast to f16 first (cache not f16)


def legacy_head_chunk(n_head: int, full_mib: int, amb: int) -> int:
    """Heads per chunk before PR #1211: halve while even and above ``-amb`` MiB."""
    heads = n_head
    if amb > 0 and full_mib > amb:
        while heads % 2 == 0 and full_mib > amb:
            heads //= 2
            full_mib //= 2
    return heads


def _layer(
    a: DynAlloc, il: int, s: MlaShape, tokens: int, kv: int, heads: int, mask_cast: bool
) -> str:
    """One layer's attention in the node order of build 3737; returns the output's name."""
    t, h_all = tokens, s.n_head
    k = f"{il}:"
    qk = s.nope + s.rope
    # The first expanded node is the copy of the new K into the cache (attn_norm → wkv_a →
    # rope / norm → concat → cpy), then the Q concat (wq_a → norm → wq_b → rope → concat).
    a.alloc(k + "attn_norm", s.n_embd * t * 4)
    a.alloc(k + "kv_rope_compressed", (s.kv_lora + s.rope) * t * 4)
    a.alloc(k + "k_rope", s.rope * t * 4)
    a.alloc(k + "kv_compressed", s.kv_lora * t * 4)
    a.alloc(k + "kvr", (s.kv_lora + s.rope) * t * 4)
    a.release(k + "k_rope")
    a.release(k + "kv_compressed")
    a.release(k + "kv_rope_compressed")
    a.release(k + "kvr")  # copied into the cache
    if s.q_lora:
        a.alloc(k + "q_a", s.q_lora * t * 4)
        a.release(k + "attn_norm")
        a.alloc(k + "q", h_all * qk * t * 4)
        a.release(k + "q_a")
    else:
        a.alloc(k + "q", h_all * qk * t * 4)
        a.release(k + "attn_norm")
    a.alloc(k + "q_rope", h_all * s.rope * t * 4)
    a.alloc(k + "q_concat", h_all * qk * t * 4)
    a.release(k + "q_rope")
    a.release(k + "q")
    chunks = h_all // heads
    elem = s.kv_elem
    for i in range(chunks):
        a.alloc(k + f"kv_f32.{i}", heads * (s.nope + s.v_head) * kv * 4)
        a.alloc(k + f"k_nope.{i}", int(heads * s.nope * kv * elem))
        a.alloc(k + f"v.{i}", int(heads * s.v_head * kv * elem))
        a.release(k + f"kv_f32.{i}")
        if i == 0:
            if s.rope_cast:
                a.alloc(k + "kv_cache_rope_f16", s.rope * kv * 2)
            a.alloc(k + "k_rope_repeat", int(heads * s.rope * kv * elem))
            if s.rope_cast:
                a.release(k + "kv_cache_rope_f16")
        a.alloc(k + f"k.{i}", int(heads * qk * kv * elem))
        a.release(k + f"k_nope.{i}")
    a.release(k + "k_rope_repeat")
    out = ""
    for i in range(chunks):
        if il == 0 and i == 0 and mask_cast:
            a.alloc("KQ_mask_f16", kv * _pad(tokens) * 2)  # the cast, at its first use
        a.alloc(k + f"kqv.{i}", heads * s.v_head * t * 4)
        a.release(k + f"k.{i}")
        a.release(k + f"v.{i}")
        if i == 0:
            out = k + "kqv.0"
        else:
            a.alloc(k + f"cur.{i}", (i + 1) * heads * s.v_head * t * 4)
            a.release(out)
            a.release(k + f"kqv.{i}")
            out = k + f"cur.{i}"
    a.release(k + "q_concat")
    a.alloc(k + "wo", s.n_embd * t * 4)
    a.release(out)
    return k + "wo"


def _pad(tokens: int) -> int:
    return -(-tokens // 16) * 16  # GGML_KQ_MASK_PAD


def legacy_mla_peak(
    s: MlaShape,
    tokens: int,
    kv: int,
    amb: int,
    *,
    mask_f32: bool,
    layers: int = 3,
    n_vocab: int = 0,
) -> int:
    """The device's high-water mark (bytes) over three layers of the old MLA prompt path.

    The mask and the layer input are allocated first (graph inputs are): before build 3907 an
    f32 mask whose f16 cast is allocated at the first attention (``mask_f32``), later an f16
    mask. Between layers the FFN runs (its norm, two activations of the layer's width, the down
    output); its tensors fit in the holes attention leaves, so its width does not move the peak
    (build 3737 printed the same with the experts' 16 × wider activations). Three layers reach
    the steady layout of holes.
    """
    full_mib = s.n_head * (s.nope + s.v_head) * kv * 4 // (1 << 20)
    heads = legacy_head_chunk(s.n_head, full_mib, amb)
    a = DynAlloc()
    a.alloc("KQ_mask", kv * _pad(tokens) * (4 if mask_f32 else 2))
    a.alloc("inp", s.n_embd * tokens * 4)
    ffn_act = s.n_embd * tokens * 4
    for il in range(layers):
        out = _layer(a, il, s, tokens, kv, heads, mask_f32)
        # ffn_inp = wo + inpSA, in place on wo's output; then the FFN, whose output the final
        # residual add overwrites in place: that is the next layer's input.
        a.release("inp")
        a.alloc("ffn_norm", s.n_embd * tokens * 4)
        a.alloc("ffn_up", ffn_act)
        a.alloc("ffn_gate", ffn_act)
        a.release("ffn_norm")
        a.release("ffn_up")
        a.alloc("ffn_down", s.n_embd * tokens * 4)
        a.release("ffn_gate")
        a.release(out)
        a.live["inp"] = a.live.pop("ffn_down")
    if n_vocab:
        a.alloc("result_norm", s.n_embd * tokens * 4)
        a.release("inp")
        a.alloc("result_output", n_vocab * tokens * 4)
    return a.max_size
