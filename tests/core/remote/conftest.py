"""A stand-in Hugging Face Hub on 127.0.0.1 serving sparse DeepSeek-V3 quants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moe_studio.core.remote.cache import HeaderCache
from tests.support.hf_server import HubServer
from tests.support.sparse import write_catalog_sparse, write_quant_repo

REPO = "org/DeepSeek-V3-GGUF"


@pytest.fixture(scope="session")
def quant_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Path in the repository → sparse header-only shard, for four DeepSeek-V3 quants."""
    return write_quant_repo(tmp_path_factory.mktemp("hub-files"))


@pytest.fixture(scope="session")
def tokenized_shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """DeepSeek-V3 Q4_K_M with a tokenizer of the published size (a 5 MB first header)."""
    return write_catalog_sparse("deepseek-v3", tmp_path_factory.mktemp("ds-tokenized"))


@pytest.fixture
def hub(
    quant_files: dict[str, Path],
    tokenized_shards: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[HubServer]:
    with HubServer() as server:
        server.add_repo(REPO, quant_files)
        server.add_repo("org/tokenized", {f"Q4_K_M/{p.name}": p for p in tokenized_shards})
        server.add_plain({p.name: p for p in tokenized_shards})
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # nothing cached yet
        yield server


@pytest.fixture
def cache(tmp_path: Path) -> HeaderCache:
    return HeaderCache(tmp_path / "header-cache")
