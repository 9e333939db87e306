"""The model as MoE Studio sees it: every tensor with bytes, layer and group, plus hyperparameters.

:class:`ModelLayout` is the one type for a real file (:func:`open_model`) and a built-in catalog
layout (``moe_studio.core.gguf.catalog``); everything downstream (placement, memory, commands)
takes it.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from moe_studio.core.errors import GGUFFormatError
from moe_studio.core.gguf.ggml_types import type_name
from moe_studio.core.gguf.reader import (
    GGUFModel,
    IsCancelled,
    MetaValue,
    Progress,
    SkippedArray,
    read_model,
)
from moe_studio.core.gguf.tensors import (
    GLOBAL_LAYER,
    LAYER_COLUMNS,
    ROUTED_EXPERT_GROUPS,
    TensorGroup,
    classify,
)

Cell = tuple[int, TensorGroup]


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor: what the engine loads and where the tensor map shows it."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    nbytes: int
    shard: int
    layer: int  # GLOBAL_LAYER for token_embd, output, …
    group: TensorGroup
    loaded: bool = True  # False for GLM nextn/MTP blocks the engine skips

    @property
    def type_name(self) -> str:
        return type_name(self.type_id)

    @property
    def n_params(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def cell(self) -> Cell:
        return (self.layer, self.group)


@dataclass(frozen=True, slots=True)
class HyperParams:
    """What later stages need from the metadata (engines.md §2.3), per layer where it varies."""

    n_layer: int
    n_embd: int
    head_count: tuple[int, ...]
    head_count_kv: tuple[int, ...]
    key_length: int
    value_length: int
    key_length_mla: int = 0
    value_length_mla: int = 0
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    n_rot: int = 0
    n_expert: int = 0
    n_expert_used: int = 0
    n_expert_shared: int = 0
    n_ff_exp: int = 0
    n_ff: tuple[int, ...] = ()
    leading_dense: int = 0
    nextn_layers: int = 0
    interleave_moe_step: int = 0
    sliding_window: int = 0
    swa_layers: tuple[bool, ...] = ()
    n_ctx_train: int = 0
    n_vocab: int = 0

    @property
    def n_layer_kv(self) -> int:
        """Layers with a KV cache: GLM's trailing nextn blocks have none unless MTP is on."""
        return self.n_layer - self.nextn_layers

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    def is_swa(self, layer: int) -> bool:
        return bool(self.swa_layers) and layer < len(self.swa_layers) and self.swa_layers[layer]


@dataclass(frozen=True, eq=False)
class ModelLayout:
    """A model's tensors, grouped into the cells of the tensor map."""

    source: str  # path of the first shard, or "catalog:<name>@<recipe>"
    name: str
    architecture: str
    hparams: HyperParams
    tensors: tuple[TensorInfo, ...]
    shard_paths: tuple[str, ...] = ()
    metadata: Mapping[str, MetaValue] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    recipe: str = ""
    duplicate_keys: tuple[str, ...] = ()  # metadata keys stored twice (mainline refuses these)

    @property
    def is_catalog(self) -> bool:
        return self.source.startswith("catalog:")

    @property
    def n_layer(self) -> int:
        return self.hparams.n_layer

    @cached_property
    def index(self) -> dict[str, int]:
        return {t.name: i for i, t in enumerate(self.tensors)}

    @cached_property
    def cells(self) -> dict[Cell, tuple[int, ...]]:
        """Tensor indices per ``(layer, group)`` cell, in file order."""
        out: dict[Cell, list[int]] = {}
        for i, t in enumerate(self.tensors):
            out.setdefault(t.cell, []).append(i)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def columns(self) -> tuple[TensorGroup, ...]:
        """The per-layer groups this model has, in grid order."""
        present = {g for (layer, g) in self.cells if layer != GLOBAL_LAYER}
        return tuple(g for g in LAYER_COLUMNS if g in present)

    @cached_property
    def cell_bytes(self) -> dict[Cell, int]:
        return {cell: sum(self.tensors[i].nbytes for i in idx) for cell, idx in self.cells.items()}

    @cached_property
    def expert_layers(self) -> tuple[int, ...]:
        """Layers that have routed experts (MoE layers), ascending."""
        return tuple(sorted({t.layer for t in self.tensors if t.group in ROUTED_EXPERT_GROUPS}))

    @property
    def is_moe(self) -> bool:
        return bool(self.expert_layers)

    @cached_property
    def total_bytes(self) -> int:
        """Bytes of every tensor the engine loads (GLM nextn blocks excluded)."""
        return sum(t.nbytes for t in self.tensors if t.loaded)

    @cached_property
    def total_params(self) -> int:
        return sum(t.n_params for t in self.tensors if t.loaded)

    @cached_property
    def file_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def layer_loaded(self, layer: int) -> bool:
        return layer < self.hparams.n_layer_kv or layer == GLOBAL_LAYER

    @cached_property
    def attn_kv_b_indices(self) -> tuple[int, ...]:
        """Indices of the DeepSeek ``attn_kv_b`` tensors (ik/legacy flavour)."""
        return tuple(i for i, t in enumerate(self.tensors) if t.name.endswith("attn_kv_b.weight"))

    @property
    def has_attn_kv_b(self) -> bool:
        """DeepSeek flavour: ``attn_kv_b`` (ik/legacy) rather than mainline's k_b/v_b split."""
        return bool(self.attn_kv_b_indices)

    @cached_property
    def type_histogram(self) -> dict[str, tuple[int, int]]:
        """Type name → (tensor count, bytes), largest first."""
        counts: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        for t in self.tensors:
            counts[t.type_name] += 1
            sizes[t.type_name] += t.nbytes
        return {k: (counts[k], sizes[k]) for k, _ in sizes.most_common()}

    @cached_property
    def identity(self) -> str:
        """A hash of the tensor table (names, types, shapes): changes when a file is requantized."""
        h = hashlib.sha256()
        for t in self.tensors:
            h.update(f"{t.name}:{t.type_id}:{','.join(map(str, t.shape))};".encode())
        return h.hexdigest()[:16]

    def qkv_types_match(self) -> bool:
        """Whether Q, K and V share a type in every layer (ik ``--merge-qkv`` needs it)."""
        by_layer: dict[int, set[int]] = {}
        for t in self.tensors:
            stem = t.name.rsplit(".", 1)[0]
            if t.name.endswith(".weight") and stem.endswith((".attn_q", ".attn_k", ".attn_v")):
                by_layer.setdefault(t.layer, set()).add(t.type_id)
        return bool(by_layer) and all(len(types) == 1 for types in by_layer.values())


# Largest value each hyperparameter may take: generous next to any real model (DeepSeek-V3 has 61
# layers, 256 experts, n_embd 7168), small enough that one flipped bit cannot make us allocate
# one entry per claimed layer. Keys are relative to ``<architecture>.``.
MAX_LAYERS = 4096
_HPARAM_LIMITS: dict[str, int] = {
    "block_count": MAX_LAYERS,
    "embedding_length": 1 << 20,
    "feed_forward_length": 1 << 22,
    "attention.head_count": 1 << 16,
    "attention.head_count_kv": 1 << 16,
    "attention.key_length": 1 << 16,
    "attention.value_length": 1 << 16,
    "attention.key_length_mla": 1 << 16,
    "attention.value_length_mla": 1 << 16,
    "attention.kv_lora_rank": 1 << 20,
    "attention.q_lora_rank": 1 << 20,
    "attention.sliding_window": 1 << 32,
    "rope.dimension_count": 1 << 16,
    "expert_count": 1 << 16,
    "expert_used_count": 1 << 16,
    "expert_shared_count": 1 << 16,
    "expert_feed_forward_length": 1 << 22,
    "leading_dense_block_count": MAX_LAYERS,
    "nextn_predict_layers": MAX_LAYERS,
    "interleave_moe_layer_step": MAX_LAYERS,
    "context_length": 1 << 32,
    "vocab_size": 1 << 32,
}


def check_hyperparameters(model: GGUFModel, arch: str) -> None:
    """Refuse hyperparameters no engine would accept before anything is sized by them.

    Raises:
        GGUFFormatError: a value that is not a finite number in the key's range (names the file,
            the byte offset of the key and the field).
    """
    head = model.first
    for key, limit in _HPARAM_LIMITS.items():
        name = f"{arch}.{key}"
        value = head.metadata.get(name)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                bad = f"is {v}"
            elif v < 0 or v > limit:
                bad = f"is {v}, outside 0..{limit}"
            else:
                continue
            raise GGUFFormatError(
                head.path,
                f"field {name} {bad}; no engine loads such a model, the header is corrupt",
                offset=head.offset_of(name),
            )


def _finite(v: object) -> bool:
    return isinstance(v, int) or (isinstance(v, float) and math.isfinite(v))


def _as_tuple(value: MetaValue, n: int, default: int) -> tuple[int, ...]:
    if isinstance(value, list):
        vals = [int(v) for v in value if isinstance(v, int | float) and _finite(v)]
        if len(vals) >= n:
            return tuple(vals[:n])
        return tuple(vals + [vals[-1] if vals else default] * (n - len(vals)))
    if isinstance(value, int | float) and not isinstance(value, bool) and _finite(value):
        return (int(value),) * n
    return (default,) * n


def _as_int(value: MetaValue, default: int = 0) -> int:
    if isinstance(value, list):
        ints = [int(v) for v in value if isinstance(v, int | float) and _finite(v)]
        return max(ints) if ints else default
    if isinstance(value, int | float) and not isinstance(value, bool) and _finite(value):
        return int(value)
    return default


def hyperparams_from_metadata(
    metadata: Mapping[str, MetaValue], tensors: Sequence[TensorInfo] = ()
) -> HyperParams:
    """Read the hyperparameters of ``general.architecture`` from GGUF metadata."""
    arch = str(metadata.get("general.architecture", ""))

    def get(key: str) -> MetaValue:
        return metadata.get(f"{arch}.{key}")

    layers_seen = max((t.layer for t in tensors), default=-1) + 1
    n_layer = _as_int(get("block_count"), layers_seen)
    n_embd = _as_int(get("embedding_length"))
    head_count = _as_tuple(get("attention.head_count"), n_layer, 0)
    head_count_kv_raw = get("attention.head_count_kv")
    head_count_kv = (
        head_count if head_count_kv_raw is None else _as_tuple(head_count_kv_raw, n_layer, 0)
    )
    n_head0 = max(head_count) if head_count else 0
    default_head = n_embd // n_head0 if n_head0 else 0
    nextn = _as_int(get("nextn_predict_layers"))
    n_ff = _as_tuple(get("feed_forward_length"), n_layer, 0)
    n_expert = _as_int(get("expert_count"))
    swa = _as_int(get("attention.sliding_window"))
    swa_layers: tuple[bool, ...] = ()
    pattern = get("attention.sliding_window_pattern")
    if isinstance(pattern, list) and pattern:
        swa_layers = tuple(bool(pattern[i % len(pattern)]) for i in range(n_layer))
    elif arch == "gpt-oss" and swa:
        # Pattern 2, dense_first false: even layers slide, odd layers are full (llama-hparams.cpp).
        swa_layers = tuple(i % 2 == 0 for i in range(n_layer))
    elif arch == "llama4":
        if get("attention.sliding_window") is None:
            swa = 8192
        if swa:
            # Chunked attention on 3 of every 4 layers (engines.md §2.2).
            swa_layers = tuple((i + 1) % 4 != 0 for i in range(n_layer))
    elif isinstance(pattern, int) and pattern > 1 and swa:
        swa_layers = tuple((i + 1) % pattern != 0 for i in range(n_layer))
    tokens = metadata.get("tokenizer.ggml.tokens")
    n_vocab = _as_int(get("vocab_size"))
    if not n_vocab:
        if isinstance(tokens, SkippedArray):
            n_vocab = tokens.count
        elif isinstance(tokens, list):
            n_vocab = len(tokens)
    return HyperParams(
        n_layer=n_layer,
        n_embd=n_embd,
        head_count=head_count,
        head_count_kv=head_count_kv,
        key_length=_as_int(get("attention.key_length"), default_head),
        value_length=_as_int(get("attention.value_length"), default_head),
        key_length_mla=_as_int(get("attention.key_length_mla")),
        value_length_mla=_as_int(get("attention.value_length_mla")),
        kv_lora_rank=_as_int(get("attention.kv_lora_rank")),
        q_lora_rank=_as_int(get("attention.q_lora_rank")),
        n_rot=_as_int(get("rope.dimension_count"), default_head),
        n_expert=n_expert,
        n_expert_used=_as_int(get("expert_used_count")),
        n_expert_shared=_as_int(get("expert_shared_count")),
        n_ff_exp=_as_int(get("expert_feed_forward_length"), n_ff[0] if n_expert and n_ff else 0),
        n_ff=n_ff,
        leading_dense=_as_int(get("leading_dense_block_count")),
        nextn_layers=nextn,
        interleave_moe_step=_as_int(get("interleave_moe_layer_step")),
        sliding_window=swa,
        swa_layers=swa_layers,
        n_ctx_train=_as_int(get("context_length")),
        n_vocab=n_vocab,
    )


def classify_tensors(
    raw: Sequence[tuple[str, tuple[int, ...], int, int, int]], n_layer: int, nextn: int
) -> tuple[TensorInfo, ...]:
    """Build :class:`TensorInfo` from ``(name, shape, type_id, nbytes, shard)`` records."""
    first_nextn = n_layer - nextn if nextn else None
    out = []
    for name, shape, type_id, nbytes, shard in raw:
        layer, group = classify(name)
        loaded = first_nextn is None or layer < first_nextn
        out.append(TensorInfo(name, shape, type_id, nbytes, shard, layer, group, loaded))
    return tuple(out)


def layout_from_gguf(model: GGUFModel) -> ModelLayout:
    """Turn the headers of all shards into a :class:`ModelLayout`."""
    meta = model.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GGUFFormatError(
            model.first.path,
            "has no general.architecture; it is not a model file the engines can load",
        )
    check_hyperparameters(model, arch)
    raw = [
        (t.name, t.shape, t.type_id, t.nbytes, i)
        for i, shard in enumerate(model.shards)
        for t in shard.tensors
    ]
    n_layer = _as_int(meta.get(f"{arch}.block_count"))
    nextn = _as_int(meta.get(f"{arch}.nextn_predict_layers"))
    tensors = classify_tensors(raw, n_layer, nextn)
    deepest = max(tensors, key=lambda t: t.layer, default=None)
    if deepest is not None and deepest.layer >= MAX_LAYERS:
        shard = model.shards[deepest.shard]
        info = next((t for t in shard.tensors if t.name == deepest.name), None)
        raise GGUFFormatError(
            shard.path,
            f"tensor {deepest.name} names layer {deepest.layer}; a model has at most "
            f"{MAX_LAYERS} layers, the tensor table is corrupt",
            offset=None if info is None else info.info_offset,
        )
    hparams = hyperparams_from_metadata(meta, tensors)
    name = meta.get("general.name")
    return ModelLayout(
        source=model.first.path,
        name=name if isinstance(name, str) and name else Path(model.first.path).stem,
        architecture=arch,
        hparams=hparams,
        tensors=tensors,
        shard_paths=tuple(s.path for s in model.shards),
        metadata=meta,
        warnings=model.warnings,
        duplicate_keys=model.duplicate_keys,
    )


def open_model(
    path: str | os.PathLike[str] | BinaryIO,
    *,
    progress: Progress | None = None,
    cancelled: IsCancelled | None = None,
) -> ModelLayout:
    """Open a GGUF model (any shard of a split model) and classify its tensors.

    Raises:
        ModelFileError: the file or one of its shards cannot be used (message names the file).
        Cancelled: ``cancelled()`` returned true.
    """
    return layout_from_gguf(read_model(path, progress=progress, cancelled=cancelled))
