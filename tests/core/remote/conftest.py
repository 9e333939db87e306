"""A stand-in Hugging Face Hub on 127.0.0.1 serving sparse DeepSeek-V3 quants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.writer import write_sparse_layout
from moe_studio.core.remote.cache import HeaderCache
from tests.support.hf_server import HubServer
from tests.support.sparse import write_catalog_sparse

REPO = "org/DeepSeek-V3-GGUF"
# Two quants in folders, two with the quant in the file name at the root (as repos mix them).
IN_FOLDER = ("Q4_K_M", "IQ2_KT")
RECIPES = ("Q4_K_M", "IQ2_KS", "IQ4_KS", "IQ2_KT")


@pytest.fixture(scope="session")
def quant_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Path in the repository → sparse header-only shard, for four DeepSeek-V3 quants."""
    root = tmp_path_factory.mktemp("hub-files")
    files: dict[str, Path] = {}
    for recipe in RECIPES:
        layout = catalog.load_catalog(f"catalog:deepseek-v3@{recipe}")
        for path in write_sparse_layout(layout, root / recipe, f"DeepSeek-V3-{recipe}"):
            files[(f"{recipe}/" if recipe in IN_FOLDER else "") + path.name] = path
    return files


@pytest.fixture(scope="session")
def tokenized_shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """DeepSeek-V3 Q4_K_M with a tokenizer of the published size (a 5 MB first header)."""
    return write_catalog_sparse("deepseek-v3", tmp_path_factory.mktemp("ds-tokenized"))


@pytest.fixture
def hub(
    quant_files: dict[str, Path], tokenized_shards: list[Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[HubServer]:
    with HubServer() as server:
        server.add_repo(REPO, quant_files)
        server.add_repo("org/tokenized", {f"Q4_K_M/{p.name}": p for p in tokenized_shards})
        server.add_plain({p.name: p for p in tokenized_shards})
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        yield server


@pytest.fixture
def cache(tmp_path: Path) -> HeaderCache:
    return HeaderCache(tmp_path / "header-cache")
