"""Classification of tensor names into layers and groups: the columns of the tensor map.

Names follow ``blk.<layer>.<name>.<suffix>`` (suffix ``weight``, ``bias`` or ik's ``scale``) and
the globals ``token_embd``, ``output_norm``, ``output`` (engines.md §2). One rule set serves every
architecture: the MoE families differ only in which of these names they have (shared experts,
dense leading layers, merged gate_up, gpt-oss biases and sinks, GLM nextn blocks, Mixtral's legacy
per-expert tensors), so an architecture we have never seen still lands in sensible groups.
"""

from __future__ import annotations

import re
from enum import StrEnum

GLOBAL_LAYER = -1


class TensorGroup(StrEnum):
    """A column of the tensor map (and the global row's cells)."""

    ATTENTION = "attn"
    FFN = "ffn"
    SHARED = "shexp"
    ROUTER = "router"
    EXPS_GATE_UP = "exps_gate_up"
    EXPS_UP = "exps_up"
    EXPS_GATE = "exps_gate"
    EXPS_DOWN = "exps_down"
    NEXTN = "nextn"
    OTHER = "other"
    TOKEN_EMBD = "token_embd"
    OUTPUT = "output"
    OUTPUT_NORM = "output_norm"

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def short_label(self) -> str:
        """A column header that fits a narrow grid column."""
        return _SHORT_LABELS.get(self, self.label)

    @property
    def is_routed_expert(self) -> bool:
        return self in ROUTED_EXPERT_GROUPS

    @property
    def is_global(self) -> bool:
        return self in GLOBAL_GROUPS


_LABELS = {
    TensorGroup.ATTENTION: "Attention",
    TensorGroup.FFN: "Dense FFN",
    TensorGroup.SHARED: "Shared expert",
    TensorGroup.ROUTER: "Router",
    TensorGroup.EXPS_GATE_UP: "Experts gate+up",
    TensorGroup.EXPS_UP: "Experts up",
    TensorGroup.EXPS_GATE: "Experts gate",
    TensorGroup.EXPS_DOWN: "Experts down",
    TensorGroup.NEXTN: "MTP head",
    TensorGroup.OTHER: "Other",
    TensorGroup.TOKEN_EMBD: "token_embd",
    TensorGroup.OUTPUT: "output",
    TensorGroup.OUTPUT_NORM: "output_norm",
}

_SHORT_LABELS = {
    TensorGroup.ATTENTION: "Attn",
    TensorGroup.FFN: "FFN",
    TensorGroup.SHARED: "Shared",
    TensorGroup.EXPS_GATE_UP: "Exp g+u",
    TensorGroup.EXPS_UP: "Exp up",
    TensorGroup.EXPS_GATE: "Exp gate",
    TensorGroup.EXPS_DOWN: "Exp down",
    TensorGroup.NEXTN: "MTP",
    TensorGroup.TOKEN_EMBD: "embd",
    TensorGroup.OUTPUT: "out",
    TensorGroup.OUTPUT_NORM: "norm",
}

ROUTED_EXPERT_GROUPS = frozenset(
    {
        TensorGroup.EXPS_GATE_UP,
        TensorGroup.EXPS_UP,
        TensorGroup.EXPS_GATE,
        TensorGroup.EXPS_DOWN,
    }
)
GLOBAL_GROUPS = frozenset({TensorGroup.TOKEN_EMBD, TensorGroup.OUTPUT, TensorGroup.OUTPUT_NORM})
# Column order of the grid, left to right.
LAYER_COLUMNS = (
    TensorGroup.ATTENTION,
    TensorGroup.FFN,
    TensorGroup.SHARED,
    TensorGroup.ROUTER,
    TensorGroup.EXPS_GATE_UP,
    TensorGroup.EXPS_GATE,
    TensorGroup.EXPS_UP,
    TensorGroup.EXPS_DOWN,
    TensorGroup.NEXTN,
    TensorGroup.OTHER,
)
GLOBAL_COLUMNS = (TensorGroup.TOKEN_EMBD, TensorGroup.OUTPUT_NORM, TensorGroup.OUTPUT)

_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")
_SUFFIXES = ("weight", "bias", "scale")
_LEGACY_EXPERT = re.compile(r"^ffn_(gate|up|down)\.\d+$")
_EXPERT = re.compile(r"^ffn_(gate_up|gate|up|down)_(ch)?exps$")
_SHARED = re.compile(r"^ffn_(gate|up|down)_shexp$|^ffn_gate_inp_shexp$")
_DENSE = re.compile(r"^ffn_(gate|up|down|gate_up)$")
_EXPERT_GROUP = {
    "gate_up": TensorGroup.EXPS_GATE_UP,
    "gate": TensorGroup.EXPS_GATE,
    "up": TensorGroup.EXPS_UP,
    "down": TensorGroup.EXPS_DOWN,
}


def _stem(rest: str) -> str:
    head, _, last = rest.rpartition(".")
    return head if head and last in _SUFFIXES else rest


def classify(name: str) -> tuple[int, TensorGroup]:
    """Map a tensor name to ``(layer, group)``; ``layer`` is ``GLOBAL_LAYER`` for globals."""
    match = _BLOCK.match(name)
    if not match:
        stem = _stem(name)
        if stem == "token_embd":
            return GLOBAL_LAYER, TensorGroup.TOKEN_EMBD
        if stem == "output":
            return GLOBAL_LAYER, TensorGroup.OUTPUT
        if stem == "output_norm":
            return GLOBAL_LAYER, TensorGroup.OUTPUT_NORM
        return GLOBAL_LAYER, TensorGroup.OTHER
    layer = int(match.group(1))
    stem = _stem(match.group(2))
    if stem.startswith("nextn."):
        return layer, TensorGroup.NEXTN
    expert = _EXPERT.match(stem)
    if expert:
        return layer, _EXPERT_GROUP[expert.group(1)]
    legacy = _LEGACY_EXPERT.match(stem)
    if legacy:
        return layer, _EXPERT_GROUP[legacy.group(1)]
    if _SHARED.match(stem):
        return layer, TensorGroup.SHARED
    if stem in ("ffn_gate_inp", "exp_probs_b"):
        return layer, TensorGroup.ROUTER
    if _DENSE.match(stem):
        return layer, TensorGroup.FFN
    if stem.startswith("attn_") or stem.endswith("_norm") or stem in ("rope_freqs",):
        # Attention and every norm of the block: small, always active, kept together.
        return layer, TensorGroup.ATTENTION
    return layer, TensorGroup.OTHER
