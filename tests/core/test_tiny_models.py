"""Our reader on the tiny real MoE fixtures: counts, sizes, groups, splits, ASCII vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_studio.core.gguf.model import ModelLayout, open_model
from moe_studio.core.gguf.reader import read_header, read_model
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, TensorGroup
from tests.support.tiny_models import (
    SPLIT_KEYS,
    tiny_model_plan,
    vocabulary,
    write_tiny_model,
    write_tiny_split,
)

TINY_MODELS = ("tiny_qwen3moe", "tiny_deepseek2", "tiny_glm4moe", "tiny_split")
G = TensorGroup
EXPERTS = {G.EXPS_GATE, G.EXPS_UP, G.EXPS_DOWN}


def _groups(layout: ModelLayout, layer: int) -> set[TensorGroup]:
    return {t.group for t in layout.tensors if t.layer == layer}


@pytest.mark.parametrize("fixture", TINY_MODELS)
def test_reader_opens_fixture_with_its_planned_tables(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(fixture)
    layout = open_model(path)
    plan = tiny_model_plan(layout.architecture, n_layer=layout.n_layer)
    assert layout.warnings == ()
    assert [(t.name, t.shape, t.type_id) for t in layout.tensors] == [
        (s.name, s.shape, int(s.ggml_type)) for s in plan.tensors
    ]
    extra = len(SPLIT_KEYS) if len(layout.shard_paths) > 1 else 0
    assert len(read_header(path).metadata) == plan.n_kv + extra
    assert layout.hparams.n_vocab == 512


@pytest.mark.parametrize("fixture", TINY_MODELS)
def test_sizes_equal_offset_deltas(fixture: str, request: pytest.FixtureRequest) -> None:
    for shard in read_model(request.getfixturevalue(fixture)).shards:
        tensors = sorted(shard.tensors, key=lambda t: t.offset)
        ends = [t.offset for t in tensors[1:]] + [shard.file_size - shard.data_start]
        for t, end in zip(tensors, ends, strict=True):
            padded = -(-t.nbytes // shard.alignment) * shard.alignment
            assert end - t.offset == padded, t.name


def test_qwen3moe_layers_are_all_moe(tiny_qwen3moe: Path) -> None:
    layout = open_model(tiny_qwen3moe)
    for layer in range(4):
        assert _groups(layout, layer) == {G.ATTENTION, G.ROUTER} | EXPERTS
    assert _groups(layout, GLOBAL_LAYER) == {G.TOKEN_EMBD, G.OUTPUT_NORM, G.OUTPUT}
    assert layout.expert_layers == (0, 1, 2, 3)
    hp = layout.hparams
    assert (hp.n_expert, hp.n_expert_used, hp.n_ff_exp, hp.n_expert_shared) == (8, 2, 64, 0)


def test_deepseek2_has_dense_lead_shared_expert_and_mla(tiny_deepseek2: Path) -> None:
    layout = open_model(tiny_deepseek2)
    assert _groups(layout, 0) == {G.ATTENTION, G.FFN}
    for layer in (1, 2, 3):
        assert _groups(layout, layer) == {G.ATTENTION, G.SHARED, G.ROUTER} | EXPERTS
    assert layout.expert_layers == (1, 2, 3)
    assert layout.has_attn_kv_b
    assert layout.tensors[layout.index["blk.1.exp_probs_b.bias"]].group is G.ROUTER
    hp = layout.hparams
    assert (hp.kv_lora_rank, hp.q_lora_rank, hp.n_rot) == (512, 64, 64)
    assert (hp.key_length, hp.value_length, hp.head_count_kv) == (192, 128, (2, 2, 2, 2))
    assert (hp.leading_dense, hp.n_expert_shared) == (1, 1)


def test_glm4moe_nextn_block_is_not_loaded(tiny_glm4moe: Path) -> None:
    layout = open_model(tiny_glm4moe)
    plan = tiny_model_plan("glm4moe")
    assert _groups(layout, 0) == {G.ATTENTION, G.FFN}
    for layer in (1, 2):
        assert _groups(layout, layer) == {G.ATTENTION, G.SHARED, G.ROUTER} | EXPERTS
    assert _groups(layout, 3) == {G.ATTENTION, G.SHARED, G.ROUTER, G.NEXTN} | EXPERTS
    unloaded = [t.name for t in layout.tensors if not t.loaded]
    assert unloaded == list(plan.unused_tensors)
    assert all(t.layer == 3 for t in layout.tensors if not t.loaded)
    assert sum(1 for t in layout.tensors if t.group is G.NEXTN) == 6
    assert layout.total_bytes == layout.file_bytes - sum(
        t.nbytes for t in layout.tensors if not t.loaded
    )
    assert layout.hparams.nextn_layers == 1
    assert layout.hparams.n_layer_kv == 3


def test_split_is_the_unsplit_model_in_gguf_split_layout(
    tiny_split: Path, tiny_qwen3moe: Path
) -> None:
    model = read_model(tiny_split)
    assert [Path(s.path).name for s in model.shards] == [
        f"tiny-split-0000{i}-of-00003.gguf" for i in (1, 2, 3)
    ]
    for number, shard in enumerate(model.shards):
        assert shard.metadata["split.no"] == number
        assert shard.metadata["split.count"] == 3
        assert shard.metadata["split.tensors.count"] == 51
        assert len(shard.tensors) == 17
        if number:
            assert set(shard.metadata) == set(SPLIT_KEYS)
    unsplit = read_header(tiny_qwen3moe)
    assert model.metadata.keys() - set(SPLIT_KEYS) == unsplit.metadata.keys()
    assert open_model(tiny_split).identity == open_model(tiny_qwen3moe).identity


def test_same_seed_writes_same_bytes(tmp_path: Path) -> None:
    a = write_tiny_model(tmp_path / "a.gguf", "deepseek2", seed=7)
    b = write_tiny_model(tmp_path / "b.gguf", "deepseek2", seed=7)
    c = write_tiny_model(tmp_path / "c.gguf", "deepseek2", seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert a.stat().st_size == c.stat().st_size


def test_split_holds_the_same_tensor_data(tmp_path: Path, tiny_qwen3moe: Path) -> None:
    shards = write_tiny_split(tmp_path / "s.gguf", "qwen3moe", n_shards=3, seed=0)
    whole = read_header(tiny_qwen3moe)
    data = tiny_qwen3moe.read_bytes()
    offsets = {t.name: whole.data_start + t.offset for t in whole.tensors}
    for shard_path in shards:
        shard = read_header(shard_path)
        raw = shard_path.read_bytes()
        for t in shard.tensors:
            start = shard.data_start + t.offset
            assert (
                raw[start : start + t.nbytes] == data[offsets[t.name] : offsets[t.name] + t.nbytes]
            )


def test_bad_requests_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no tiny model"):
        tiny_model_plan("llama")
    with pytest.raises(ValueError, match="V2-Lite"):
        tiny_model_plan("deepseek2", n_layer=27)
    with pytest.raises(ValueError, match="cannot be split evenly"):
        write_tiny_split(tmp_path / "x.gguf", n_shards=50)


def test_every_token_decodes_to_ascii() -> None:
    tokens, scores, types = vocabulary()
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert len(tokens) == len(scores) == len(types) == 512
    for token, kind in zip(tokens, types, strict=True):
        if kind == 6:  # byte token <0xNN>: newline or printable ASCII
            byte = int(token[3:5], 16)
            assert byte == 0x0A or 0x20 <= byte <= 0x7E
        elif kind == 1:  # normal piece: SentencePiece's ▁ becomes a space
            text = token.replace("\u2581", " ")
            assert text.isascii() and text.isprintable()
        else:
            assert kind in (2, 3)  # <unk>, <s>, </s> decode to nothing
