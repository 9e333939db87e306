"""The line formats of both engines' logs (regular expressions and the small helpers that read
them), and :func:`detect_dialect`, which guesses from a few lines which engine wrote a log."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from moe_studio.core.gguf.ggml_types import Engine
from moe_studio.core.units import MiB

# --------------------------------------------------------------------------------------------
# Line formats (engines.md §4.5; checked against real logs in tests/data/logs)

NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+|inf|nan)"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Mainline's optional `--log-prefix`/`--log-timestamps` decoration: "0.00.123.456 I ".
ML_PREFIX = re.compile(r"^(\d+\.\d{2}\.\d{3}\.\d{3} )?[IWEDN] (?=\S)")

META = re.compile(
    r"loaded meta data with (\d+) key-value pairs and (\d+) tensors from (.*?)"
    r"(?: \(version (.*)\))?\s*$"
)
IK_DEVICE = re.compile(r"^(\S+): using device (\S+)(?: - (\d+) MiB free)?\s*$")
ML_DEVICE = re.compile(r"^\w+: using device (\S+) \((.*?)\)(?: \((.*?)\))? - (\d+) MiB free\s*$")
LAYER_DEVICE = re.compile(r"^Setting default device in layer\s+(\d+) to (\d+)")
IK_OVERRIDE = re.compile(
    r"^Tensor (\S+) \(size = (" + NUM + r") MiB\) buffer type overridden to (\S+)"
)
ML_OVERRIDE = re.compile(
    r"^(?:\w+: )?tensor (\S+) \((\d+) MiB (\S+)\) buffer type overridden to (\S+)"
)
OFFLOADED = re.compile(r"^\w+: offloaded (\d+)/(\d+) layers to GPU")
MODEL_BUF = re.compile(
    r"^(?:llm_)?load_tensors:\s+(\S+) (?:model )?buffer size =\s*(" + NUM + ") MiB"
)
KV_BUF = re.compile(r"^\w+:\s+(\S+) KV buffer size =\s*(" + NUM + ") MiB")
OUT_BUF = re.compile(r"^\w+:\s+(\S+)\s+output buffer size =\s*(" + NUM + ") MiB")
OLD_RPC_NAME = re.compile(r"^RPC\[(.+)\]$")  # ik build 3737: "RPC[127.0.0.1:50052]"
COMPUTE_BUF = re.compile(r"^\w+:\s+(\S+) compute buffer size =\s*(" + NUM + ") MiB")
# ik ``-sm graph``/``-sm attn``: the split tensors live in one ``CUDA_Split`` buffer (its size is
# every GPU's pieces together, ``ggml-cuda.cu`` 1362 ``get_alloc_size``; piece i is allocated on
# CUDA device i, ``init_tensor`` 852-883), and ik prints each device's share in a block after the
# header: ``src/llama-load-tensors.cpp`` 5778-5780 for the weights ("    Device %d:  %8.2f MiB"),
# ``src/llama.cpp`` 1619-1621 for the KV cache ("    Device %d:  %g MiB").
SPLIT_MODEL_HEAD = re.compile(r"^Estimated model buffer size per device:\s*$")
SPLIT_KV_HEAD = re.compile(r"^\w+: KV cache size per device(?: \(MLA replicated\))?:\s*$")
SPLIT_DEVICE = re.compile(r"^\s+Device (\d+):\s+(" + NUM + r"(?:[eE][-+]?\d+)?) MiB\s*$")
IK_KV_TOTAL = re.compile(r"^\w+: KV self size\s*=\s*(" + NUM + r") MiB(.*)$")
ML_KV_TOTAL = re.compile(
    r"^llama_kv_cache\w*: size =\s*(" + NUM + r") MiB \(\s*(\d+) cells,\s*(\d+) layers[^)]*\)(.*)$"
)
KV_PART = re.compile(r"([A-Za-z^][\w^-]*) \((\w+)\):\s*(" + NUM + ") MiB")
CONTEXT_START = re.compile(
    r"^(?:llama_init_from_model|llama_context|llama_new_context_with_model): n_ctx"
)
ML_LOADING = re.compile(r"^srv\s+load_model: loading model ")
UNUSED = re.compile(r"model has unused tensor (\S+) \(size = (\d+) bytes\)")
PINNED = re.compile(r"failed to (?:allocate|register) (" + NUM + r") MiB of pinned memory: ?(.*)$")

IK_SERVER_LOG = re.compile(r"^\s*(INFO|WARN|ERR|VERB|DEBUG)\s+\[\s*(\S+)\]\s+(.*?)(?: \|(.*))?$")
KV_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')
ML_LISTEN = re.compile(r"listening on (?:(https?)://)?(\[[^\]]*\]|[^\s:/]+)(?::(\d+))?")
ML_LISTEN_OLD = re.compile(r"HTTP server is listening, hostname: (\S+), port: (\d+)")

SLOT_PREFIX = re.compile(r"^slot\s+\S+: id\s+(\d+) \| task (-?\d+) \| ?")
PROMPT_EVAL = re.compile(
    r"^\s*prompt eval time =\s*("
    + NUM
    + r") ms /\s*(\d+) tokens \(\s*("
    + NUM
    + r") ms per token,\s*("
    + NUM
    + r") tokens per second\)"
)
EVAL = re.compile(
    r"^\s*eval time =\s*("
    + NUM
    + r") ms /\s*(\d+) (?:tokens|runs)\s*\(\s*("
    + NUM
    + r") ms per token,\s*("
    + NUM
    + r") tokens per second\)"
)
TOTAL = re.compile(r"^\s*total time =\s*(" + NUM + r") ms /\s*(\d+) tokens")
LIB_TIMING = re.compile(r"^(?:llama_print_timings|llama_perf_context_print):\s*")

CUDA_OOM = re.compile(r"allocating (" + NUM + r") MiB on device (\d+): cudaMalloc failed: (.*)$")
ALLOC_BUFFER = re.compile(r"^(?:\w+: )?failed to allocate (\S+) buffer of size (\d+)")
ALLOC_BUFT = re.compile(r"^Failed to allocate buffer type (\S+)")
GGUF_OPEN = re.compile(r"^gguf_init_from_file\w*: (failed to open .*)$")
# Mainline's --fit (default on) first loads the model without allocating to measure it; the
# loader lines of that dry run (zero-sized buffers) are not the real load.
FIT_START = re.compile(r"^(?:cmn\s+)?(?:common_init_\w*: fitting params|common_params_fit_impl:)")
FIT_END = re.compile(r"^(?:cmn\s+)?common_fit_params: ")
LOAD_ERROR = re.compile(r"^\w+: error loading model: (.*)$")
ML_CTX_ERROR = re.compile(r"^\w+: failed to initialize the context: (.*)$")
KV_FAIL = re.compile(r"failed to allocate buffer for kv cache")
COMPUTE_FAIL = re.compile(r"failed to allocate compute (?:pp |tg )?buffers")
UNKNOWN_ARG = re.compile(r"^error: (?:unknown|invalid) argument: (.*)$")
INVALID_PARAM = re.compile(r"^error: invalid parameter for argument: (.*)$")
ML_HANDLER_ERROR = re.compile(r'^error while handling argument "([^"]*)": (.*)$')
IK_BAD_BUFT = re.compile(r"^error: Invalid tensor buffer type override: (.*)$")
CUDA_ERROR = re.compile(r"^CUDA error: (.*)$")
CUDA_WHERE = re.compile(r"^\s+current device: (-?\d+), in function (\S+) at (.*)$")
ASSERT = re.compile(r"^\S+:\d+: (GGML_ASSERT\(.*\) failed|.*fatal error.*)$")
HEAP_ABORT = re.compile(
    r"^(double free or corruption.*|free\(\): .*|corrupted size vs\. prev_size.*|"
    r"munmap_chunk\(\): invalid pointer)$"
)
# Consequences of a failure already reported (they repeat it in other words).
SECONDARY = re.compile(
    r"failed to load model|failed to create context|unable to load model|"
    r"llama_kv_cache_init\(\) failed|exiting due to|failed to load models on startup"
)

IK_MARKERS = re.compile(
    r"^(?:llm_load_tensors:|llm_load_print_meta:|llama_kv_cache_init:|"
    r"llama_init_from_model: (?:KV self size|n_ctx|attn_max_b|mla_attn|fused_moe)|"
    r"\s*(?:INFO|WARN|ERR|VERB) \[\s*\S+\] |Tensor \S+ \(size = |Setting default device in layer|"
    r"error: unknown argument:|error: Invalid tensor buffer type override:|llama_print_timings:)"
)
ML_MARKERS = re.compile(
    r"^(?:load_tensors:|llama_context:|llama_kv_cache:|sched_reserve:|"
    r"llama_prepare_model_devices:|"
    r"srv\s+(?:main|llama_server|load_model|operator\(\)): |common_init_from_params:|"
    r"error: invalid argument:|error while handling argument|llama_perf_context_print:|"
    r"build: \d+ \(\w+\) with)"
)


def to_float(text: str) -> float:
    return float(text)


def mib_bytes(text: str) -> int:
    value = float(text)
    return round(value * MiB) if math.isfinite(value) else 0


def clean(line: str) -> str:
    line = line.rstrip("\r\n")
    if "\x1b" in line:
        line = ANSI.sub("", line)
    return line


def vote(line: str) -> Engine | None:
    """Which engine a cleaned line betrays, if any."""
    m = ML_PREFIX.match(line)
    if m and m.group(1):
        return "mainline"  # only mainline stamps its lines ("0.00.001.159 I ")
    line = line[m.end() :] if m else line
    if IK_MARKERS.match(line):
        return "ik"
    if ML_MARKERS.match(line):
        return "mainline"
    return None


def expected_load_dots(tensor_bytes: Iterable[int]) -> int:
    """How many loading dots the engines print for tensors of these sizes, in load order.

    Both print a dot whenever the loaded share of bytes passes another whole percent (at most
    100); a tensor under 1 % often passes none, so a model of few tensors prints fewer dots
    than it has tensors. Real logs differ by a few dots (the engines load in their own order).
    """
    sizes = [n for n in tensor_bytes if n > 0]
    total = sum(sizes)
    done = percent = dots = 0
    for n in sizes:
        done += n
        now = 100 * done // total
        if now > percent:
            percent = now
            dots += 1
    return dots


def detect_dialect(lines: Iterable[str]) -> Engine | None:
    """Guess which engine wrote a log from its prefixes; None when nothing tells.

    ik_llama.cpp keeps the older ``llm_load_tensors:``/``llama_kv_cache_init:`` names and its
    ``INFO [ main]`` server log; mainline prints ``load_tensors:``, ``llama_context:`` and
    ``srv  llama_server:`` and, by default, stamps each line (``0.00.001.159 I``). Both print
    ``print_info:`` and ``srv  init:`` lines, which therefore do not count.
    """
    ik = ml = 0
    for raw in lines:
        said = vote(clean(raw))
        ik += said == "ik"
        ml += said == "mainline"
    if ik == ml:
        return None
    return "ik" if ik > ml else "mainline"
