"""Tiny real Mixture-of-Experts GGUFs: a few MB of seeded random weights that llama-server loads.

Each file has the tensor names, shapes and hyperparameter keys of a real converter's output
(engines.md §2 and ik_llama.cpp ``src/llama-load-tensors.cpp``), shrunk to ``n_embd`` 128 and
8 experts of which 2 are used, so a real llama-server loads it, places it on devices and answers
``/completion`` with it (tests/engine checks this with ik_llama.cpp). Norms, biases and the
router are F32, the routed experts Q8_0 and every other matrix F16: three ggml types per file.

The vocabulary is a SentencePiece ("llama") one: ``<unk>``, ``<s>``, ``</s>``, byte tokens only
for ``\\n`` and printable ASCII (0x20-0x7E), and word pieces of lowercase ASCII letters with ``▁``
for a space. Every token the model can sample therefore decodes to ASCII, whereas a full byte
vocabulary lets a random-weight model emit half a UTF-8 sequence, which makes llama-server answer
HTTP 500 (engines.md §11). Prompts must be printable ASCII and newlines: the tokenizer falls
back to byte tokens for any other character, and it has none.

Counts with the default ``n_layer=4`` (``TinyModelPlan.n_tensors`` / ``n_kv`` compute them for
any ``n_layer``):

============  =======  ========  ==========================================================
arch          tensors  KV pairs  layers
============  =======  ========  ==========================================================
qwen3moe      51       27        4 MoE (12 tensors each) + token_embd, output_norm, output
deepseek2     66       34        1 dense (12) + 3 MoE with a shared expert (17); ``attn_kv_b``
glm4moe       80       33        1 dense (14) + 2 MoE (19) + 1 nextn MoE block (25), unused
gpt-oss       79       28        4 MoE (19 tensors each: biases everywhere, attention sinks)
============  =======  ========  ==========================================================

The gpt-oss file has gpt-oss's layout (ik ``create_openai_moe_tensors``): biased q/k/v/o,
``attn_sinks``, a biased router, experts with per-expert biases, and ``attention.sliding_window``
128, so every other layer (ik and our reader: the even ones) attends through a sliding window and
the graph builds the second KQ mask. Its experts are Q8_0 here, not MXFP4.

A split model (:func:`write_tiny_split`) is laid out as ``gguf-split`` writes one: the tensors in
file order over ``<stem>-0000k-of-0000n.gguf``, the full metadata in the first shard only, and
``split.no`` (u16), ``split.count`` (u16) and ``split.tensors.count`` (i32) in every shard, so the
first shard has ``n_kv + 3`` pairs and the others 3.

The DeepSeek file is in the ik/legacy flavour: ``attn_kv_b`` with ``head_count_kv`` equal to
``head_count`` and ``key_length``/``value_length`` 192/128, which ik_llama.cpp turns into MLA at
load (``llm_prepare_mla``). ``kv_lora_rank`` 512 and ``rope.dimension_count`` 64 are DeepSeek-V3's
values, so the tiny model has a real DeepSeek's KV-cache row (576 per token and layer).
ik_llama.cpp demands exactly these (and ``head_count`` a multiple of 4) only of mainline-flavour
files, those with ``head_count_kv`` 1 (``src/llama-hparams.cpp``); this flavour also loaded with
ranks 128 and 256.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType, TokenType, quants

ARCHITECTURES = ("qwen3moe", "deepseek2", "glm4moe", "gpt-oss")
# Keys gguf-split adds to every shard of a split model.
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")

F32 = GGMLQuantizationType.F32
F16 = GGMLQuantizationType.F16
Q8_0 = GGMLQuantizationType.Q8_0

N_VOCAB = 512
N_EMBD = 128
N_EXPERT = 8
N_EXPERT_USED = 2
N_FF = 256  # dense FFN width (deepseek2/glm4moe leading layer)
N_FF_EXP = 64
CONTEXT_LENGTH = 4096

# Most frequent English words, plus the ones of the usual test prompt.
_WORD_LIST = (
    "the of and to in is it that was for on are with as be at by this have from or one had not "
    "but what all were when we there can an your which their said if do will each about how up "
    "out them then she many some so these would other into has more her two like him see time "
    "could no make than first been its who now people my made over did down only way find use "
    "may water long little very after words called just where most know quick brown fox jumps "
    "lazy dog hello world test model expert token"
)
_WORDS = _WORD_LIST.split()
_LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
_SPACE = "\u2581"  # SentencePiece's visible space


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor to write: ``shape`` in ggml order (``ne0`` first), as GGUF stores it."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType


@dataclass(frozen=True, slots=True)
class MetaSpec:
    """One metadata value with its GGUF type (and element type for arrays)."""

    value: object
    vtype: GGUFValueType
    sub_type: GGUFValueType | None = None


@dataclass(frozen=True)
class TinyModelPlan:
    """Everything a tiny model file holds except the weights (which depend on the seed)."""

    arch: str
    n_layer: int
    nextn_layers: int
    metadata: dict[str, MetaSpec]  # general.architecture included
    tensors: tuple[TensorSpec, ...]

    @property
    def n_tensors(self) -> int:
        return len(self.tensors)

    @property
    def n_kv(self) -> int:
        """KV pairs of the unsplit file (the first shard of a split one has 3 more)."""
        return len(self.metadata)

    @property
    def unused_tensors(self) -> tuple[str, ...]:
        """Tensors of the trailing nextn (MTP) blocks, which the engines skip without MTP."""
        first = self.n_layer - self.nextn_layers
        return tuple(
            t.name
            for t in self.tensors
            if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= first
        )


def _u32(value: int) -> MetaSpec:
    return MetaSpec(value, GGUFValueType.UINT32)


def _f32(value: float) -> MetaSpec:
    return MetaSpec(value, GGUFValueType.FLOAT32)


def _bool(value: bool) -> MetaSpec:
    return MetaSpec(value, GGUFValueType.BOOL)


def _str(value: str) -> MetaSpec:
    return MetaSpec(value, GGUFValueType.STRING)


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """The tokens, scores and token types of the ASCII-only SentencePiece vocabulary."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    for byte in [0x0A, *range(0x20, 0x7F)]:
        tokens.append(f"<0x{byte:02X}>")
        types.append(TokenType.BYTE)
    pieces: dict[str, None] = {_SPACE: None}
    # Every prefix of "▁word" too, so SentencePiece's pairwise merges can reach the whole word.
    for word in _WORDS:
        for end in range(1, len(word) + 1):
            pieces[_SPACE + word[:end]] = None
    for a in _LETTERS:
        pieces[a] = None
    for a in _LETTERS:
        for b in _LETTERS:
            pieces[a + b] = None
    room = N_VOCAB - len(tokens)
    chosen = list(pieces)[:room]
    tokens += chosen
    types += [TokenType.NORMAL] * len(chosen)
    # Control and byte tokens score 0 as in LLaMA's vocabulary; earlier pieces merge first.
    scores = [0.0] * (N_VOCAB - len(chosen)) + [-float(i) for i in range(len(chosen))]
    assert len(tokens) == len(set(tokens)) == N_VOCAB
    return tokens, scores, [int(t) for t in types]


def _common_metadata(arch: str, n_layer: int) -> dict[str, MetaSpec]:
    tokens, scores, types = vocabulary()
    a = arch + "."
    return {
        "general.architecture": _str(arch),
        "general.name": _str(f"tiny-{arch}"),
        "general.file_type": _u32(LlamaFileType.MOSTLY_Q8_0),
        "general.quantization_version": _u32(2),
        a + "context_length": _u32(CONTEXT_LENGTH),
        a + "embedding_length": _u32(N_EMBD),
        a + "block_count": _u32(n_layer),
        a + "feed_forward_length": _u32(N_FF),
        a + "rope.freq_base": _f32(10000.0),
        a + "attention.layer_norm_rms_epsilon": _f32(1e-6),
        a + "expert_count": _u32(N_EXPERT),
        a + "expert_used_count": _u32(N_EXPERT_USED),
        a + "expert_feed_forward_length": _u32(N_FF_EXP),
        "tokenizer.ggml.model": _str("llama"),
        "tokenizer.ggml.tokens": MetaSpec(tokens, GGUFValueType.ARRAY, GGUFValueType.STRING),
        "tokenizer.ggml.scores": MetaSpec(scores, GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
        "tokenizer.ggml.token_type": MetaSpec(types, GGUFValueType.ARRAY, GGUFValueType.INT32),
        "tokenizer.ggml.unknown_token_id": _u32(0),
        "tokenizer.ggml.bos_token_id": _u32(1),
        "tokenizer.ggml.eos_token_id": _u32(2),
        "tokenizer.ggml.add_bos_token": _bool(True),
        "tokenizer.ggml.add_eos_token": _bool(False),
    }


def _vec(name: str, n: int) -> TensorSpec:
    return TensorSpec(name, (n,), F32)


def _mat(name: str, ne0: int, ne1: int, ggml_type: GGMLQuantizationType = F16) -> TensorSpec:
    return TensorSpec(name, (ne0, ne1), ggml_type)


def _moe(p: str, n_shared: int) -> list[TensorSpec]:
    out = [
        _mat(p + "ffn_gate_inp.weight", N_EMBD, N_EXPERT, F32),
        TensorSpec(p + "ffn_gate_exps.weight", (N_EMBD, N_FF_EXP, N_EXPERT), Q8_0),
        TensorSpec(p + "ffn_up_exps.weight", (N_EMBD, N_FF_EXP, N_EXPERT), Q8_0),
        TensorSpec(p + "ffn_down_exps.weight", (N_FF_EXP, N_EMBD, N_EXPERT), Q8_0),
    ]
    if n_shared:
        out.insert(1, _vec(p + "exp_probs_b.bias", N_EXPERT))
        width = N_FF_EXP * n_shared
        out += [
            _mat(p + "ffn_gate_shexp.weight", N_EMBD, width),
            _mat(p + "ffn_up_shexp.weight", N_EMBD, width),
            _mat(p + "ffn_down_shexp.weight", width, N_EMBD),
        ]
    return out


def _dense(p: str) -> list[TensorSpec]:
    return [
        _mat(p + "ffn_gate.weight", N_EMBD, N_FF),
        _mat(p + "ffn_up.weight", N_EMBD, N_FF),
        _mat(p + "ffn_down.weight", N_FF, N_EMBD),
    ]


def _qwen3moe(n_layer: int) -> tuple[dict[str, MetaSpec], list[TensorSpec], int]:
    n_head, n_head_kv, head = 4, 2, 64
    meta = _common_metadata("qwen3moe", n_layer)
    meta |= {
        "qwen3moe.attention.head_count": _u32(n_head),
        "qwen3moe.attention.head_count_kv": _u32(n_head_kv),
        "qwen3moe.attention.key_length": _u32(head),
        "qwen3moe.attention.value_length": _u32(head),
        "qwen3moe.rope.dimension_count": _u32(head),
    }
    tensors = []
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors += [
            _vec(p + "attn_norm.weight", N_EMBD),
            _mat(p + "attn_q.weight", N_EMBD, n_head * head),
            _mat(p + "attn_k.weight", N_EMBD, n_head_kv * head),
            _mat(p + "attn_v.weight", N_EMBD, n_head_kv * head),
            _mat(p + "attn_output.weight", n_head * head, N_EMBD),
            _vec(p + "attn_q_norm.weight", head),
            _vec(p + "attn_k_norm.weight", head),
            _vec(p + "ffn_norm.weight", N_EMBD),
            *_moe(p, n_shared=0),
        ]
    return meta, tensors, 0


def _deepseek2(n_layer: int) -> tuple[dict[str, MetaSpec], list[TensorSpec], int]:
    if n_layer < 2:
        raise ValueError("a tiny deepseek2 needs 2 layers or more: one dense, then MoE layers")
    if n_layer in (26, 27):
        # Both engines take a 26/27-layer deepseek2 for DeepSeek-V2-Lite, which has no q_a/q_b.
        raise ValueError("a deepseek2 of 26 or 27 layers loads as V2-Lite; choose another n_layer")
    n_head, qk_nope, qk_rope, v_head = 2, 128, 64, 128
    q_lora, kv_lora = 64, 512
    meta = _common_metadata("deepseek2", n_layer)
    meta |= {
        "deepseek2.leading_dense_block_count": _u32(1),
        "deepseek2.attention.head_count": _u32(n_head),
        "deepseek2.attention.head_count_kv": _u32(n_head),
        "deepseek2.attention.key_length": _u32(qk_nope + qk_rope),
        "deepseek2.attention.value_length": _u32(v_head),
        "deepseek2.attention.q_lora_rank": _u32(q_lora),
        "deepseek2.attention.kv_lora_rank": _u32(kv_lora),
        "deepseek2.rope.dimension_count": _u32(qk_rope),
        "deepseek2.expert_shared_count": _u32(1),
        "deepseek2.expert_weights_scale": _f32(2.5),
        "deepseek2.expert_weights_norm": _bool(True),
        "deepseek2.expert_gating_func": _u32(2),  # sigmoid, as DeepSeek-V3
    }
    tensors = []
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors += [
            _vec(p + "attn_norm.weight", N_EMBD),
            _vec(p + "attn_q_a_norm.weight", q_lora),
            _vec(p + "attn_kv_a_norm.weight", kv_lora),
            _mat(p + "attn_q_a.weight", N_EMBD, q_lora),
            _mat(p + "attn_q_b.weight", q_lora, n_head * (qk_nope + qk_rope)),
            _mat(p + "attn_kv_a_mqa.weight", N_EMBD, kv_lora + qk_rope),
            _mat(p + "attn_kv_b.weight", kv_lora, n_head * (qk_nope + v_head)),
            _mat(p + "attn_output.weight", n_head * v_head, N_EMBD),
            _vec(p + "ffn_norm.weight", N_EMBD),
            *(_dense(p) if i == 0 else _moe(p, n_shared=1)),
        ]
    return meta, tensors, 0


def _glm4moe(n_layer: int) -> tuple[dict[str, MetaSpec], list[TensorSpec], int]:
    if n_layer < 3:
        raise ValueError("a tiny glm4moe needs 3 layers or more: dense, MoE, then the nextn block")
    n_head, n_head_kv, head = 4, 2, 64
    nextn = 1
    meta = _common_metadata("glm4moe", n_layer)
    meta |= {
        "glm4moe.leading_dense_block_count": _u32(1),
        "glm4moe.attention.head_count": _u32(n_head),
        "glm4moe.attention.head_count_kv": _u32(n_head_kv),
        "glm4moe.attention.key_length": _u32(head),
        "glm4moe.attention.value_length": _u32(head),
        "glm4moe.rope.dimension_count": _u32(head // 2),  # GLM rotates half of each head
        "glm4moe.expert_shared_count": _u32(1),
        "glm4moe.expert_weights_scale": _f32(1.0),
        "glm4moe.expert_weights_norm": _bool(True),
        "glm4moe.expert_gating_func": _u32(2),
        "glm4moe.nextn_predict_layers": _u32(nextn),
    }
    tensors = []
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors += [
            _vec(p + "attn_norm.weight", N_EMBD),
            _mat(p + "attn_q.weight", N_EMBD, n_head * head),
            _vec(p + "attn_q.bias", n_head * head),
            _mat(p + "attn_k.weight", N_EMBD, n_head_kv * head),
            _vec(p + "attn_k.bias", n_head_kv * head),
            _mat(p + "attn_v.weight", N_EMBD, n_head_kv * head),
            _vec(p + "attn_v.bias", n_head_kv * head),
            _mat(p + "attn_output.weight", n_head * head, N_EMBD),
            _vec(p + "attn_q_norm.weight", head),
            _vec(p + "attn_k_norm.weight", head),
            _vec(p + "post_attention_norm.weight", N_EMBD),
            *(_dense(p) if i == 0 else _moe(p, n_shared=1)),
        ]
        if i >= n_layer - nextn:
            tensors += [
                _mat(p + "nextn.eh_proj.weight", 2 * N_EMBD, N_EMBD),
                _mat(p + "nextn.embed_tokens.weight", N_EMBD, N_VOCAB),
                _vec(p + "nextn.enorm.weight", N_EMBD),
                _vec(p + "nextn.hnorm.weight", N_EMBD),
                _mat(p + "nextn.shared_head_head.weight", N_EMBD, N_VOCAB),
                _vec(p + "nextn.shared_head_norm.weight", N_EMBD),
            ]
    return meta, tensors, nextn


def _gpt_oss(n_layer: int) -> tuple[dict[str, MetaSpec], list[TensorSpec], int]:
    n_head, n_head_kv, head = 4, 2, 64
    meta = _common_metadata("gpt-oss", n_layer)
    meta |= {
        "gpt-oss.attention.head_count": _u32(n_head),
        "gpt-oss.attention.head_count_kv": _u32(n_head_kv),
        "gpt-oss.attention.key_length": _u32(head),
        "gpt-oss.attention.value_length": _u32(head),
        "gpt-oss.rope.dimension_count": _u32(head),
        "gpt-oss.attention.sliding_window": _u32(128),
    }
    tensors = []
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors += [
            _vec(p + "attn_norm.weight", N_EMBD),
            _mat(p + "attn_q.weight", N_EMBD, n_head * head),
            _vec(p + "attn_q.bias", n_head * head),
            _mat(p + "attn_k.weight", N_EMBD, n_head_kv * head),
            _vec(p + "attn_k.bias", n_head_kv * head),
            _mat(p + "attn_v.weight", N_EMBD, n_head_kv * head),
            _vec(p + "attn_v.bias", n_head_kv * head),
            _mat(p + "attn_output.weight", n_head * head, N_EMBD),
            _vec(p + "attn_output.bias", N_EMBD),
            _vec(p + "attn_sinks.weight", n_head),
            _vec(p + "post_attention_norm.weight", N_EMBD),
            _mat(p + "ffn_gate_inp.weight", N_EMBD, N_EXPERT, F32),
            _vec(p + "ffn_gate_inp.bias", N_EXPERT),
            TensorSpec(p + "ffn_gate_exps.weight", (N_EMBD, N_FF_EXP, N_EXPERT), Q8_0),
            TensorSpec(p + "ffn_gate_exps.bias", (N_FF_EXP, N_EXPERT), F32),
            TensorSpec(p + "ffn_up_exps.weight", (N_EMBD, N_FF_EXP, N_EXPERT), Q8_0),
            TensorSpec(p + "ffn_up_exps.bias", (N_FF_EXP, N_EXPERT), F32),
            TensorSpec(p + "ffn_down_exps.weight", (N_FF_EXP, N_EMBD, N_EXPERT), Q8_0),
            TensorSpec(p + "ffn_down_exps.bias", (N_EMBD, N_EXPERT), F32),
        ]
    return meta, tensors, 0


_BUILDERS = {
    "qwen3moe": _qwen3moe,
    "deepseek2": _deepseek2,
    "glm4moe": _glm4moe,
    "gpt-oss": _gpt_oss,
}


def tiny_model_plan(arch: str = "qwen3moe", *, n_layer: int = 4) -> TinyModelPlan:
    """The metadata and tensor table of a tiny ``arch`` model (see the module docstring)."""
    try:
        build = _BUILDERS[arch]
    except KeyError:
        raise ValueError(f"no tiny model for {arch!r}; choose one of {ARCHITECTURES}") from None
    meta, layers, nextn = build(n_layer)
    tensors = [
        _mat("token_embd.weight", N_EMBD, N_VOCAB),
        *layers,
        _vec("output_norm.weight", N_EMBD),
        _mat("output.weight", N_EMBD, N_VOCAB),
    ]
    return TinyModelPlan(arch, n_layer, nextn, meta, tuple(tensors))


def _weights(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    """Seeded data for one tensor, in numpy's row-major shape (ggml's reversed)."""
    shape = tuple(reversed(spec.shape))
    if spec.name.endswith("norm.weight"):
        return np.ones(shape, dtype=np.float32)
    if spec.name.endswith(".bias"):
        return np.zeros(shape, dtype=np.float32)
    # Scaled by fan-in so activations stay near unit size through every layer.
    data = rng.standard_normal(shape, dtype=np.float32) / np.float32(math.sqrt(spec.shape[0]))
    if spec.ggml_type == F16:
        return data.astype(np.float16)
    if spec.ggml_type == Q8_0:
        return quants.quantize(data, Q8_0)
    return data


def _write(plan: TinyModelPlan, path: Path, seed: int, split_max_tensors: int) -> None:
    writer = GGUFWriter(path, plan.arch, split_max_tensors=split_max_tensors)
    try:
        for key, meta in plan.metadata.items():
            if key != "general.architecture":  # GGUFWriter writes it first by itself
                writer.add_key_value(key, meta.value, meta.vtype, meta.sub_type)
        rng = np.random.default_rng(seed)
        for spec in plan.tensors:
            data = _weights(spec, rng)
            raw_dtype = spec.ggml_type if spec.ggml_type == Q8_0 else None
            writer.add_tensor(spec.name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def write_tiny_model(
    path: str | Path, arch: str = "qwen3moe", *, n_layer: int = 4, seed: int = 0
) -> Path:
    """Write a tiny real ``arch`` model to ``path``; the same arguments give the same bytes.

    Args:
        path: The ``.gguf`` file to create (its folder must exist).
        arch: One of :data:`ARCHITECTURES`.
        n_layer: ``block_count``; for glm4moe the last block is the nextn (MTP) block.
        seed: Seed of the random weights.

    Returns:
        ``path`` as a :class:`Path`.
    """
    path = Path(path)
    _write(tiny_model_plan(arch, n_layer=n_layer), path, seed, split_max_tensors=0)
    return path


def shard_paths(path: str | Path, n_shards: int) -> list[Path]:
    """The shard names ``gguf-split`` gives ``<stem>.gguf`` split into ``n_shards`` files."""
    path = Path(path)
    return [
        path.with_name(f"{path.stem}-{i:05d}-of-{n_shards:05d}.gguf")
        for i in range(1, n_shards + 1)
    ]


def write_tiny_split(
    path: str | Path,
    arch: str = "qwen3moe",
    *,
    n_shards: int = 3,
    n_layer: int = 4,
    seed: int = 0,
) -> list[Path]:
    """Write a tiny model as ``n_shards`` files the way ``gguf-split --split-max-tensors`` does.

    The tensors and their data are those :func:`write_tiny_model` writes with the same arguments.

    Args:
        path: ``<folder>/<stem>.gguf``; the shards are ``<stem>-00001-of-0000N.gguf`` beside it.

    Returns:
        The shard paths, first shard (the one to pass to ``-m``) first.
    """
    plan = tiny_model_plan(arch, n_layer=n_layer)
    per_shard = math.ceil(plan.n_tensors / n_shards)
    if n_shards < 2 or math.ceil(plan.n_tensors / per_shard) != n_shards:
        raise ValueError(
            f"{plan.n_tensors} tensors cannot be split evenly into {n_shards} shards; "
            "choose another n_shards"
        )
    _write(plan, Path(path), seed, split_max_tensors=per_shard)
    return shard_paths(path, n_shards)
