"""Built-in layouts: published sizes, and agreement with their own sparse files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moe_studio.core.cli.inspect import layout_json
from moe_studio.core.errors import CatalogError
from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.model import open_model
from moe_studio.core.gguf.tensors import TensorGroup

PUBLISHED = {
    "deepseek-v3": 671e9,
    "kimi-k2": 1.03e12,
    "glm-4.6": 355e9,
    "qwen3-235b-a22b": 235e9,
    "qwen3-30b-a3b": 30.5e9,
    "gpt-oss-120b": 117e9,
}


@pytest.mark.parametrize("key", list(PUBLISHED))
def test_loaded_parameters_match_the_published_size(key: str) -> None:
    for recipe in catalog.CATALOG[key].recipes:
        layout = catalog.load_catalog(f"{key}@{recipe}")
        assert abs(layout.total_params / PUBLISHED[key] - 1) < 0.015, (key, recipe)


def test_glm_mtp_block_is_present_but_not_loaded() -> None:
    layout = catalog.load_catalog("glm-4.6")
    nextn = [t for t in layout.tensors if t.layer == 92]
    assert nextn and not any(t.loaded for t in nextn)
    assert any(t.group is TensorGroup.NEXTN for t in nextn)
    assert layout.hparams.n_layer_kv == 92
    assert layout.file_bytes > layout.total_bytes


def test_deepseek_flavours() -> None:
    mainline = catalog.load_catalog("deepseek-v3@Q4_K_M")
    ik = catalog.load_catalog("deepseek-v3@IQ2_KS")
    assert not mainline.has_attn_kv_b and mainline.hparams.key_length_mla == 192
    assert any(t.name == "blk.0.attn_k_b.weight" and len(t.shape) == 3 for t in mainline.tensors)
    assert ik.has_attn_kv_b and ik.hparams.key_length == 192 and ik.hparams.head_count_kv[0] == 128
    types = set(ik.type_histogram)
    assert {"IQ2_KS", "IQ3_KS"} <= types


def test_every_row_is_a_whole_number_of_blocks() -> None:
    from moe_studio.core.gguf.ggml_types import TYPES

    for key, entry in catalog.CATALOG.items():
        for recipe in entry.recipes:
            for t in catalog.load_catalog(f"{key}@{recipe}").tensors:
                assert TYPES[t.type_id].divides(t.shape[0]), (key, recipe, t.name)


def test_unknown_names_are_clear() -> None:
    with pytest.raises(CatalogError, match="deepseek-v3"):
        catalog.load_catalog("deepseek-v4")
    with pytest.raises(CatalogError, match="Q4_K_M"):
        catalog.load_catalog("deepseek-v3@Q9_Z")


def test_sparse_nine_shard_file_equals_the_catalog(deepseek_sparse: list[Path]) -> None:
    assert len(deepseek_sparse) == 9
    assert deepseek_sparse[0].name == "deepseek-v3-Q4_K_M-00001-of-00009.gguf"
    apparent = sum(p.stat().st_size for p in deepseek_sparse)
    on_disk = sum(p.stat().st_blocks * 512 for p in deepseek_sparse)
    assert apparent > 350 * 2**30 and on_disk < apparent / 1000  # du ≪ ls -l
    layout = catalog.load_catalog("deepseek-v3")
    from_file = open_model(deepseek_sparse[4])  # any shard opens the whole model
    assert layout_json(from_file)["tensors"] == layout_json(layout)["tensors"]
    assert from_file.hparams == layout.hparams


def test_inspect_json_of_catalog_and_sparse_file_print_identical_tensor_lists(
    deepseek_sparse: list[Path],
) -> None:
    def run(target: str) -> dict[str, object]:
        out = subprocess.run(
            [sys.executable, "-m", "moe_studio.gui.entry", "inspect", target, "--json"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    a = run("catalog:deepseek-v3")
    b = run(str(deepseek_sparse[0]))
    assert a["tensors"] == b["tensors"]
    for key in ("architecture", "n_layers", "total_bytes", "total_params"):
        assert a[key] == b[key]
