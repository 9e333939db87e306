"""Sparse full-size, header-only GGUF files of catalog layouts (``du`` ≪ ``ls -l``)."""

from __future__ import annotations

from pathlib import Path

from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.writer import synthetic_tokenizer, write_sparse_layout


def write_catalog_sparse(spec: str, folder: Path) -> list[Path]:
    """Write ``catalog:<spec>`` as sparse shards with a tokenizer of the published size."""
    layout = catalog.load_catalog(spec)
    entry, recipe = catalog.parse_name(spec)
    vocab, merges = catalog.tokenizer_size(entry)
    stem = f"{entry.key}-{recipe}"
    return write_sparse_layout(
        layout, folder, stem, extra_metadata=synthetic_tokenizer(vocab, merges)
    )
