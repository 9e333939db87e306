"""Classification of tensor names into layers and groups across architectures."""

from __future__ import annotations

import pytest

from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, TensorGroup, classify

G = TensorGroup


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("token_embd.weight", (GLOBAL_LAYER, G.TOKEN_EMBD)),
        ("output.weight", (GLOBAL_LAYER, G.OUTPUT)),
        ("output_norm.weight", (GLOBAL_LAYER, G.OUTPUT_NORM)),
        ("rope_freqs.weight", (GLOBAL_LAYER, G.OTHER)),
        # deepseek2, both flavours
        ("blk.3.attn_kv_b.weight", (3, G.ATTENTION)),
        ("blk.3.attn_k_b.weight", (3, G.ATTENTION)),
        ("blk.3.attn_q_a_norm.weight", (3, G.ATTENTION)),
        ("blk.3.ffn_norm.weight", (3, G.ATTENTION)),
        ("blk.0.ffn_gate.weight", (0, G.FFN)),
        ("blk.3.ffn_gate_inp.weight", (3, G.ROUTER)),
        ("blk.3.exp_probs_b.bias", (3, G.ROUTER)),
        ("blk.3.ffn_up_shexp.weight", (3, G.SHARED)),
        ("blk.3.ffn_gate_exps.weight", (3, G.EXPS_GATE)),
        ("blk.3.ffn_up_exps.weight", (3, G.EXPS_UP)),
        ("blk.3.ffn_down_exps.weight", (3, G.EXPS_DOWN)),
        ("blk.3.ffn_gate_up_exps.weight", (3, G.EXPS_GATE_UP)),
        ("blk.3.ffn_down_exps.scale", (3, G.EXPS_DOWN)),  # ik per-tensor scales
        # gpt-oss biases and sinks
        ("blk.1.ffn_up_exps.bias", (1, G.EXPS_UP)),
        ("blk.1.ffn_gate_inp.bias", (1, G.ROUTER)),
        ("blk.1.attn_sinks.weight", (1, G.ATTENTION)),
        ("blk.1.post_attention_norm.weight", (1, G.ATTENTION)),
        # glm4moe MTP
        ("blk.92.nextn.eh_proj.weight", (92, G.NEXTN)),
        ("blk.92.ffn_up_exps.weight", (92, G.EXPS_UP)),
        # Mixtral legacy per-expert tensors and mainline's chexps
        ("blk.5.ffn_gate.3.weight", (5, G.EXPS_GATE)),
        ("blk.5.ffn_down.7.weight", (5, G.EXPS_DOWN)),
        ("blk.5.ffn_up_chexps.weight", (5, G.EXPS_UP)),
        # a dense llama / qwen2
        ("blk.9.attn_qkv.weight", (9, G.ATTENTION)),
        ("blk.9.ffn_up.weight", (9, G.FFN)),
        ("blk.9.something_new.weight", (9, G.OTHER)),
    ],
)
def test_classify(name: str, expected: tuple[int, TensorGroup]) -> None:
    assert classify(name) == expected


def test_llama4_interleaved_moe_layers() -> None:
    names = []
    for il in range(4):
        names += [f"blk.{il}.attn_q.weight"]
        if (il + 1) % 2 == 0:
            names += [f"blk.{il}.ffn_up_exps.weight", f"blk.{il}.ffn_up_shexp.weight"]
        else:
            names += [f"blk.{il}.ffn_up.weight"]
    groups = {n: classify(n) for n in names}
    assert groups["blk.1.ffn_up_exps.weight"] == (1, G.EXPS_UP)
    assert groups["blk.0.ffn_up.weight"] == (0, G.FFN)


def test_catalog_columns_and_expert_layers() -> None:
    ds = catalog.load_catalog("deepseek-v3")
    assert ds.columns == (
        G.ATTENTION,
        G.FFN,
        G.SHARED,
        G.ROUTER,
        G.EXPS_GATE,
        G.EXPS_UP,
        G.EXPS_DOWN,
    )
    assert ds.expert_layers == tuple(range(3, 61))
    assert (0, G.FFN) in ds.cells and (3, G.FFN) not in ds.cells
    qwen = catalog.load_catalog("qwen3-235b-a22b")
    assert G.SHARED not in qwen.columns and G.FFN not in qwen.columns
    oss = catalog.load_catalog("gpt-oss-120b")
    assert oss.hparams.swa_layers[0] and not oss.hparams.swa_layers[1]
    up = [oss.tensors[i].name for i in oss.cells[(0, G.EXPS_UP)]]
    assert up == ["blk.0.ffn_up_exps.weight", "blk.0.ffn_up_exps.bias"]
