"""The ggml tensor types of both engines: ids, names, block sizes, bytes per block, row metadata.

Transcribed from ``shared/reference/engines.md`` §3, which read them from ik_llama.cpp
``ggml/src/ggml.c`` ``type_traits[]`` and mainline ``ggml/src/ggml.c`` (sizes from compiled
``sizeof(block_*)``). ik_llama.cpp stores per-row scales for some of its own types, so a row takes
``row_meta + type_size * ne0 / block`` bytes there (``ggml_row_size``); mainline has no row
metadata. The PyPI ``gguf`` package knows only the mainline ids, which is why we keep our own table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Engine = Literal["ik", "mainline"]


@dataclass(frozen=True, slots=True)
class GGMLType:
    """One ggml type id with its layout in each engine that defines it."""

    id: int
    ik_name: str | None
    ik_block: int
    ik_type_size: int
    ik_row_meta: int
    ml_name: str | None
    ml_block: int
    ml_type_size: int

    @property
    def name(self) -> str:
        """The name users know: ik's where it exists (a superset), else mainline's."""
        return (self.ik_name or self.ml_name or f"type{self.id}").upper()

    @property
    def in_ik(self) -> bool:
        return self.ik_name is not None

    @property
    def in_mainline(self) -> bool:
        return self.ml_name is not None

    @property
    def block(self) -> int:
        return self.ik_block if self.in_ik else self.ml_block

    @property
    def type_size(self) -> int:
        return self.ik_type_size if self.in_ik else self.ml_type_size

    @property
    def row_meta(self) -> int:
        return self.ik_row_meta if self.in_ik else 0

    def row_bytes(self, ne0: int) -> int:
        """Bytes of one row of ``ne0`` elements, as the engine that defines the type counts them.

        Types defined by both engines have the same weight layout (the only exception, Q8_K, is
        an activation type that never appears in a file), so one formula serves both.
        """
        return self.row_meta + self.type_size * ne0 // self.block

    def tensor_bytes(self, shape: Sequence[int]) -> int:
        """Bytes of a contiguous tensor of ``shape`` (ne0 first, as GGUF stores it)."""
        ne0 = shape[0] if shape else 1
        rows = 1
        for n in shape[1:]:
            rows *= n
        if self.id == I2_S:
            # ik ggml_nbytes special case (ggml.c:4785): the 2-bit payload plus a 32-byte scale.
            elements = ne0 * rows
            return elements // 4 + 32
        return self.row_bytes(ne0) * rows

    def divides(self, ne0: int) -> bool:
        """Whether a row of ``ne0`` elements is a whole number of blocks of this type."""
        return ne0 % self.block == 0


def _t(
    type_id: int,
    ik: tuple[str, int, int, int] | None,
    ml: tuple[str, int, int] | None,
) -> GGMLType:
    ik_name, ik_block, ik_size, ik_meta = ik if ik else (None, 0, 0, 0)
    ml_name, ml_block, ml_size = ml if ml else (None, 0, 0)
    return GGMLType(type_id, ik_name, ik_block, ik_size, ik_meta, ml_name, ml_block, ml_size)


def _both(type_id: int, name: str, block: int, size: int) -> GGMLType:
    return _t(type_id, (name, block, size, 0), (name, block, size))


def _ik(type_id: int, name: str, block: int, size: int, meta: int = 0) -> GGMLType:
    return _t(type_id, (name, block, size, meta), None)


def _ml(type_id: int, name: str, block: int, size: int) -> GGMLType:
    return _t(type_id, None, (name, block, size))


I2_S = 36

_TABLE: tuple[GGMLType, ...] = (
    _both(0, "f32", 1, 4),
    _both(1, "f16", 1, 2),
    _both(2, "q4_0", 32, 18),
    _both(3, "q4_1", 32, 20),
    _both(6, "q5_0", 32, 22),
    _both(7, "q5_1", 32, 24),
    _both(8, "q8_0", 32, 34),
    _both(9, "q8_1", 32, 36),
    _both(10, "q2_K", 256, 84),
    _both(11, "q3_K", 256, 110),
    _both(12, "q4_K", 256, 144),
    _both(13, "q5_K", 256, 176),
    _both(14, "q6_K", 256, 210),
    _t(15, ("q8_K", 256, 296, 0), ("q8_K", 256, 292)),
    _both(16, "iq2_xxs", 256, 66),
    _both(17, "iq2_xs", 256, 74),
    _both(18, "iq3_xxs", 256, 98),
    _both(19, "iq1_s", 256, 50),
    _both(20, "iq4_nl", 32, 18),
    _both(21, "iq3_s", 256, 110),
    _both(22, "iq2_s", 256, 82),
    _both(23, "iq4_xs", 256, 136),
    _both(24, "i8", 1, 1),
    _both(25, "i16", 1, 2),
    _both(26, "i32", 1, 4),
    _both(27, "i64", 1, 8),
    _both(28, "f64", 1, 8),
    _both(29, "iq1_m", 256, 56),
    _both(30, "bf16", 1, 2),
    _ik(31, "q4_0_4x4", 32, 18),
    _ik(32, "q4_0_4x8", 32, 18),
    _ik(33, "q4_0_8x8", 32, 18),
    _ml(34, "tq1_0", 256, 54),
    _ml(35, "tq2_0", 256, 66),
    _ik(36, "i2_s", 1, 1),
    _both(39, "mxfp4", 32, 17),
    _ml(40, "nvfp4", 64, 36),
    # Same id and block in both; only the name differs (engines.md §3.1).
    _t(41, ("q1_0_g128", 128, 18, 0), ("q1_0", 128, 18)),
    _ml(42, "q2_0", 64, 18),
    _ik(97, "q8_0_x4", 32, 34),
    _ik(98, "q8_1_x4", 32, 36),
    _ik(99, "q8_2_x4", 32, 36),
    _ik(133, "q6_0", 32, 26),
    _ik(134, "iq1_bn", 64, 13, 2),
    _ik(135, "iq2_bn", 64, 16, 4),
    _ik(136, "q8_K64", 64, 68),
    _ik(137, "iq2_k", 256, 76),
    _ik(138, "iq3_k", 256, 110),
    _ik(139, "iq4_k", 256, 144),
    _ik(140, "iq5_k", 256, 176),
    _ik(141, "iq6_k", 256, 212),
    _ik(144, "iq4_ks", 256, 136, 4),
    _ik(145, "iq2_ks", 256, 70, 2),
    _ik(146, "iq4_kss", 256, 128, 4),
    _ik(147, "q8_K16", 64, 64, 20),
    _ik(148, "q8_K32", 256, 296),
    _ik(149, "q8_KR8", 256, 296),
    _ik(150, "q8_K128", 128, 140),
    _ik(151, "q8_KV", 32, 32, 8),
    _ik(152, "iq5_ks", 256, 168, 4),
    _ik(153, "iq2_kt", 256, 68, 4),
    _ik(154, "iq3_kt", 256, 100, 4),
    _ik(155, "iq4_kt", 256, 128, 4),
    _ik(156, "iq3_ks", 256, 102, 2),
    _ik(157, "iq2_kl", 256, 86, 2),
    _ik(158, "iq1_kt", 256, 56, 4),
    _ik(202, "q4_0_r8", 32, 18),
    _ik(206, "q5_0_r4", 32, 22),
    _ik(208, "q8_0_r8", 32, 34),
    _ik(210, "q2_k_r4", 256, 84),
    _ik(211, "q3_k_r4", 256, 110),
    _ik(212, "q4_k_r4", 256, 144),
    _ik(213, "q5_k_r4", 256, 176),
    _ik(214, "q6_k_r4", 256, 210),
    _ik(216, "iq2_xxs_r4", 256, 66),
    _ik(217, "iq2_xs_r4", 256, 74),
    _ik(218, "iq3_xxs_r4", 256, 98),
    _ik(219, "iq1_s_r4", 32, 6, 2),
    _ik(220, "iq4_nl_r4", 32, 18),
    _ik(221, "iq3_s_r4", 256, 110),
    _ik(222, "iq2_s_r4", 256, 82),
    _ik(223, "iq4_xs_r8", 256, 136),
    _ik(229, "iq1_m_r4", 32, 7, 2),
    _ik(230, "bf16_r16", 1, 2),
    _ik(233, "q6_0_r4", 32, 26),
    _ik(335, "iq2_bn_r4", 64, 16, 4),
    _ik(337, "iq2_k_r4", 256, 76),
    _ik(338, "iq3_k_r4", 256, 110),
    _ik(339, "iq4_k_r4", 256, 144),
    _ik(340, "iq5_k_r4", 256, 176),
    _ik(344, "iq4_ks_r4", 256, 136, 4),
    _ik(352, "iq5_ks_r4", 256, 168, 4),
    _ik(353, "mxfp4_r8", 32, 17),
    _ik(397, "q8_k_r16", 256, 258),
    _ik(398, "q8_KV_r8", 32, 32, 4),
    _ik(399, "q8_k_r8", 256, 258),
)

TYPES: dict[int, GGMLType] = {t.id: t for t in _TABLE}
_BY_NAME: dict[str, GGMLType] = {}
for _type in _TABLE:
    for _name in (_type.ik_name, _type.ml_name):
        if _name:
            _BY_NAME[_name.lower()] = _type

F32 = TYPES[0]
F16 = TYPES[1]
BF16 = TYPES[30]
Q8_0 = TYPES[8]


def type_by_id(type_id: int) -> GGMLType | None:
    """The type with this id, or ``None`` when neither engine defines it."""
    return TYPES.get(type_id)


def type_by_name(name: str) -> GGMLType | None:
    """Look a type up by either engine's name, case-insensitively (``IQ4_KS``, ``q1_0``)."""
    return _BY_NAME.get(name.lower())


def type_name(type_id: int) -> str:
    """Display name of a type id; ``type<id>`` for an id neither engine defines."""
    found = TYPES.get(type_id)
    return found.name if found else f"TYPE{type_id}"


# KV cache types each engine's -ctk/-ctv accept (engines.md §1.1).
CACHE_TYPES_IK = (
    "f32",
    "f16",
    "bf16",
    "q8_0",
    "q4_0",
    "q4_1",
    "iq4_nl",
    "q5_0",
    "q5_1",
    "q6_0",
    "q8_KV",
)
CACHE_TYPES_MAINLINE = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


# --- when ik_llama.cpp learned each type ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TypeOrigin:
    """The first ik_llama.cpp build whose ``ggml/include/ggml.h`` gives a type its id."""

    build: int  # ik prints it as ``version: N (hash)``: ``git rev-list --count`` of the commit
    commit: str
    date: str
    pr: int  # the pull request named in the commit subject (0: none)


# From the history of ik_llama.cpp at 8337e4cd (build 4840): for each ``GGML_TYPE_X = id`` of the
# ``enum ggml_type`` there, the oldest commit whose ``ggml/include/ggml.h`` has that line
# (``git log --reverse -G 'GGML_TYPE_X\s*=\s*id' -- ggml/include/ggml.h``) and its build number
# (``git rev-list --count``). Types already in ik's first own build (3347, 0ceeb1172, 2024-07-27,
# "Merge mainline llama.cpp (#3)") are absent: every ik build knows them. An older build reads a
# GGUF with a newer type as an unknown type id and refuses the file.
IK_TYPE_ORIGIN: dict[int, TypeOrigin] = {
    36: TypeOrigin(3527, "400b77429", "2025-01-10", 169),  # I2_S
    39: TypeOrigin(3834, "e23b2a7cc", "2025-08-09", 682),  # MXFP4
    41: TypeOrigin(4382, "90ec1b80c", "2026-04-02", 1570),  # Q1_0_G128
    97: TypeOrigin(3611, "d71e84bdc", "2025-03-27", 292),  # Q8_0_X4
    98: TypeOrigin(3611, "d71e84bdc", "2025-03-27", 292),  # Q8_1_X4
    99: TypeOrigin(3611, "d71e84bdc", "2025-03-27", 292),  # Q8_2_X4
    133: TypeOrigin(3448, "104e7e26c", "2024-10-02", 77),  # Q6_0
    134: TypeOrigin(3415, "4a5d5e207", "2024-09-09", 44),  # IQ1_BN
    135: TypeOrigin(3415, "4a5d5e207", "2024-09-09", 44),  # IQ2_BN
    136: TypeOrigin(3415, "4a5d5e207", "2024-09-09", 44),  # Q8_K64
    137: TypeOrigin(3415, "4a5d5e207", "2024-09-09", 44),  # IQ2_K
    138: TypeOrigin(3415, "4a5d5e207", "2024-09-09", 44),  # IQ3_K
    139: TypeOrigin(3415, "4a5d5e207", "2024-09-09", 44),  # IQ4_K
    140: TypeOrigin(3415, "4a5d5e207", "2024-09-09", 44),  # IQ5_K
    141: TypeOrigin(3415, "4a5d5e207", "2024-09-09", 44),  # IQ6_K
    144: TypeOrigin(3455, "a10ccd65f", "2024-10-09", 83),  # IQ4_KS
    145: TypeOrigin(3458, "67817fb5b", "2024-10-13", 85),  # IQ2_KS
    146: TypeOrigin(3463, "f369c6f92", "2024-10-16", 89),  # IQ4_KSS
    147: TypeOrigin(3489, "612a20767", "2024-12-06", 124),  # Q8_K16
    148: TypeOrigin(3492, "b39bbb040", "2024-12-08", 128),  # Q8_K32
    149: TypeOrigin(3505, "e885c1e59", "2024-12-14", 141),  # Q8_KR8
    150: TypeOrigin(3549, "6658922b9", "2025-02-09", 194),  # Q8_K128
    151: TypeOrigin(3561, "1140b4568", "2025-02-19", 208),  # Q8_KV
    152: TypeOrigin(3696, "90e53a0b8", "2025-05-15", 422),  # IQ5_KS
    153: TypeOrigin(3707, "25d34e3d2", "2025-05-22", 441),  # IQ2_KT
    154: TypeOrigin(3707, "25d34e3d2", "2025-05-22", 441),  # IQ3_KT
    155: TypeOrigin(3707, "25d34e3d2", "2025-05-22", 441),  # IQ4_KT
    156: TypeOrigin(3778, "adc28f885", "2025-07-02", 566),  # IQ3_KS
    157: TypeOrigin(3800, "f375799f1", "2025-07-14", 602),  # IQ2_KL
    158: TypeOrigin(3810, "e1164e1fd", "2025-07-20", 616),  # IQ1_KT
    202: TypeOrigin(3545, "8049ffcbc", "2025-02-06", 189),  # Q4_0_R8
    206: TypeOrigin(3486, "d9593f368", "2024-12-03", 121),  # Q5_0_R4
    208: TypeOrigin(3545, "8049ffcbc", "2025-02-06", 189),  # Q8_0_R8
    210: TypeOrigin(3499, "0f6621d41", "2024-12-11", 136),  # Q2_K_R4
    211: TypeOrigin(3497, "4872f2f57", "2024-12-11", 134),  # Q3_K_R4
    212: TypeOrigin(3493, "13126ce10", "2024-12-09", 129),  # Q4_K_R4
    213: TypeOrigin(3496, "e78e47b85", "2024-12-10", 132),  # Q5_K_R4
    214: TypeOrigin(3494, "b7e2f656f", "2024-12-10", 130),  # Q6_K_R4
    216: TypeOrigin(3518, "9dfd69bd9", "2024-12-20", 154),  # IQ2_XXS_R4
    217: TypeOrigin(3519, "6892554e4", "2024-12-21", 155),  # IQ2_XS_R4
    218: TypeOrigin(3516, "310f8b1d2", "2024-12-20", 153),  # IQ3_XXS_R4
    219: TypeOrigin(3542, "eb547bad1", "2025-02-05", 185),  # IQ1_S_R4
    220: TypeOrigin(3491, "daf5f5202", "2024-12-08", 126),  # IQ4_NL_R4
    221: TypeOrigin(3524, "da3bfd100", "2024-12-23", 162),  # IQ3_S_R4
    222: TypeOrigin(3520, "7598ec79a", "2024-12-21", 156),  # IQ2_S_R4
    223: TypeOrigin(3545, "8049ffcbc", "2025-02-06", 189),  # IQ4_XS_R8
    229: TypeOrigin(3544, "7c94c3da5", "2025-02-06", 187),  # IQ1_M_R4
    230: TypeOrigin(3506, "e811de75e", "2024-12-15", 142),  # BF16_R16
    233: TypeOrigin(3486, "d9593f368", "2024-12-03", 121),  # Q6_0_R4
    335: TypeOrigin(3489, "612a20767", "2024-12-06", 124),  # IQ2_BN_R4
    337: TypeOrigin(3511, "c16d35291", "2024-12-17", 146),  # IQ2_K_R4
    338: TypeOrigin(3510, "b52e2e293", "2024-12-17", 145),  # IQ3_K_R4
    339: TypeOrigin(3501, "ce97b0325", "2024-12-12", 138),  # IQ4_K_R4
    340: TypeOrigin(3514, "c208fec2f", "2024-12-18", 149),  # IQ5_K_R4
    344: TypeOrigin(3515, "8352f1227", "2024-12-18", 150),  # IQ4_KS_R4
    352: TypeOrigin(3699, "db111c91e", "2025-05-17", 426),  # IQ5_KS_R4
    353: TypeOrigin(4751, "f0f6ae4bb", "2026-07-28", 2196),  # MXFP4_R8
    397: TypeOrigin(3853, "ca8c72ff1", "2025-08-22", 710),  # Q8_K_R16
    398: TypeOrigin(3561, "1140b4568", "2025-02-19", 208),  # Q8_KV_R8
    399: TypeOrigin(3505, "e885c1e59", "2024-12-14", 141),  # Q8_K_R8
}  # fmt: skip


def ik_types_newer_than(type_ids: Iterable[int], build: int) -> list[tuple[GGMLType, TypeOrigin]]:
    """The ik types among ``type_ids`` that ik_llama.cpp build ``build`` predates, newest first."""
    found = []
    for type_id in sorted(set(type_ids)):
        origin = IK_TYPE_ORIGIN.get(type_id)
        gtype = TYPES.get(type_id)
        if origin is not None and gtype is not None and build < origin.build:
            found.append((gtype, origin))
    return sorted(found, key=lambda item: -item[1].build)
