"""Built-in model layouts, generated from published hyperparameters (no download needed).

Each entry writes the tensor names and shapes exactly as the converters do (engines.md §2) and
quantizes them with a recipe: a mainline ``Q4_K_M``-style mix for every model (llama.cpp's
``llama_tensor_get_type`` rules, including its fallbacks for rows that are not whole k-quant
blocks) and ik_llama.cpp IQ-type mixes in the style of the published ik quants. Shards are
assigned as ``gguf-split --split-max-size 50G`` would, so a layout and its sparse file agree.

Names: ``catalog:deepseek-v3`` (default recipe) or ``catalog:deepseek-v3@IQ2_KS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moe_studio.core.errors import CatalogError
from moe_studio.core.gguf.ggml_types import GGMLType, type_by_name
from moe_studio.core.gguf.model import (
    ModelLayout,
    classify_tensors,
    hyperparams_from_metadata,
    open_model,
)

PREFIX = "catalog:"
SPLIT_MAX_BYTES = 50 * 1000**3  # gguf-split --split-max-size 50G

Spec = tuple[str, tuple[int, ...]]  # name, shape (ne0 first)
Recipe = Callable[[str, int, int], str]  # (stem, layer, n_layer) -> type name


@dataclass(frozen=True)
class CatalogEntry:
    key: str
    title: str
    architecture: str
    published_params: float
    metadata: dict[str, object]
    recipes: tuple[str, ...]
    build: Callable[[dict[str, object]], list[Spec]]
    # Metadata an ik-quantized file has instead (DeepSeek: ik/legacy MLA flavour with attn_kv_b).
    ik_metadata: dict[str, object] | None = None

    @property
    def default_recipe(self) -> str:
        return self.recipes[0]


def _hp(meta: dict[str, object], key: str) -> int:
    arch = meta["general.architecture"]
    value = meta[f"{arch}.{key}"]
    assert isinstance(value, int)
    return value


def _vec(name: str, n: int) -> Spec:
    return (name, (n,))


def _mat(name: str, *shape: int) -> Spec:
    return (name, shape)


def _moe_ffn(p: str, n_embd: int, n_ff_exp: int, n_expert: int, n_shared_ff: int) -> list[Spec]:
    out = [
        _mat(p + "ffn_gate_inp.weight", n_embd, n_expert),
        _vec(p + "exp_probs_b.bias", n_expert),
        _mat(p + "ffn_gate_exps.weight", n_embd, n_ff_exp, n_expert),
        _mat(p + "ffn_up_exps.weight", n_embd, n_ff_exp, n_expert),
        _mat(p + "ffn_down_exps.weight", n_ff_exp, n_embd, n_expert),
    ]
    if n_shared_ff:
        out += [
            _mat(p + "ffn_gate_shexp.weight", n_embd, n_shared_ff),
            _mat(p + "ffn_up_shexp.weight", n_embd, n_shared_ff),
            _mat(p + "ffn_down_shexp.weight", n_shared_ff, n_embd),
        ]
    return out


def _dense_ffn(p: str, n_embd: int, n_ff: int) -> list[Spec]:
    return [
        _mat(p + "ffn_gate.weight", n_embd, n_ff),
        _mat(p + "ffn_up.weight", n_embd, n_ff),
        _mat(p + "ffn_down.weight", n_ff, n_embd),
    ]


def _globals_head(meta: dict[str, object]) -> list[Spec]:
    return [_mat("token_embd.weight", _hp(meta, "embedding_length"), _hp(meta, "vocab_size"))]


def _globals_tail(meta: dict[str, object]) -> list[Spec]:
    n_embd = _hp(meta, "embedding_length")
    return [
        _vec("output_norm.weight", n_embd),
        _mat("output.weight", n_embd, _hp(meta, "vocab_size")),
    ]


def _build_deepseek2(meta: dict[str, object]) -> list[Spec]:
    # ML-converted files carry key_length_mla and split kv_b into k_b/v_b (engines.md §2.2).
    flavour = "mainline" if "deepseek2.attention.key_length_mla" in meta else "ik"
    n_embd = _hp(meta, "embedding_length")
    n_head = _hp(meta, "attention.head_count")
    q_lora = _hp(meta, "attention.q_lora_rank")
    kv_lora = _hp(meta, "attention.kv_lora_rank")
    rope = _hp(meta, "rope.dimension_count")
    nope, v_head = 128, 128
    n_ff = _hp(meta, "feed_forward_length")
    n_ff_exp = _hp(meta, "expert_feed_forward_length")
    n_expert = _hp(meta, "expert_count")
    shared = _hp(meta, "expert_shared_count") * n_ff_exp
    dense = _hp(meta, "leading_dense_block_count")
    specs = _globals_head(meta)
    for il in range(_hp(meta, "block_count")):
        p = f"blk.{il}."
        specs += [
            _vec(p + "attn_norm.weight", n_embd),
            _vec(p + "attn_q_a_norm.weight", q_lora),
            _vec(p + "attn_kv_a_norm.weight", kv_lora),
            _mat(p + "attn_q_a.weight", n_embd, q_lora),
            _mat(p + "attn_q_b.weight", q_lora, n_head * (nope + rope)),
            _mat(p + "attn_kv_a_mqa.weight", n_embd, kv_lora + rope),
        ]
        if flavour == "ik":
            specs.append(_mat(p + "attn_kv_b.weight", kv_lora, n_head * (nope + v_head)))
        else:
            specs += [
                _mat(p + "attn_k_b.weight", nope, kv_lora, n_head),
                _mat(p + "attn_v_b.weight", kv_lora, v_head, n_head),
            ]
        specs += [
            _mat(p + "attn_output.weight", n_head * v_head, n_embd),
            _vec(p + "ffn_norm.weight", n_embd),
        ]
        if il < dense:
            specs += _dense_ffn(p, n_embd, n_ff)
        else:
            specs += _moe_ffn(p, n_embd, n_ff_exp, n_expert, shared)
    return specs + _globals_tail(meta)


def _build_glm4moe(meta: dict[str, object]) -> list[Spec]:
    n_embd = _hp(meta, "embedding_length")
    n_head = _hp(meta, "attention.head_count")
    n_kv = _hp(meta, "attention.head_count_kv")
    hd = _hp(meta, "attention.key_length")
    n_ff = _hp(meta, "feed_forward_length")
    n_ff_exp = _hp(meta, "expert_feed_forward_length")
    n_expert = _hp(meta, "expert_count")
    shared = _hp(meta, "expert_shared_count") * n_ff_exp
    dense = _hp(meta, "leading_dense_block_count")
    n_layer = _hp(meta, "block_count")
    nextn = _hp(meta, "nextn_predict_layers")
    n_vocab = _hp(meta, "vocab_size")
    specs = _globals_head(meta)
    for il in range(n_layer):
        p = f"blk.{il}."
        specs += [
            _vec(p + "attn_norm.weight", n_embd),
            _mat(p + "attn_q.weight", n_embd, n_head * hd),
            _vec(p + "attn_q.bias", n_head * hd),
            _mat(p + "attn_k.weight", n_embd, n_kv * hd),
            _vec(p + "attn_k.bias", n_kv * hd),
            _mat(p + "attn_v.weight", n_embd, n_kv * hd),
            _vec(p + "attn_v.bias", n_kv * hd),
            _vec(p + "attn_q_norm.weight", hd),
            _vec(p + "attn_k_norm.weight", hd),
            _mat(p + "attn_output.weight", n_head * hd, n_embd),
            _vec(p + "post_attention_norm.weight", n_embd),
        ]
        if il < dense:
            specs += _dense_ffn(p, n_embd, n_ff)
        else:
            specs += _moe_ffn(p, n_embd, n_ff_exp, n_expert, shared)
        if il >= n_layer - nextn:
            specs += [
                _mat(p + "nextn.eh_proj.weight", 2 * n_embd, n_embd),
                _mat(p + "nextn.embed_tokens.weight", n_embd, n_vocab),
                _vec(p + "nextn.enorm.weight", n_embd),
                _vec(p + "nextn.hnorm.weight", n_embd),
                _mat(p + "nextn.shared_head_head.weight", n_embd, n_vocab),
                _vec(p + "nextn.shared_head_norm.weight", n_embd),
            ]
    return specs + _globals_tail(meta)


def _build_qwen3moe(meta: dict[str, object]) -> list[Spec]:
    n_embd = _hp(meta, "embedding_length")
    n_head = _hp(meta, "attention.head_count")
    n_kv = _hp(meta, "attention.head_count_kv")
    hd = _hp(meta, "attention.key_length")
    n_ff_exp = _hp(meta, "expert_feed_forward_length")
    n_expert = _hp(meta, "expert_count")
    specs = _globals_head(meta)
    for il in range(_hp(meta, "block_count")):
        p = f"blk.{il}."
        specs += [
            _vec(p + "attn_norm.weight", n_embd),
            _mat(p + "attn_q.weight", n_embd, n_head * hd),
            _mat(p + "attn_k.weight", n_embd, n_kv * hd),
            _mat(p + "attn_v.weight", n_embd, n_kv * hd),
            _vec(p + "attn_q_norm.weight", hd),
            _vec(p + "attn_k_norm.weight", hd),
            _mat(p + "attn_output.weight", n_head * hd, n_embd),
            _vec(p + "ffn_norm.weight", n_embd),
            _mat(p + "ffn_gate_inp.weight", n_embd, n_expert),
            _mat(p + "ffn_gate_exps.weight", n_embd, n_ff_exp, n_expert),
            _mat(p + "ffn_up_exps.weight", n_embd, n_ff_exp, n_expert),
            _mat(p + "ffn_down_exps.weight", n_ff_exp, n_embd, n_expert),
        ]
    return specs + _globals_tail(meta)


def _build_gpt_oss(meta: dict[str, object]) -> list[Spec]:
    n_embd = _hp(meta, "embedding_length")
    n_head = _hp(meta, "attention.head_count")
    n_kv = _hp(meta, "attention.head_count_kv")
    hd = _hp(meta, "attention.key_length")
    n_ff_exp = _hp(meta, "expert_feed_forward_length")
    n_expert = _hp(meta, "expert_count")
    specs = _globals_head(meta)
    for il in range(_hp(meta, "block_count")):
        p = f"blk.{il}."
        specs += [
            _vec(p + "attn_norm.weight", n_embd),
            _mat(p + "attn_q.weight", n_embd, n_head * hd),
            _vec(p + "attn_q.bias", n_head * hd),
            _mat(p + "attn_k.weight", n_embd, n_kv * hd),
            _vec(p + "attn_k.bias", n_kv * hd),
            _mat(p + "attn_v.weight", n_embd, n_kv * hd),
            _vec(p + "attn_v.bias", n_kv * hd),
            _mat(p + "attn_output.weight", n_head * hd, n_embd),
            _vec(p + "attn_output.bias", n_embd),
            _vec(p + "attn_sinks.weight", n_head),
            _vec(p + "post_attention_norm.weight", n_embd),
            _mat(p + "ffn_gate_inp.weight", n_embd, n_expert),
            _vec(p + "ffn_gate_inp.bias", n_expert),
            _mat(p + "ffn_gate_exps.weight", n_embd, n_ff_exp, n_expert),
            _mat(p + "ffn_gate_exps.bias", n_ff_exp, n_expert),
            _mat(p + "ffn_up_exps.weight", n_embd, n_ff_exp, n_expert),
            _mat(p + "ffn_up_exps.bias", n_ff_exp, n_expert),
            _mat(p + "ffn_down_exps.weight", n_ff_exp, n_embd, n_expert),
            _mat(p + "ffn_down_exps.bias", n_embd, n_expert),
        ]
    return specs + _globals_tail(meta)


# --- recipes -------------------------------------------------------------------------------------


def _use_more_bits(il: int, n_layer: int) -> bool:
    # llama.cpp llama_tensor_get_type: the first and last eighth, and every third layer between.
    return il < n_layer // 8 or il >= 7 * n_layer // 8 or (il - n_layer // 8) % 3 == 2


def _is_f32(stem: str, suffix: str, ndim: int) -> bool:
    return (
        ndim == 1
        or suffix == "bias"
        or stem.endswith("_norm")
        or stem in ("ffn_gate_inp", "exp_probs_b", "attn_sinks")
        or stem.endswith(".enorm")
        or stem.endswith(".hnorm")
    )


def recipe_q4_k_m(stem: str, il: int, n_layer: int) -> str:
    if stem == "token_embd":
        return "q4_K"
    if stem in ("output", "nextn.shared_head_head"):
        return "q6_K"
    if stem in ("attn_v", "attn_kv_b", "attn_v_b"):
        return "q6_K"
    if stem.startswith("ffn_down"):
        return "q6_K" if _use_more_bits(il, n_layer) else "q4_K"
    return "q4_K"


def recipe_mxfp4(stem: str, il: int, n_layer: int) -> str:
    # gpt-oss ships its experts in MXFP4; the rest is kept at 8 bits.
    return "mxfp4" if stem.endswith("_exps") else "q8_0"


def _ik_mix(up_gate: str, down: str, dense: str) -> Recipe:
    def recipe(stem: str, il: int, n_layer: int) -> str:
        if stem == "token_embd":
            return "iq4_k"
        if stem in ("output", "nextn.shared_head_head"):
            return "iq6_k"
        if stem in ("ffn_gate_exps", "ffn_up_exps", "ffn_gate_up_exps"):
            return up_gate
        if stem == "ffn_down_exps":
            return down
        if stem in ("ffn_gate", "ffn_up", "ffn_down"):
            return dense
        return "q8_0"  # attention, shared experts, MTP: small and always active

    return recipe


RECIPES: dict[str, tuple[str, Recipe]] = {
    "Q4_K_M": ("mainline", recipe_q4_k_m),
    "MXFP4": ("mainline", recipe_mxfp4),
    "IQ2_KS": ("ik", _ik_mix("iq2_ks", "iq3_ks", "iq5_ks")),
    "IQ2_KT": ("ik", _ik_mix("iq2_kt", "iq3_kt", "iq4_ks")),
    "IQ3_K": ("ik", _ik_mix("iq3_k", "iq4_ks", "iq6_k")),
    "IQ4_KS": ("ik", _ik_mix("iq4_ks", "iq4_ks", "iq6_k")),
}
# llama.cpp's fallbacks for rows that are not a whole number of 256-element blocks.
_FALLBACK = {
    "q2_K": "q4_0",
    "q3_K": "iq4_nl",
    "q4_K": "q5_0",
    "q5_K": "q5_1",
    "q6_K": "q8_0",
}


def _pick_type(
    name: str, stem: str, suffix: str, shape: tuple[int, ...], recipe: Recipe, il: int, n_layer: int
) -> GGMLType:
    want = "f32" if _is_f32(stem, suffix, len(shape)) else recipe(stem, il, n_layer)
    gtype = type_by_name(want)
    assert gtype is not None, want
    if not gtype.divides(shape[0]):
        gtype = type_by_name(_FALLBACK.get(want, "q8_0")) or gtype
        if not gtype.divides(shape[0]):
            gtype = type_by_name("f16") or gtype
    return gtype


# --- entries -------------------------------------------------------------------------------------


def _deepseek_meta(
    name: str, n_head: int, n_expert: int, dense: int, vocab: int, ctx: int, flavour: str
) -> dict[str, object]:
    """DeepSeek-V3-style metadata as the mainline (ML) or ik/legacy converter writes it."""
    a = "deepseek2"
    meta: dict[str, object] = {
        "general.architecture": a,
        "general.name": name,
        "general.alignment": 32,
        f"{a}.block_count": 61,
        f"{a}.context_length": ctx,
        f"{a}.embedding_length": 7168,
        f"{a}.feed_forward_length": 18432,
        f"{a}.attention.head_count": n_head,
        f"{a}.attention.q_lora_rank": 1536,
        f"{a}.attention.kv_lora_rank": 512,
        f"{a}.rope.dimension_count": 64,
        f"{a}.expert_count": n_expert,
        f"{a}.expert_used_count": 8,
        f"{a}.expert_shared_count": 1,
        f"{a}.expert_feed_forward_length": 2048,
        f"{a}.leading_dense_block_count": dense,
        f"{a}.expert_weights_scale": 2.5,
        f"{a}.expert_weights_norm": True,
        f"{a}.expert_gating_func": 2,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-6,
        f"{a}.rope.freq_base": 10000.0,
        f"{a}.vocab_size": vocab,
    }
    if flavour == "ik":
        meta |= {
            f"{a}.attention.head_count_kv": n_head,
            f"{a}.attention.key_length": 192,
            f"{a}.attention.value_length": 128,
        }
    else:
        meta |= {
            f"{a}.attention.head_count_kv": 1,
            f"{a}.attention.key_length": 576,
            f"{a}.attention.value_length": 512,
            f"{a}.attention.key_length_mla": 192,
            f"{a}.attention.value_length_mla": 128,
        }
    return meta


def _entries() -> dict[str, CatalogEntry]:
    glm = "glm4moe"
    q3 = "qwen3moe"
    oss = "gpt-oss"
    entries = [
        CatalogEntry(
            "deepseek-v3",
            "DeepSeek-V3 671B",
            "deepseek2",
            671e9,
            _deepseek_meta("DeepSeek V3", 128, 256, 3, 129280, 163840, "mainline"),
            ("Q4_K_M", "IQ2_KS", "IQ2_KT", "IQ4_KS"),
            _build_deepseek2,
            _deepseek_meta("DeepSeek V3", 128, 256, 3, 129280, 163840, "ik"),
        ),
        CatalogEntry(
            "kimi-k2",
            "Kimi-K2 1T",
            "deepseek2",
            1.03e12,
            _deepseek_meta("Kimi K2 Instruct", 64, 384, 1, 163840, 131072, "mainline"),
            ("Q4_K_M", "IQ2_KS", "IQ3_K"),
            _build_deepseek2,
            _deepseek_meta("Kimi K2 Instruct", 64, 384, 1, 163840, 131072, "ik"),
        ),
        CatalogEntry(
            "glm-4.6",
            "GLM-4.6 355B",
            glm,
            355e9,
            {
                "general.architecture": glm,
                "general.name": "GLM 4.6",
                "general.alignment": 32,
                f"{glm}.block_count": 93,
                f"{glm}.nextn_predict_layers": 1,
                f"{glm}.context_length": 202752,
                f"{glm}.embedding_length": 5120,
                f"{glm}.feed_forward_length": 12288,
                f"{glm}.attention.head_count": 96,
                f"{glm}.attention.head_count_kv": 8,
                f"{glm}.attention.key_length": 128,
                f"{glm}.attention.value_length": 128,
                f"{glm}.rope.dimension_count": 64,
                f"{glm}.expert_count": 160,
                f"{glm}.expert_used_count": 8,
                f"{glm}.expert_shared_count": 1,
                f"{glm}.expert_feed_forward_length": 1536,
                f"{glm}.leading_dense_block_count": 3,
                f"{glm}.vocab_size": 151552,
            },
            ("Q4_K_M", "IQ3_K", "IQ2_KS"),
            _build_glm4moe,
        ),
        CatalogEntry(
            "qwen3-235b-a22b",
            "Qwen3-235B-A22B",
            q3,
            235e9,
            {
                "general.architecture": q3,
                "general.name": "Qwen3 235B A22B",
                "general.alignment": 32,
                f"{q3}.block_count": 94,
                f"{q3}.context_length": 40960,
                f"{q3}.embedding_length": 4096,
                f"{q3}.feed_forward_length": 12288,
                f"{q3}.attention.head_count": 64,
                f"{q3}.attention.head_count_kv": 4,
                f"{q3}.attention.key_length": 128,
                f"{q3}.attention.value_length": 128,
                f"{q3}.rope.dimension_count": 128,
                f"{q3}.expert_count": 128,
                f"{q3}.expert_used_count": 8,
                f"{q3}.expert_feed_forward_length": 1536,
                f"{q3}.vocab_size": 151936,
            },
            ("Q4_K_M", "IQ3_K", "IQ2_KS"),
            _build_qwen3moe,
        ),
        CatalogEntry(
            "qwen3-30b-a3b",
            "Qwen3-30B-A3B",
            q3,
            30.5e9,
            {
                "general.architecture": q3,
                "general.name": "Qwen3 30B A3B",
                "general.alignment": 32,
                f"{q3}.block_count": 48,
                f"{q3}.context_length": 40960,
                f"{q3}.embedding_length": 2048,
                f"{q3}.feed_forward_length": 6144,
                f"{q3}.attention.head_count": 32,
                f"{q3}.attention.head_count_kv": 4,
                f"{q3}.attention.key_length": 128,
                f"{q3}.attention.value_length": 128,
                f"{q3}.rope.dimension_count": 128,
                f"{q3}.expert_count": 128,
                f"{q3}.expert_used_count": 8,
                f"{q3}.expert_feed_forward_length": 768,
                f"{q3}.vocab_size": 151936,
            },
            ("Q4_K_M", "IQ4_KS"),
            _build_qwen3moe,
        ),
        CatalogEntry(
            "gpt-oss-120b",
            "gpt-oss-120b",
            oss,
            117e9,
            {
                "general.architecture": oss,
                "general.name": "gpt-oss 120b",
                "general.alignment": 32,
                f"{oss}.block_count": 36,
                f"{oss}.context_length": 131072,
                f"{oss}.embedding_length": 2880,
                f"{oss}.feed_forward_length": 2880,
                f"{oss}.attention.head_count": 64,
                f"{oss}.attention.head_count_kv": 8,
                f"{oss}.attention.key_length": 64,
                f"{oss}.attention.value_length": 64,
                f"{oss}.attention.sliding_window": 128,
                f"{oss}.rope.dimension_count": 64,
                f"{oss}.expert_count": 128,
                f"{oss}.expert_used_count": 4,
                f"{oss}.expert_feed_forward_length": 2880,
                f"{oss}.vocab_size": 201088,
            },
            ("MXFP4",),
            _build_gpt_oss,
        ),
    ]
    return {e.key: e for e in entries}


CATALOG: dict[str, CatalogEntry] = _entries()
DEMO = "deepseek-v3@IQ2_KS"


def names() -> list[str]:
    """Every catalog model key."""
    return list(CATALOG)


def parse_name(spec: str) -> tuple[CatalogEntry, str]:
    """Split ``[catalog:]name[@recipe]`` and validate both parts."""
    body = spec.removeprefix(PREFIX)
    key, _, recipe = body.partition("@")
    entry = CATALOG.get(key.lower())
    if entry is None:
        known = ", ".join(CATALOG)
        raise CatalogError(f"There is no built-in model {key!r}; the catalog has: {known}.")
    if not recipe:
        return entry, entry.default_recipe
    for r in entry.recipes:
        if r.lower() == recipe.lower():
            return entry, r
    raise CatalogError(
        f"{entry.title} has no recipe {recipe!r}; choose one of: {', '.join(entry.recipes)}."
    )


def _assign_shards(sizes: list[int], max_bytes: int) -> list[int]:
    shards, shard, used = [], 0, 0
    for size in sizes:
        if used and used + size > max_bytes:
            shard += 1
            used = 0
        shards.append(shard)
        used += size
    return shards


def load_catalog(spec: str) -> ModelLayout:
    """Build the layout of a catalog model (``deepseek-v3`` or ``deepseek-v3@IQ2_KS``).

    Raises:
        CatalogError: unknown model or recipe.
    """
    entry, recipe_name = parse_name(spec)
    engine, recipe = RECIPES[recipe_name]
    meta = dict(entry.ik_metadata if engine == "ik" and entry.ik_metadata else entry.metadata)
    meta["general.file_type_name"] = recipe_name
    n_layer = int(meta[f"{entry.architecture}.block_count"])  # type: ignore[call-overload]
    records: list[tuple[str, tuple[int, ...], int, int]] = []
    for name, shape in entry.build(meta):
        stem, _, suffix = name.rpartition(".")
        layer = -1
        if stem.startswith("blk."):
            _, num, stem = stem.split(".", 2)
            layer = int(num)
        gtype = _pick_type(name, stem, suffix, shape, recipe, layer, n_layer)
        records.append((name, shape, gtype.id, gtype.tensor_bytes(shape)))
    shards = _assign_shards([r[3] for r in records], SPLIT_MAX_BYTES)
    raw = [(n, s, t, b, sh) for (n, s, t, b), sh in zip(records, shards, strict=True)]
    nextn_key = f"{entry.architecture}.nextn_predict_layers"
    nextn = meta.get(nextn_key, 0)
    tensors = classify_tensors(raw, n_layer, nextn if isinstance(nextn, int) else 0)
    return ModelLayout(
        source=f"{PREFIX}{entry.key}@{recipe_name}",
        name=f"{entry.title} {recipe_name}",
        architecture=entry.architecture,
        hparams=hyperparams_from_metadata(meta, tensors),
        tensors=tensors,
        metadata=meta,
        recipe=recipe_name,
    )


def load(spec: str, **kwargs: object) -> ModelLayout:
    """A model by path (any shard) or ``catalog:NAME[@RECIPE]``."""
    if spec.startswith(PREFIX):
        return load_catalog(spec)
    return open_model(Path(spec), **kwargs)  # type: ignore[arg-type]


def tokenizer_size(entry: CatalogEntry) -> tuple[int, int]:
    """Vocabulary and merge counts of the published tokenizer (for realistic sparse headers)."""
    vocab = int(entry.metadata[f"{entry.architecture}.vocab_size"])  # type: ignore[call-overload]
    merges = {"deepseek2": 127741, "glm4moe": 318088, "qwen3moe": 151387, "gpt-oss": 446189}
    return vocab, merges.get(entry.architecture, vocab)
