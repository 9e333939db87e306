"""``moe-studio inspect MODEL``: a model's tensor map, sizes, hyperparameters and types."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from moe_studio.core.cli.parsing import SubParsers
from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, TensorGroup
from moe_studio.core.units import GiB, format_bytes, format_params


def layout_json(layout: ModelLayout) -> dict[str, object]:
    """The ``inspect --json`` object (also the tensor list other commands print)."""
    hp = layout.hparams
    return {
        "source": layout.source,
        "name": layout.name,
        "architecture": layout.architecture,
        "n_layers": hp.n_layer,
        "total_bytes": layout.total_bytes,
        "total_params": layout.total_params,
        "file_bytes": layout.file_bytes,
        "shards": list(layout.shard_paths),
        "hyperparameters": {
            "n_layer": hp.n_layer,
            "n_layer_kv": hp.n_layer_kv,
            "n_embd": hp.n_embd,
            "head_count": list(hp.head_count),
            "head_count_kv": list(hp.head_count_kv),
            "key_length": hp.key_length,
            "value_length": hp.value_length,
            "key_length_mla": hp.key_length_mla,
            "value_length_mla": hp.value_length_mla,
            "kv_lora_rank": hp.kv_lora_rank,
            "q_lora_rank": hp.q_lora_rank,
            "n_rot": hp.n_rot,
            "n_expert": hp.n_expert,
            "n_expert_used": hp.n_expert_used,
            "n_expert_shared": hp.n_expert_shared,
            "n_ff_exp": hp.n_ff_exp,
            "n_ff": list(hp.n_ff),
            "leading_dense": hp.leading_dense,
            "nextn_layers": hp.nextn_layers,
            "interleave_moe_step": hp.interleave_moe_step,
            "sliding_window": hp.sliding_window,
            "swa_layers": [i for i, s in enumerate(hp.swa_layers) if s],
            "n_ctx_train": hp.n_ctx_train,
            "n_vocab": hp.n_vocab,
        },
        "type_histogram": {
            k: {"tensors": c, "bytes": b} for k, (c, b) in layout.type_histogram.items()
        },
        "warnings": list(layout.warnings),
        "tensors": [
            {
                "name": t.name,
                "type": t.type_name,
                "shape": list(t.shape),
                "bytes": t.nbytes,
                "layer": None if t.layer == GLOBAL_LAYER else t.layer,
                "group": t.group.value,
                "shard": t.shard,
                "loaded": t.loaded,
            }
            for t in layout.tensors
        ],
    }


def _size(n: int) -> str:
    if not n:
        return "·"
    return f"{n / GiB:.2f}G" if n >= GiB // 10 else f"{n / 2**20:.1f}M"


def print_inspect(layout: ModelLayout, out: TextIO) -> None:
    hp = layout.hparams
    w = out.write
    w(f"{layout.name}  ({layout.architecture}, {layout.source})\n")
    w(
        f"{format_params(layout.total_params)} parameters, "
        f"{format_bytes(layout.total_bytes)} loaded"
        f" in {max(1, len(layout.shard_paths))} file(s)\n"
    )
    if layout.file_bytes != layout.total_bytes:
        w(
            f"  ({format_bytes(layout.file_bytes - layout.total_bytes)} "
            "in MTP/nextn blocks not loaded)\n"
        )
    w("\nHyperparameters\n")
    kv = hp.head_count_kv
    rows = [
        (
            "layers",
            f"{hp.n_layer}"
            + (f" ({hp.nextn_layers} nextn, not loaded)" if hp.nextn_layers else ""),
        ),
        ("embedding", hp.n_embd),
        (
            "heads / kv heads",
            f"{max(hp.head_count or (0,))} / {kv[0] if len(set(kv)) == 1 else list(kv)}",
        ),
        ("key / value length", f"{hp.key_length} / {hp.value_length}"),
        ("experts (used, shared)", f"{hp.n_expert} ({hp.n_expert_used}, {hp.n_expert_shared})"),
        ("expert FFN width", hp.n_ff_exp),
        ("leading dense layers", hp.leading_dense),
        ("train context", hp.n_ctx_train),
    ]
    if hp.is_mla:
        rows.append(("MLA kv_lora_rank / rope", f"{hp.kv_lora_rank} / {hp.n_rot}"))
        if hp.key_length_mla:
            rows.append(("MLA key/value length", f"{hp.key_length_mla} / {hp.value_length_mla}"))
    if hp.sliding_window:
        rows.append(("sliding window", f"{hp.sliding_window} on {sum(hp.swa_layers)} layers"))
    for label, value in rows:
        w(f"  {label:<26}{value}\n")
    cols = layout.columns
    w("\nPer layer (bytes per group)\n")
    header = f"  {'layer':>5} " + "".join(f"{g.label[:13]:>14}" for g in cols) + f"{'total':>11}\n"
    w(header)
    for layer in range(hp.n_layer):
        cells = [layout.cell_bytes.get((layer, g), 0) for g in cols]
        mark = "" if layout.layer_loaded(layer) else "  (not loaded)"
        w(
            f"  {layer:>5} "
            + "".join(f"{_size(c):>14}" for c in cells)
            + f"{_size(sum(cells)):>11}{mark}\n"
        )
    for g in (
        TensorGroup.TOKEN_EMBD,
        TensorGroup.OUTPUT_NORM,
        TensorGroup.OUTPUT,
        TensorGroup.OTHER,
    ):
        n = layout.cell_bytes.get((GLOBAL_LAYER, g), 0)
        if n:
            w(f"  {g.label:>18}: {_size(n)}\n")
    w("\nTypes\n")
    for name, (count, nbytes) in layout.type_histogram.items():
        w(f"  {name:<12}{count:>6} tensors  {format_bytes(nbytes):>12}\n")
    for warning in layout.warnings:
        w(f"\nwarning: {warning}\n")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from moe_studio.core.remote.urls import is_remote

    if is_remote(args.model):
        from moe_studio.core.remote.model import open_remote_model

        layout = open_remote_model(args.model)
    else:
        layout = catalog.load(args.model)
    if args.json:
        json.dump(layout_json(layout), sys.stdout, indent=None if args.compact else 1)
        sys.stdout.write("\n")
    else:
        print_inspect(layout, sys.stdout)
    return 0


def add_parser(sub: SubParsers) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a model's tensor map, sizes, hyperparameters and types",
        description="Read a GGUF header (any shard of a split model) or a catalog layout.",
    )
    p.add_argument(
        "model",
        help="path to a .gguf (any shard), catalog:NAME[@RECIPE], hf://OWNER/REPO[@REV]/PATH.gguf "
        "or an https URL of a .gguf (only its headers are read)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--compact", action="store_true", help="with --json: no indentation")
    p.set_defaults(func=_cmd_inspect)
