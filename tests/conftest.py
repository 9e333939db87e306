"""Fixtures for every suite: tiny real MoE models, written once per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Tests never touch the user's own settings, caches, profile library or autosaves: platformdirs
# and QSettings follow the XDG variables on Linux.
_SANDBOX = tempfile.mkdtemp(prefix="moe-studio-tests-")
for _var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
    os.environ[_var] = os.path.join(_SANDBOX, _var.lower())

from tests.support.tiny_models import write_tiny_model, write_tiny_split  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_qwen3moe(tiny_models_dir: Path) -> Path:
    """A 4-layer qwen3moe GGUF: 51 tensors, 27 KV pairs."""
    return write_tiny_model(tiny_models_dir / "tiny-qwen3moe.gguf", "qwen3moe")


@pytest.fixture(scope="session")
def tiny_deepseek2(tiny_models_dir: Path) -> Path:
    """A 4-layer ik-flavour deepseek2 GGUF (1 dense layer, shared expert): 66 tensors, 34 KVs."""
    return write_tiny_model(tiny_models_dir / "tiny-deepseek2.gguf", "deepseek2")


@pytest.fixture(scope="session")
def tiny_glm4moe(tiny_models_dir: Path) -> Path:
    """A 4-block glm4moe GGUF whose last block is nextn (unused): 80 tensors, 33 KVs."""
    return write_tiny_model(tiny_models_dir / "tiny-glm4moe.gguf", "glm4moe")


@pytest.fixture(scope="session")
def tiny_gpt_oss(tiny_models_dir: Path) -> Path:
    """A 4-layer gpt-oss GGUF (sliding window 128 on the even layers): 79 tensors, 28 KVs."""
    return write_tiny_model(tiny_models_dir / "tiny-gpt-oss.gguf", "gpt-oss")


@pytest.fixture(scope="session")
def tiny_split(tiny_models_dir: Path) -> Path:
    """The tiny qwen3moe split into 3 shards of 17 tensors; the first shard's path."""
    return write_tiny_split(tiny_models_dir / "tiny-split.gguf", "qwen3moe", n_shards=3)[0]
