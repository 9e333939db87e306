"""Fixtures for core tests: sparse full-size header-only files of the catalog layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.sparse import write_catalog_sparse


@pytest.fixture(scope="session")
def deepseek_sparse(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """DeepSeek-V3 Q4_K_M as 9 sparse shards (≈377 GiB apparent, a few MB on disk)."""
    return write_catalog_sparse("deepseek-v3", tmp_path_factory.mktemp("deepseek-v3"))
