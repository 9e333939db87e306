"""Which ik_llama.cpp build does what: the changes that move memory or the command line.

ik numbers its builds by commit count (``version: 4840 (8337e4cd3)``; ``git rev-list --count``
on ik's history). A plan made for a known build (:attr:`Settings.engine_build
<moe_studio.core.plan.settings.Settings.engine_build>`, read from the engine's ``--version``
or given with ``--engine-build``) uses that build's defaults, flag syntax and buffer layout;
``None`` means the newest build, which is what a fresh install gets.

Every entry was found in ik's history (``git log -S`` on the line that changed) and names the
commit, its date and pull request.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BuildChange:
    """One change in ik_llama.cpp: builds numbered ``build`` or later have it."""

    build: int
    commit: str
    date: str
    pr: int
    what: str


# Builds before MLA_PROMPT_SPLIT allocated the MLA prompt path the older way (see
# ``compute.mla_prompt_attention_bytes``); builds before HOST_MASK_F16 built the KQ mask as f32
# on the host and cast it to f16 on each device with flash attention.
HOST_MASK_F16 = BuildChange(
    3907,
    "4e24d48e6",
    "2025-10-13",
    825,
    "the KQ mask is built as f16 with flash attention (before: an f32 mask on the host, cast to "
    "f16 where attention runs; src/llama.cpp build_inp_KQ_mask)",
)
ACTIVE_EXPERTS_DEFAULT = BuildChange(
    3917, "36f9601e8", "2025-10-20", 842, "offload only active experts (-ooae) on by default"
)
FA_FMOE_DEFAULT = BuildChange(
    3928, "41d6c42b9", "2025-10-25", 863, "flash attention and fused MoE (-fmoe) on by default"
)
MLA_DEFAULT_3 = BuildChange(3983, "ddc88bac1", "2025-11-12", 943, "-mla 3 by default (before 0)")
FA_TAKES_VALUE = BuildChange(
    3985, "874926800", "2025-11-13", 944, "-fa takes on|off|auto (before: a bare -fa)"
)
MLA_PROMPT_SPLIT = BuildChange(
    4161,
    "33308908d",
    "2026-01-31",
    1211,
    "MLA prompt path: -amb head split by any divisor and buffer reuse",
)
AMB_MIN_128 = BuildChange(
    4550, "8960c5ba5", "2026-05-29", 1899, "-amb below 128 is raised to 128 (common.cpp)"
)
AMB_DEFAULT_256 = BuildChange(
    4832, "37d82c231", "2026-08-13", 2312, "-amb 256 by default (before 0)"
)

IK_CHANGES = (
    HOST_MASK_F16,
    ACTIVE_EXPERTS_DEFAULT,
    FA_FMOE_DEFAULT,
    MLA_DEFAULT_3,
    FA_TAKES_VALUE,
    MLA_PROMPT_SPLIT,
    AMB_MIN_128,
    AMB_DEFAULT_256,
)


def has(build: int | None, change: BuildChange) -> bool:
    """Whether ik build ``build`` (None: the newest) includes ``change``."""
    return build is None or build >= change.build


# The oldest ik build whose compute buffers the model claims to describe (the corpus targets of
# tests/data/cuda_corpus apply from here on).
OLDEST_DESCRIBED = MLA_PROMPT_SPLIT.build


def newest_by(date: str) -> int | None:
    """A build number that behaves like every ik build out on ``date`` (ISO): the last one
    before the first change made after that day (None: no change since, the newest)."""
    later = [c.build for c in IK_CHANGES if c.date > date]
    return min(later) - 1 if later else None


def plausible(build: int, date: str) -> bool:
    """Whether ik could have printed ``build`` by ``date``: it does not claim a change made later
    (a build number from another history, e.g. a mainline checkout, claims them all)."""
    return all(c.date <= date for c in IK_CHANGES if c.build <= build)
