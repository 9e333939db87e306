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


def write_quant_repo(
    folder: Path,
    model: str = "deepseek-v3",
    recipes: tuple[str, ...] = ("Q4_K_M", "IQ2_KS", "IQ4_KS", "IQ2_KT"),
    in_folder: tuple[str, ...] = ("Q4_K_M", "IQ2_KT"),
) -> dict[str, Path]:
    """A Hub repository of several quants of ``model`` (no tokenizer): path in repo → shard.

    Quants in ``in_folder`` live in a folder named after them (``Q4_K_M/…-00001-of-00009.gguf``),
    the others at the root with the quant in the file name, as published repositories mix them.
    """
    files: dict[str, Path] = {}
    for recipe in recipes:
        layout = catalog.load_catalog(f"catalog:{model}@{recipe}")
        stem = f"{catalog.parse_name(model)[0].title.split()[0]}-{recipe}"
        for path in write_sparse_layout(layout, folder / recipe, stem):
            files[(f"{recipe}/" if recipe in in_folder else "") + path.name] = path
    return files
