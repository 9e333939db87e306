"""Which engine build does what: the changes that move memory or the command line.

ik numbers its builds by commit count (``version: 4840 (8337e4cd3)``; ``git rev-list --count``
on ik's history). A plan made for a known build (:attr:`Settings.engine_build
<moe_studio.core.plan.settings.Settings.engine_build>`, read from the engine's ``--version``
or given with ``--engine-build``) uses that build's defaults, flag syntax and buffer layout;
``None`` means the newest build, which is what a fresh install gets.

Every entry was found in ik's history (``git log -S`` on the line that changed) and names the
commit, its date and pull request. :data:`IK_FLAGS` says, for every flag the command builder
writes, from which build ik accepts it in the form we write; the flags older than
:data:`IK_BASE` (ik's first merge of mainline) are in every ik build.

Mainline llama.cpp numbers its builds the same way (``version: 5331 (33eff402)``; its release
tags are ``b<build>``); :data:`MAINLINE_CHANGES` lists the mainline changes, found in mainline's
history the same way (``git log -G``, ``git rev-list --count``) and read at the commits named.
A plan for mainline asks :meth:`Settings.has_mainline
<moe_studio.core.plan.settings.Settings.has_mainline>`; :meth:`Settings.has` is ik only.
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


# The command line. Flags that came from mainline before ik's first merge of it (-m -ngl -c -b
# -ub -t -tb -ts -sm layer -ctk -ctv -np --numa --no-mmap --rpc --host --port --api-key
# --metrics, a bare -fa) are in every ik build: common/common.cpp at 0ceeb1172 has them all.
IK_BASE = BuildChange(
    3347, "0ceeb1172", "2024-07-27", 3, "first merge of mainline llama.cpp: the base flags"
)
Q6_0_CACHE = BuildChange(3448, "104e7e26c", "2024-10-02", 77, "the q6_0 type (-ctk/-ctv q6_0)")
RUN_TIME_REPACK = BuildChange(
    3512, "a648191c2", "2024-12-17", 147, "-rtr (repack CPU tensors at load)"
)
Q8_KV_CACHE = BuildChange(3561, "1140b4568", "2025-02-19", 208, "the q8_KV type (-ctk/-ctv q8_KV)")
FUSED_MOE_FLAG = BuildChange(
    3571, "b50efcc9d", "2025-02-23", 229, "-fmoe (fused MoE up/gate; off unless given)"
)
OVERRIDE_TENSOR = BuildChange(
    3573, "85c6152e8", "2025-02-25", 232, "-ot REGEX=BUFFER (before: no tensor overrides)"
)
MLA_TAKES_VALUE = BuildChange(
    3575, "472b4c37c", "2025-02-27", 235, "-mla takes 0|1|2 (before: a bare -mla, from 3551)"
)
AMB_FLAG = BuildChange(3576, "e787c0014", "2025-03-01", 237, "-amb N (attention max batch)")
MLA_3 = BuildChange(3599, "24e780ba7", "2025-03-21", 273, "-mla 3 (FlashMLA-3)")
CPU_MOE_FLAGS = BuildChange(
    3833, "6bda22a4d", "2025-08-08", 672, "-cmoe and --n-cpu-moe N (ported from mainline)"
)
ACTIVE_EXPERTS_FLAG = BuildChange(
    3877, "13c3b6412", "2025-09-04", 698, "-ooae (offload only active experts; off unless given)"
)
GROUPED_EXPERT_ROUTING = BuildChange(
    3912, "cde642e59", "2025-10-16", 836, "-ger (grouped expert routing)"
)
DEVICE_FLAG = BuildChange(
    3933,
    "904e994bf",
    "2025-10-27",
    866,
    "-dev (before: every GPU, then the RPC servers; RPC devices stay after the GPUs whatever "
    "-dev says until RPC_FIRST)",
)
MERGE_QKV = BuildChange(3940, "56fc5454f", "2025-10-30", 878, "--merge-qkv / -mqkv")
CUDA_PARAMS = BuildChange(
    3961, "532a05e46", "2025-11-07", 910, "-cuda key=value (offload-batch-size=N, …)"
)
RPC_FIRST = BuildChange(
    4027,
    "8c39ff966",
    "2025-11-26",
    1011,
    "RPC servers first in the default device order, and -dev's order holds for them (before: "
    "every GPU, then the RPC servers)",
)
RPC_DEVICE_NAMES = BuildChange(
    4033,
    "15771072c",
    "2025-11-30",
    1024,
    "RPC buffer types are named RPC<device>[host:port] (before: RPC[host:port], one device per "
    "rpc-server)",
)
SPLIT_MODE_GRAPH = BuildChange(4035, "a71934998", "2025-12-01", 1022, "-sm graph")

# Builds before MLA_PROMPT_SPLIT allocated the MLA prompt path the older way (see
# ``compute.mla_prompt_attention_bytes``); builds before HOST_MASK_F16 built the KQ mask as f32
# on the host and cast it to f16 on each device with flash attention.
# The CUDA backend learnt to multiply ik's row-interleaved IQk_R4 types one PR at a time
# (``ggml_backend_cuda_supports_op`` in ``ggml/src/ggml-cuda.cu``, the MUL_MAT/MUL_MAT_ID type
# switch). Before, a RAM-resident weight of that type (``-rtr`` repacks IQk quants into them) kept
# its big-batch matmuls on the CPU: the scheduler offers an op to a GPU only when ``supports_op``
# agrees (``ggml_backend_sched_backend_id_from_cur``), so no copy went into a CUDA compute buffer.
CUDA_IQK_R4 = BuildChange(
    3714,
    "89728ab03",
    "2025-05-26",
    461,
    "CUDA multiplies IQ2_K_R4, IQ3_K_R4, IQ4_K_R4 and IQ5_K_R4 (before: those RAM weights' "
    "matmuls stayed on the CPU)",
)
CUDA_IQKS_R4 = BuildChange(
    3715, "6989ca024", "2025-05-27", 462, "CUDA multiplies IQ4_KS_R4 and IQ5_KS_R4"
)
CUDA_IQ1_S_R4 = BuildChange(3726, "631ceee07", "2025-06-05", 492, "CUDA multiplies IQ1_S_R4")
CUDA_IQ1_M_R4 = BuildChange(3729, "1b9b7bd5a", "2025-06-05", 494, "CUDA multiplies IQ1_M_R4")
# ``ggml_backend_cuda_offload_op`` before PR #405 accepted MUL_MAT_ID but not ik's fused
# MOE_FUSED_UP_GATE (``-fmoe``), so with fused MoE the up/gate matmul of RAM experts stayed on the
# CPU and only the down matmul went to the GPU.
MLA_PP_OPT = BuildChange(
    3607,
    "a9a941b5b",
    "2025-03-23",
    282,
    "DeepSeek's prompt path (pp_opt, n_tokens >= 128) in build_deepseek2; the published logs of "
    "earlier builds (ik PR #259, build 3596) hold other host and MLA buffers",
)
FUSED_UP_GATE_OFFLOAD = BuildChange(
    3683,
    "aa8ec5dfa",
    "2025-05-12",
    405,
    "the fused up/gate MoE op (-fmoe) of RAM experts is offloaded to the GPU like MUL_MAT_ID "
    "(before: it ran on the CPU, only down was offloaded)",
)
# ``ggml_backend_cuda_offload_op`` (``ggml/src/ggml-cuda.cu``) before PR #520 offloaded a
# MUL_MAT_ID / MOE_FUSED_UP_GATE whenever ``op->ne[2]`` (the tokens) was at least 32; since, only
# when ``tokens · n_used ≥ 32 · n_expert``.
MOE_OFFLOAD_RATIO = BuildChange(
    3745,
    "dc663fe63",
    "2025-06-12",
    520,
    "a MoE matmul of RAM-resident experts goes to the GPU only when T·n_used ≥ 32·n_expert "
    "(before: T ≥ 32, like any matmul)",
)
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
# Also -ooae became the default: the flag went, -no-ooae came.
FA_FMOE_DEFAULT = BuildChange(
    3928,
    "41d6c42b9",
    "2025-10-25",
    863,
    "flash attention and fused MoE on by default: -fa and -fmoe went, -no-fa and -no-fmoe came",
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
DRY_RUN = BuildChange(
    4322,
    "f9b7fe974",
    "2026-03-18",
    1462,
    "llama-server --dry-run: every buffer allocated and printed, no tensor data read",
)
LAYER_SIZE_SPLIT = BuildChange(
    4327,
    "0871ab296",
    "2026-03-20",
    1466,
    "layers are split over the GPUs by their sizes (get_layer_sizes); before, layer i went to "
    "the first GPU whose cumulative split exceeds (i - i_gpu_start) / min(ngl, n_layer + 1)",
)
AMB_MIN_128 = BuildChange(
    4550, "8960c5ba5", "2026-05-29", 1899, "-amb below 128 is raised to 128 (common.cpp)"
)
AMB_DEFAULT_256 = BuildChange(
    4832, "37d82c231", "2026-08-13", 2312, "-amb 256 by default (before 0)"
)

IK_CHANGES = (
    IK_BASE,
    Q6_0_CACHE,
    RUN_TIME_REPACK,
    Q8_KV_CACHE,
    FUSED_MOE_FLAG,
    OVERRIDE_TENSOR,
    MLA_TAKES_VALUE,
    AMB_FLAG,
    MLA_3,
    MLA_PP_OPT,
    FUSED_UP_GATE_OFFLOAD,
    CUDA_IQK_R4,
    CUDA_IQKS_R4,
    CUDA_IQ1_S_R4,
    CUDA_IQ1_M_R4,
    MOE_OFFLOAD_RATIO,
    CPU_MOE_FLAGS,
    ACTIVE_EXPERTS_FLAG,
    HOST_MASK_F16,
    GROUPED_EXPERT_ROUTING,
    ACTIVE_EXPERTS_DEFAULT,
    FA_FMOE_DEFAULT,
    DEVICE_FLAG,
    MERGE_QKV,
    CUDA_PARAMS,
    MLA_DEFAULT_3,
    FA_TAKES_VALUE,
    RPC_FIRST,
    RPC_DEVICE_NAMES,
    SPLIT_MODE_GRAPH,
    MLA_PROMPT_SPLIT,
    DRY_RUN,
    LAYER_SIZE_SPLIT,
    AMB_MIN_128,
    AMB_DEFAULT_256,
)

# ik flags whose acceptance depends on the build: (first build that accepts it, first build that
# no longer does). Everything the command builder writes is here or in IK_BASE.
IK_FLAGS: dict[str, tuple[BuildChange, BuildChange | None]] = {
    "-rtr": (RUN_TIME_REPACK, None),
    "-fmoe": (FUSED_MOE_FLAG, FA_FMOE_DEFAULT),
    "-ot": (OVERRIDE_TENSOR, None),
    "-amb": (AMB_FLAG, None),
    "-cmoe": (CPU_MOE_FLAGS, None),
    "--n-cpu-moe": (CPU_MOE_FLAGS, None),
    "-ooae": (ACTIVE_EXPERTS_FLAG, ACTIVE_EXPERTS_DEFAULT),
    "-no-ooae": (ACTIVE_EXPERTS_DEFAULT, None),
    "-ger": (GROUPED_EXPERT_ROUTING, None),
    "-no-fa": (FA_FMOE_DEFAULT, None),
    "-no-fmoe": (FA_FMOE_DEFAULT, None),
    "-dev": (DEVICE_FLAG, None),
    "--merge-qkv": (MERGE_QKV, None),
    "-mqkv": (MERGE_QKV, None),
    "-cuda": (CUDA_PARAMS, None),
}


def accepts(build: int | None, flag: str) -> bool:
    """Whether ik build ``build`` (None: the newest) accepts ``flag`` (a flag not in
    :data:`IK_FLAGS` is taken as accepted)."""
    since, until = IK_FLAGS.get(flag, (IK_BASE, None))
    return has(build, since) and (until is None or not has(build, until))


def has(build: int | None, change: BuildChange) -> bool:
    """Whether build ``build`` (None: the newest) of ``change``'s engine includes ``change``."""
    return build is None or build >= change.build


# The oldest ik build whose compute buffers the model claims to describe (the corpus targets of
# tests/data/cuda_corpus apply from here on).
OLDEST_DESCRIBED = MLA_PROMPT_SPLIT.build


def newest_by(date: str, changes: tuple[BuildChange, ...] = IK_CHANGES) -> int | None:
    """A build number that behaves like every build out on ``date`` (ISO): the last one before
    the first of ``changes`` (ik's by default) made after that day (None: no change since)."""
    later = [c.build for c in changes if c.date > date]
    return min(later) - 1 if later else None


def plausible(build: int, date: str, changes: tuple[BuildChange, ...] = IK_CHANGES) -> bool:
    """Whether the engine of ``changes`` (ik's by default) could have printed ``build`` by
    ``date``: it does not claim a change made later (a build number from another history, e.g.
    a mainline checkout in an ik log, claims them all)."""
    return all(c.date <= date for c in changes if c.build <= build)


# --- mainline llama.cpp ---------------------------------------------------------------------------
# Read in mainline's history (ggml-org/llama.cpp; build = ``git rev-list --count <commit>``, which
# is what ``--version`` prints: 1d36b367 counts 5269, 33eff402 5331, as the corpus logs say).

ML_KQ_MASK_PAD_64 = BuildChange(
    4617,
    "864a0b67a",
    "2025-02-02",
    11583,
    "GGML_KQ_MASK_PAD 32 -> 64 (ggml/include/ggml.h): the KQ mask has pad64(n_tokens) rows",
)
ML_MLA = BuildChange(
    5137,
    "daa422881",
    "2025-04-15",
    12801,
    "DeepSeek MLA: a GGUF with attn_k_b/attn_v_b caches the latent K (kv_lora_rank + rope, one "
    "head) and a separate V of kv_lora_rank (src/llama-kv-cache.cpp allocates n_embd_v_gqa)",
)
ML_NO_CTX_PAD = BuildChange(
    6868,
    "85a7d8677",
    "2025-10-28",
    16812,
    "the KV cache size is no longer padded (before: llama_kv_cache::get_padding, 256 with flash "
    "attention and 32 without)",
)
ML_CTX_PAD_256 = BuildChange(
    6975,
    "16bcc1259",
    "2025-11-07",
    17046,
    "the context is padded to 256 (src/llama-context.cpp), flash attention or not",
)
ML_KQ_MASK_PAD_1 = BuildChange(
    7256,
    "2e1c9cd81",
    "2025-12-03",
    17505,
    "GGML_KQ_MASK_PAD 64 -> 1: the KQ mask has n_tokens rows (the constant went in #17910)",
)
ML_MLA_V_LESS = BuildChange(
    7832,
    "d9c6ce46f",
    "2026-01-25",
    19067,
    "MLA models keep no V cache (llama_kv_cache: has_v = !hparams.is_mla()); V is a view of K",
)

ML_FA_VALUE = BuildChange(
    6325,
    "e81b8e4b7",
    "2025-08-30",
    15434,
    "-fa takes on|off|auto and flash attention is on by default (before: a bare -fa, off)",
)
ML_FIT = BuildChange(
    7407,
    "b1f3a6e5d",
    "2025-12-15",
    16653,
    "-fit on|off: the engine fits unset parameters to the GPUs (on by default)",
)

MAINLINE_CHANGES = (
    ML_KQ_MASK_PAD_64,
    ML_MLA,
    ML_FA_VALUE,
    ML_NO_CTX_PAD,
    ML_CTX_PAD_256,
    ML_KQ_MASK_PAD_1,
    ML_FIT,
    ML_MLA_V_LESS,
)

# The oldest mainline build whose compute buffers and KV cache the model claims to describe: every
# term the model takes from mainline follows MAINLINE_CHANGES from here on (the files behind them,
# ggml-alloc.c, ggml-backend.cpp, ggml-cuda.cu, llama-graph.cpp, llama-kv-cache.cpp and
# llama-context.cpp, change nothing else the model uses between b5137 and b5331:
# ``git log daa422881..33eff402``; b5331 and the newest source were read in full).
MAINLINE_OLDEST_DESCRIBED = ML_MLA.build
