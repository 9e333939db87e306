"""Reading llama-server's output: typed events and a running load report, for both engines.

``llama-server`` tells what it did only in its log: which buffers it allocated on which device,
which tensors ``-ot`` moved, how far loading got, when it is ready, how fast each request ran and
why it gave up. :class:`EngineLogParser` reads that log line by line (stdout and stderr merged,
engines.md §4.5: library lines go to stderr, ik's ``INFO [ … ]`` lines to stdout) and turns each
line it understands into a frozen event; :meth:`EngineLogParser.report` sums the events into a
:class:`LoadReport` snapshot the process panel shows.

Both dialects are read by the same parser: ik_llama.cpp (``llm_load_tensors:``,
``llama_kv_cache_init:``, ``INFO [ main] …``) and mainline llama.cpp (``load_tensors:``,
``llama_kv_cache:``, ``srv  main: …``). :func:`detect_dialect` guesses which one wrote a log.

Sizes arrive as MiB with two decimals (``%8.2f MiB``) and are stored as bytes, so a size is exact
to ±5 KiB. Every repeated buffer line is a separate allocation and is summed: one ``CPU`` /
``CPU_Mapped`` model buffer per split GGUF file, and ik lists RPC devices twice and reserves a
compute buffer for each (engines.md §10, §11).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from moe_studio.core.gguf.ggml_types import Engine
from moe_studio.core.units import MiB, format_bytes

log = logging.getLogger(__name__)

__all__ = [
    "BufferKind",
    "BufferSize",
    "DeviceFound",
    "DeviceUsage",
    "EngineLogParser",
    "Event",
    "Failure",
    "FailureKind",
    "KvTotal",
    "LayerDevice",
    "LayersOffloaded",
    "Listening",
    "LoadPhase",
    "LoadProgress",
    "LoadReport",
    "MetadataLoaded",
    "ModelLoaded",
    "PinnedMemoryFallback",
    "RequestTiming",
    "TensorOverride",
    "UnusedTensor",
    "buffer_device",
    "detect_dialect",
    "expected_load_dots",
    "parse_log",
]


# --------------------------------------------------------------------------------------------
# Events


class BufferKind(StrEnum):
    """What a buffer holds, as the engines name it in their ``… buffer size`` lines."""

    MODEL = "model"
    KV = "kv"
    OUTPUT = "output"
    COMPUTE = "compute"


class LoadPhase(StrEnum):
    """How far a launch got; failures are attributed to the phase they happened in."""

    STARTING = "starting"
    METADATA = "metadata"  # GGUF header read, hyperparameters printed
    TENSORS = "tensors"  # model buffers allocated, tensor data loading (dots)
    CONTEXT = "context"  # context parameters printed, KV cache being allocated
    COMPUTE = "compute"  # KV done, output and compute buffers being reserved
    READY = "ready"  # model loaded and HTTP server listening
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event :class:`EngineLogParser` emits."""


@dataclass(frozen=True, slots=True)
class MetadataLoaded(Event):
    """``llama_model_loader: loaded meta data with N key-value pairs and M tensors from PATH``."""

    n_kv: int
    n_tensors: int
    path: str
    version: str


@dataclass(frozen=True, slots=True)
class DeviceFound(Event):
    """A device the engine will use (``CUDA0: using device CUDA0 - 23000 MiB free``).

    ``free_bytes`` is None when the line has no free-memory figure.
    """

    name: str
    free_bytes: int | None
    description: str = ""


@dataclass(frozen=True, slots=True)
class LayerDevice(Event):
    """ik's ``Setting default device in layer N to D``: the layer's weights and KV go to device D.

    D indexes ik's internal device list (RPC devices first, and listed twice; engines.md §11),
    not a CUDA number.
    """

    layer: int
    device: int


@dataclass(frozen=True, slots=True)
class TensorOverride(Event):
    """A tensor ``-ot`` moved (ik at INFO; mainline only with ``-v``).

    ``buffer`` is the effective buffer type the engine printed (``CUDA_Host`` for ``=CPU`` in an
    ik CUDA build). ``nbytes`` comes from ik's ``%.2f MiB`` or mainline's whole MiB.
    """

    tensor: str
    buffer: str
    nbytes: int
    type_name: str = ""


@dataclass(frozen=True, slots=True)
class LayersOffloaded(Event):
    """``offloaded N/M layers to GPU``."""

    offloaded: int
    total: int


@dataclass(frozen=True, slots=True)
class BufferSize(Event):
    """One ``… buffer size = X MiB`` line: ``nbytes`` allocated in buffer type ``buffer``."""

    kind: BufferKind
    buffer: str
    nbytes: int

    @property
    def device(self) -> str:
        return buffer_device(self.buffer)


@dataclass(frozen=True, slots=True)
class KvTotal(Event):
    """The KV cache summary line.

    ``parts`` are ``(label, ggml type, bytes)``: ``("K", "f16", …)``, ``("V", "f16", …)``, or for
    ik MLA ``("c^KV", "q8_0", …)`` and ``("kv^T", "f16", …)``. ``cells``/``layers`` only on
    mainline (``llama_kv_cache: size = … (512 cells, 4 layers, 1/1 seqs)``).
    """

    nbytes: int
    parts: tuple[tuple[str, str, int], ...]
    cells: int | None = None
    layers: int | None = None


@dataclass(frozen=True, slots=True)
class LoadProgress(Event):
    """Tensor data loading: ``dots`` printed so far, ``fraction`` an estimate in [0, 1]."""

    fraction: float
    dots: int
    done: bool


@dataclass(frozen=True, slots=True)
class UnusedTensor(Event):
    """``model has unused tensor X (size = N bytes) -- ignoring``: information, not a failure."""

    tensor: str
    nbytes: int


@dataclass(frozen=True, slots=True)
class PinnedMemoryFallback(Event):
    """``ggml_cuda_host_malloc: failed to allocate X MiB of pinned memory``: slower, not fatal."""

    nbytes: int
    reason: str


@dataclass(frozen=True, slots=True)
class ModelLoaded(Event):
    """The server finished loading (ik ``INFO [ main] model loaded``, mainline ``model loaded``)."""


@dataclass(frozen=True, slots=True)
class Listening(Event):
    """The HTTP server listens (ik ``HTTP server listening``, mainline ``listening on http://…``).

    Mainline listens before it loads (its ``/health`` answers 503 meanwhile), so readiness is
    :attr:`LoadReport.ready`: this event *and* :class:`ModelLoaded`.
    """

    host: str
    port: int | None


@dataclass(frozen=True, slots=True)
class RequestTiming(Event):
    """The timings printed after a request (``prompt eval time``, ``eval time``, ``total time``).

    ``slot``/``task`` are None for ``llama_print_timings:`` (the CLI tools). Rates may be ``inf``
    or ``nan`` when a phase took no measurable time.
    """

    prompt_tokens: int
    prompt_ms: float
    prompt_tokens_per_second: float
    eval_tokens: int
    eval_ms: float
    eval_tokens_per_second: float
    total_ms: float
    total_tokens: int
    slot: int | None = None
    task: int | None = None


class FailureKind(StrEnum):
    """Why a launch or run failed."""

    DEVICE_OUT_OF_MEMORY = "device_out_of_memory"  # cudaMalloc failed on device N
    BUFFER_ALLOCATION = "buffer_allocation"  # a buffer of a buffer type could not be allocated
    KV_CACHE = "kv_cache"  # the KV cache could not be allocated
    COMPUTE_BUFFERS = "compute_buffers"  # the compute buffers could not be reserved
    UNKNOWN_BUFFER_TYPE = "unknown_buffer_type"  # -ot names a buffer type that does not exist
    UNKNOWN_ARGUMENT = "unknown_argument"  # a flag this engine does not have
    INVALID_ARGUMENT = "invalid_argument"  # a flag with a value the engine rejects
    MODEL_LOAD = "model_load"  # error loading model (file, format, allocation)
    CUDA_ERROR = "cuda_error"  # a CUDA runtime error (aborts)
    ASSERTION = "assertion"  # GGML_ASSERT / GGML_ABORT
    ABORT_AT_EXIT = "abort_at_exit"  # glibc heap abort at exit; normal for ik after --rpc


@dataclass(frozen=True, slots=True)
class Failure(Event):
    """Something that stops the engine, with what a sentence for the user needs.

    Attributes:
        kind: What failed.
        message: The engine's own words (the reason part of the line).
        device: CUDA device number, when the engine named one.
        buffer: Buffer type name (``CUDA0``, ``CPU``, ``RPC0[host:port]``), when known.
        nbytes: Bytes requested, when the engine printed them.
        purpose: What the buffer was for, inferred from the load phase.
        argument: The offending command-line argument (or ``-ot`` value).
        available: The buffer types the engine listed after an unknown ``-ot`` buffer type.
        consequence: A summary line that only repeats a cause in other words (ik's
            ``ERR [ load_model] unable to load model`` on stdout, which a reader of two
            separate pipes may see before the cause on stderr).
    """

    kind: FailureKind
    message: str
    device: int | None = None
    buffer: str = ""
    nbytes: int | None = None
    purpose: BufferKind | None = None
    argument: str = ""
    available: tuple[str, ...] = ()
    consequence: bool = False

    @property
    def benign_after_stop(self) -> bool:
        """True for the heap abort ik prints at exit after ``--rpc`` (engines.md §11)."""
        return self.kind is FailureKind.ABORT_AT_EXIT

    def describe(self) -> str:
        """One sentence for the user."""
        size = f" {format_bytes(self.nbytes)}" if self.nbytes is not None else ""
        what = f" for the {_PURPOSE_WORDS[self.purpose]}" if self.purpose else ""
        where = self.buffer or (f"CUDA{self.device}" if self.device is not None else "")
        k = self.kind
        if k is FailureKind.DEVICE_OUT_OF_MEMORY:
            return (
                f"{where} ran out of memory allocating{size}{what} ({self.message}); "
                "move tensors off it or shorten the context."
            )
        if k is FailureKind.BUFFER_ALLOCATION:
            on = f" in {where}" if where else ""
            return f"The engine could not allocate{size}{what}{on}; that device is full."
        if k is FailureKind.KV_CACHE:
            on = f" on {where}" if where else ""
            return f"The KV cache could not be allocated{on}; shorten the context or quantize it."
        if k is FailureKind.COMPUTE_BUFFERS:
            on = f" on {where}" if where else ""
            return (
                f"The compute buffers{size} could not be allocated{on}; lower -ub or free memory."
            )
        if k is FailureKind.UNKNOWN_BUFFER_TYPE:
            name = f" {self.buffer!r}" if self.buffer else ""
            avail = ", ".join(self.available) if self.available else "unknown"
            return (
                f"-ot names the buffer type{name}, which this engine does not have "
                f"(it has: {avail})."
            )
        if k is FailureKind.UNKNOWN_ARGUMENT:
            return (
                f"The engine does not know the argument {self.argument}; "
                "it may belong to the other engine."
            )
        if k is FailureKind.INVALID_ARGUMENT:
            return f"The engine rejected the value of {self.argument}: {self.message}."
        if k is FailureKind.MODEL_LOAD:
            return f"The model could not be loaded: {self.message}."
        if k is FailureKind.CUDA_ERROR:
            dev = f" on CUDA{self.device}" if self.device is not None else ""
            return f"CUDA reported an error{dev}: {self.message}."
        if k is FailureKind.ASSERTION:
            return f"The engine aborted on an internal check: {self.message}."
        return (
            f"The engine aborted at exit ({self.message}); after a requested stop of a run "
            "with --rpc this is normal for ik_llama.cpp."
        )


# Loader events of mainline's --fit dry run, which are dropped.
_DRY_RUN_EVENTS = (
    MetadataLoaded,
    DeviceFound,
    TensorOverride,
    LayersOffloaded,
    BufferSize,
    KvTotal,
    LoadProgress,
    UnusedTensor,
)

_PURPOSE_WORDS = {
    BufferKind.MODEL: "model weights",
    BufferKind.KV: "KV cache",
    BufferKind.OUTPUT: "output buffer",
    BufferKind.COMPUTE: "compute buffer",
}

_HOST_BUFFERS = ("CPU", "CPU_Mapped", "CPU_REPACK", "CUDA_Host", "CPU_AARCH64")


def buffer_device(buffer: str) -> str:
    """The device a buffer type lives on: host buffers (``CPU_Mapped``, ``CUDA_Host``…) → ``CPU``.

    ``CUDA0`` stays ``CUDA0``; ``RPC0[host:port]`` stays itself.
    """
    if buffer in _HOST_BUFFERS or buffer.startswith("CPU"):
        return "CPU"
    return buffer


# --------------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True, slots=True)
class DeviceUsage:
    """Bytes one device holds, by buffer kind."""

    model: int = 0
    kv: int = 0
    output: int = 0
    compute: int = 0

    @property
    def total(self) -> int:
        return self.model + self.kv + self.output + self.compute


def _frozen(d: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a log said so far: buffers per buffer type, progress, overrides, readiness, failures.

    The buffer mappings are keyed by buffer-type name exactly as printed (``CPU_Mapped``,
    ``CUDA0``, ``RPC0[127.0.0.1:50052]``) and hold summed bytes; :attr:`devices` folds host
    buffers into ``CPU``.
    """

    dialect: Engine | None = None
    phase: LoadPhase = LoadPhase.STARTING
    metadata: MetadataLoaded | None = None
    progress: float = 0.0
    model_buffers: Mapping[str, int] = field(default_factory=dict)
    kv_buffers: Mapping[str, int] = field(default_factory=dict)
    output_buffers: Mapping[str, int] = field(default_factory=dict)
    compute_buffers: Mapping[str, int] = field(default_factory=dict)
    kv_total: int | None = None
    kv_parts: tuple[tuple[str, str, int], ...] = ()
    devices_found: tuple[DeviceFound, ...] = ()
    layer_devices: Mapping[int, int] = field(default_factory=dict)
    layers_offloaded: LayersOffloaded | None = None
    overrides: tuple[TensorOverride, ...] = ()
    unused_tensors: tuple[UnusedTensor, ...] = ()
    warnings: tuple[Event, ...] = ()
    model_loaded: bool = False
    listening: Listening | None = None
    failures: tuple[Failure, ...] = ()
    timings: tuple[RequestTiming, ...] = ()

    @property
    def ready(self) -> bool:
        """Loaded and listening: requests will be served."""
        return self.model_loaded and self.listening is not None and not self.failed

    @property
    def failed(self) -> bool:
        """A failure other than the benign abort at exit."""
        return any(not f.benign_after_stop for f in self.failures)

    @property
    def failure(self) -> Failure | None:
        """The root cause: the first failure that is neither a summary nor the benign abort."""
        real = [f for f in self.failures if not f.benign_after_stop]
        causes = [f for f in real if not f.consequence]
        first = causes or real or list(self.failures)
        return first[0] if first else None

    @property
    def last_timing(self) -> RequestTiming | None:
        return self.timings[-1] if self.timings else None

    @property
    def devices(self) -> Mapping[str, DeviceUsage]:
        """Bytes per device (host buffers folded into ``CPU``), in first-seen order."""
        acc: dict[str, dict[BufferKind, int]] = {}
        for kind, table in (
            (BufferKind.MODEL, self.model_buffers),
            (BufferKind.KV, self.kv_buffers),
            (BufferKind.OUTPUT, self.output_buffers),
            (BufferKind.COMPUTE, self.compute_buffers),
        ):
            for name, n in table.items():
                slot = acc.setdefault(buffer_device(name), {})
                slot[kind] = slot.get(kind, 0) + n
        return MappingProxyType(
            {
                dev: DeviceUsage(
                    model=k.get(BufferKind.MODEL, 0),
                    kv=k.get(BufferKind.KV, 0),
                    output=k.get(BufferKind.OUTPUT, 0),
                    compute=k.get(BufferKind.COMPUTE, 0),
                )
                for dev, k in acc.items()
            }
        )

    def buffers(self, kind: BufferKind) -> Mapping[str, int]:
        return {
            BufferKind.MODEL: self.model_buffers,
            BufferKind.KV: self.kv_buffers,
            BufferKind.OUTPUT: self.output_buffers,
            BufferKind.COMPUTE: self.compute_buffers,
        }[kind]


# --------------------------------------------------------------------------------------------
# Line formats (engines.md §4.5; checked against real logs in tests/data/logs)

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+|inf|nan)"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Mainline's optional `--log-prefix`/`--log-timestamps` decoration: "0.00.123.456 I ".
_ML_PREFIX = re.compile(r"^(\d+\.\d{2}\.\d{3}\.\d{3} )?[IWEDN] (?=\S)")

_META = re.compile(
    r"loaded meta data with (\d+) key-value pairs and (\d+) tensors from (.*?)"
    r"(?: \(version (.*)\))?\s*$"
)
_IK_DEVICE = re.compile(r"^(\S+): using device (\S+)(?: - (\d+) MiB free)?\s*$")
_ML_DEVICE = re.compile(r"^\w+: using device (\S+) \((.*?)\)(?: \((.*?)\))? - (\d+) MiB free\s*$")
_LAYER_DEVICE = re.compile(r"^Setting default device in layer\s+(\d+) to (\d+)")
_IK_OVERRIDE = re.compile(
    r"^Tensor (\S+) \(size = (" + _NUM + r") MiB\) buffer type overridden to (\S+)"
)
_ML_OVERRIDE = re.compile(
    r"^(?:\w+: )?tensor (\S+) \((\d+) MiB (\S+)\) buffer type overridden to (\S+)"
)
_OFFLOADED = re.compile(r"^\w+: offloaded (\d+)/(\d+) layers to GPU")
_MODEL_BUF = re.compile(
    r"^(?:llm_)?load_tensors:\s+(\S+) (?:model )?buffer size =\s*(" + _NUM + ") MiB"
)
_KV_BUF = re.compile(r"^\w+:\s+(\S+) KV buffer size =\s*(" + _NUM + ") MiB")
_OUT_BUF = re.compile(r"^\w+:\s+(\S+)\s+output buffer size =\s*(" + _NUM + ") MiB")
_COMPUTE_BUF = re.compile(r"^\w+:\s+(\S+) compute buffer size =\s*(" + _NUM + ") MiB")
_IK_KV_TOTAL = re.compile(r"^\w+: KV self size\s*=\s*(" + _NUM + r") MiB(.*)$")
_ML_KV_TOTAL = re.compile(
    r"^llama_kv_cache\w*: size =\s*(" + _NUM + r") MiB \(\s*(\d+) cells,\s*(\d+) layers[^)]*\)(.*)$"
)
_KV_PART = re.compile(r"([A-Za-z^][\w^-]*) \((\w+)\):\s*(" + _NUM + ") MiB")
_CONTEXT_START = re.compile(
    r"^(?:llama_init_from_model|llama_context|llama_new_context_with_model): n_ctx"
)
_ML_LOADING = re.compile(r"^srv\s+load_model: loading model ")
_UNUSED = re.compile(r"model has unused tensor (\S+) \(size = (\d+) bytes\)")
_PINNED = re.compile(
    r"failed to (?:allocate|register) (" + _NUM + r") MiB of pinned memory: ?(.*)$"
)

_IK_SERVER_LOG = re.compile(r"^\s*(INFO|WARN|ERR|VERB|DEBUG)\s+\[\s*(\S+)\]\s+(.*?)(?: \|(.*))?$")
_KV_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')
_ML_LISTEN = re.compile(r"listening on (?:(https?)://)?(\[[^\]]*\]|[^\s:/]+)(?::(\d+))?")
_ML_LISTEN_OLD = re.compile(r"HTTP server is listening, hostname: (\S+), port: (\d+)")

_SLOT_PREFIX = re.compile(r"^slot\s+\S+: id\s+(\d+) \| task (-?\d+) \| ?")
_PROMPT_EVAL = re.compile(
    r"^\s*prompt eval time =\s*("
    + _NUM
    + r") ms /\s*(\d+) tokens \(\s*("
    + _NUM
    + r") ms per token,\s*("
    + _NUM
    + r") tokens per second\)"
)
_EVAL = re.compile(
    r"^\s*eval time =\s*("
    + _NUM
    + r") ms /\s*(\d+) (?:tokens|runs)\s*\(\s*("
    + _NUM
    + r") ms per token,\s*("
    + _NUM
    + r") tokens per second\)"
)
_TOTAL = re.compile(r"^\s*total time =\s*(" + _NUM + r") ms /\s*(\d+) tokens")
_LIB_TIMING = re.compile(r"^(?:llama_print_timings|llama_perf_context_print):\s*")

_CUDA_OOM = re.compile(r"allocating (" + _NUM + r") MiB on device (\d+): cudaMalloc failed: (.*)$")
_ALLOC_BUFFER = re.compile(r"^(?:\w+: )?failed to allocate (\S+) buffer of size (\d+)")
_ALLOC_BUFT = re.compile(r"^Failed to allocate buffer type (\S+)")
_GGUF_OPEN = re.compile(r"^gguf_init_from_file\w*: (failed to open .*)$")
# Mainline's --fit (default on) first loads the model without allocating to measure it; the
# loader lines of that dry run (zero-sized buffers) are not the real load.
_FIT_START = re.compile(r"^(?:cmn\s+)?(?:common_init_\w*: fitting params|common_params_fit_impl:)")
_FIT_END = re.compile(r"^(?:cmn\s+)?common_fit_params: ")
_LOAD_ERROR = re.compile(r"^\w+: error loading model: (.*)$")
_ML_CTX_ERROR = re.compile(r"^\w+: failed to initialize the context: (.*)$")
_KV_FAIL = re.compile(r"failed to allocate buffer for kv cache")
_COMPUTE_FAIL = re.compile(r"failed to allocate compute (?:pp |tg )?buffers")
_UNKNOWN_ARG = re.compile(r"^error: (?:unknown|invalid) argument: (.*)$")
_INVALID_PARAM = re.compile(r"^error: invalid parameter for argument: (.*)$")
_ML_HANDLER_ERROR = re.compile(r'^error while handling argument "([^"]*)": (.*)$')
_IK_BAD_BUFT = re.compile(r"^error: Invalid tensor buffer type override: (.*)$")
_CUDA_ERROR = re.compile(r"^CUDA error: (.*)$")
_CUDA_WHERE = re.compile(r"^\s+current device: (-?\d+), in function (\S+) at (.*)$")
_ASSERT = re.compile(r"^\S+:\d+: (GGML_ASSERT\(.*\) failed|.*fatal error.*)$")
_HEAP_ABORT = re.compile(
    r"^(double free or corruption.*|free\(\): .*|corrupted size vs\. prev_size.*|"
    r"munmap_chunk\(\): invalid pointer)$"
)
# Consequences of a failure already reported (they repeat it in other words).
_SECONDARY = re.compile(
    r"failed to load model|failed to create context|unable to load model|"
    r"llama_kv_cache_init\(\) failed|exiting due to|failed to load models on startup"
)

_IK_MARKERS = re.compile(
    r"^(?:llm_load_tensors:|llm_load_print_meta:|llama_kv_cache_init:|"
    r"llama_init_from_model: (?:KV self size|n_ctx|attn_max_b|mla_attn|fused_moe)|"
    r"\s*(?:INFO|WARN|ERR|VERB) \[\s*\S+\] |Tensor \S+ \(size = |Setting default device in layer|"
    r"error: unknown argument:|error: Invalid tensor buffer type override:|llama_print_timings:)"
)
_ML_MARKERS = re.compile(
    r"^(?:load_tensors:|llama_context:|llama_kv_cache:|sched_reserve:|"
    r"llama_prepare_model_devices:|"
    r"srv\s+(?:main|llama_server|load_model|operator\(\)): |common_init_from_params:|"
    r"error: invalid argument:|error while handling argument|llama_perf_context_print:|"
    r"build: \d+ \(\w+\) with)"
)


def _float(text: str) -> float:
    return float(text)


def _mib_bytes(text: str) -> int:
    value = float(text)
    return round(value * MiB) if math.isfinite(value) else 0


def _clean(line: str) -> str:
    line = line.rstrip("\r\n")
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    return line


def _vote(line: str) -> Engine | None:
    """Which engine a cleaned line betrays, if any."""
    m = _ML_PREFIX.match(line)
    if m and m.group(1):
        return "mainline"  # only mainline stamps its lines ("0.00.001.159 I ")
    line = line[m.end() :] if m else line
    if _IK_MARKERS.match(line):
        return "ik"
    if _ML_MARKERS.match(line):
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
        vote = _vote(_clean(raw))
        ik += vote == "ik"
        ml += vote == "mainline"
    if ik == ml:
        return None
    return "ik" if ik > ml else "mainline"


# --------------------------------------------------------------------------------------------
# The parser


@dataclass(slots=True)
class _TimingDraft:
    slot: int | None = None
    task: int | None = None
    prompt: tuple[float, int, float] | None = None
    eval: tuple[float, int, float] | None = None


class EngineLogParser:
    """Incremental reader of llama-server output (both dialects, stdout and stderr merged).

    Feed complete lines with :meth:`feed`, or raw chunks as a pipe delivers them with
    :meth:`feed_text` (which also reports the loading dots of a line still being written). Read
    the summary with :meth:`report`.

    Args:
        dialect: The engine, when the caller knows it; otherwise it is guessed from the lines
            seen so far (:attr:`dialect`).
        expected_dots: The loading dots to expect (:func:`expected_load_dots` of the model's
            tensor sizes); without it the estimate assumes one dot per tensor, at most 100.

    Attributes:
        lines_seen: Complete lines fed so far (a log view can map events to lines with it).
    """

    def __init__(self, dialect: Engine | None = None, *, expected_dots: int | None = None) -> None:
        self._dialect = dialect
        self._expected_dots = expected_dots
        self._ik_votes = 0
        self._ml_votes = 0
        self._tail = ""
        self._tail_dots = 0
        self._phase = LoadPhase.STARTING
        self._stage = LoadPhase.STARTING  # the phase, never FAILED: what a failure interrupted
        self._metadata: MetadataLoaded | None = None
        self._progress = 0.0
        self._buffers: dict[BufferKind, dict[str, int]] = {k: {} for k in BufferKind}
        self._kv_total: int | None = None
        self._kv_parts: list[tuple[str, str, int]] = []
        self._devices: list[DeviceFound] = []
        self._layer_devices: dict[int, int] = {}
        self._offloaded: LayersOffloaded | None = None
        self._overrides: list[TensorOverride] = []
        self._unused: list[UnusedTensor] = []
        self._warnings: list[Event] = []
        self._model_loaded = False
        self._listening: Listening | None = None
        self._failures: list[Failure] = []
        self._timings: list[RequestTiming] = []
        self._timing: _TimingDraft | None = None
        self._available: list[str] | None = None  # collecting "Available buffer types:"
        self._pending_available: tuple[str, ...] = ()
        self._fit_dry_run = False
        self._cuda_error: str | None = None
        self.lines_seen = 0

    # -- public ---------------------------------------------------------------------------

    @property
    def dialect(self) -> Engine | None:
        """The engine given at construction, else the best guess from the lines so far."""
        if self._dialect is not None:
            return self._dialect
        if self._ik_votes == self._ml_votes:
            return None
        return "ik" if self._ik_votes > self._ml_votes else "mainline"

    def feed_text(self, text: str) -> list[Event]:
        """Feed a raw chunk of output; complete lines are parsed, the rest waits.

        A pending line made only of loading dots yields a :class:`LoadProgress` as it grows, so
        the bar moves before the engine prints the newline at 100 %.
        """
        events: list[Event] = []
        data = self._tail + text
        *lines, self._tail = re.split(r"\r?\n", data)
        for line in lines:
            events.extend(self.feed(line))
        stripped = self._tail.strip()
        if stripped and set(stripped) == {"."} and len(stripped) != self._tail_dots:
            self._tail_dots = len(stripped)
            events.append(self._progress_event(self._tail_dots, done=False))
        return events

    def finish(self) -> list[Event]:
        """Parse whatever is left after the process ended (a last line without newline)."""
        events: list[Event] = []
        if self._tail:
            tail, self._tail = self._tail, ""
            events.extend(self.feed(tail))
        events.extend(self._flush_cuda_error())
        self._end_available_list()
        return events

    def feed(self, line: str) -> list[Event]:
        """Parse one complete line (trailing newline optional) into zero or more events."""
        self.lines_seen += 1
        line = _clean(line)
        if self._dialect is None:
            vote = _vote(line)
            self._ik_votes += vote == "ik"
            self._ml_votes += vote == "mainline"
        line = _ML_PREFIX.sub("", line, count=1)
        self._tail_dots = 0
        events = self._flush_cuda_error(line)
        if _FIT_START.match(line):
            self._fit_dry_run = True
        elif _FIT_END.match(line):
            self._fit_dry_run = False
        events.extend(self._parse(line))
        kept: list[Event] = []
        for event in events:
            if self._fit_dry_run and isinstance(event, _DRY_RUN_EVENTS):
                continue
            if isinstance(event, Failure) and event in self._failures:
                continue  # mainline's --fit dry run and the real load fail alike
            self._apply(event)
            kept.append(event)
        return kept

    def report(self) -> LoadReport:
        """A frozen snapshot of everything read so far."""
        b = self._buffers
        return LoadReport(
            dialect=self.dialect,
            phase=self._phase,
            metadata=self._metadata,
            progress=self._progress,
            model_buffers=_frozen(b[BufferKind.MODEL]),
            kv_buffers=_frozen(b[BufferKind.KV]),
            output_buffers=_frozen(b[BufferKind.OUTPUT]),
            compute_buffers=_frozen(b[BufferKind.COMPUTE]),
            kv_total=self._kv_total,
            kv_parts=tuple(self._kv_parts),
            devices_found=tuple(self._devices),
            layer_devices=MappingProxyType(dict(self._layer_devices)),
            layers_offloaded=self._offloaded,
            overrides=tuple(self._overrides),
            unused_tensors=tuple(self._unused),
            warnings=tuple(self._warnings),
            model_loaded=self._model_loaded,
            listening=self._listening,
            failures=tuple(self._failures),
            timings=tuple(self._timings),
        )

    # -- parsing --------------------------------------------------------------------------

    def _progress_event(self, dots: int, *, done: bool) -> LoadProgress:
        if done:
            return LoadProgress(1.0, dots, True)
        expected = self._expected_dots
        if not expected:
            # One dot whenever the loaded percentage grows: at most 100, at most one per tensor.
            expected = min(100, self._metadata.n_tensors if self._metadata else 100)
        return LoadProgress(min(0.99, dots / max(1, expected)), dots, False)

    def _purpose(self) -> BufferKind | None:
        return {
            LoadPhase.METADATA: BufferKind.MODEL,
            LoadPhase.TENSORS: BufferKind.MODEL,
            LoadPhase.CONTEXT: BufferKind.KV,
            LoadPhase.COMPUTE: BufferKind.COMPUTE,
        }.get(self._stage)

    def _flush_cuda_error(self, line: str | None = None) -> list[Event]:
        """Emit a pending ``CUDA error:`` once the line after it tells (or not) the device."""
        if self._cuda_error is None:
            return []
        message, self._cuda_error = self._cuda_error, None
        where = _CUDA_WHERE.match(line) if line is not None else None
        if where:
            device = int(where.group(1))
            return [
                Failure(
                    FailureKind.CUDA_ERROR,
                    f"{message} in {where.group(2)}",
                    device=device if device >= 0 else None,
                    buffer=f"CUDA{device}" if device >= 0 else "",
                )
            ]
        return [Failure(FailureKind.CUDA_ERROR, message)]

    def _parse(self, line: str) -> list[Event]:
        if not line.strip():
            return []

        # "Available buffer types:" then one "  NAME" per type (engines.md §1.2).
        if self._available is not None:
            m = re.match(r"^\s+(\S+)\s*$", line)
            if m:
                self._available.append(m.group(1))
                return []
            self._end_available_list()
        if line.startswith("Available buffer types:"):
            self._available = []
            return []

        if line[0] == "." and set(line.strip()) == {"."}:
            return [self._progress_event(len(line.strip()), done=True)]

        timing = self._parse_timing(line)
        if timing is not None:
            return timing

        m = _IK_SERVER_LOG.match(line)
        if m:
            return self._parse_ik_server(m)

        for parse in (
            self._parse_load,
            self._parse_buffers,
            self._parse_failure,
            self._parse_ready,
        ):
            events = parse(line)
            if events is not None:
                return events
        return []

    def _end_available_list(self) -> None:
        """The ``Available buffer types:`` list ended: keep it for the error line.

        Mainline prints the list on stdout (buffered) and the error on stderr, so in a merged
        capture the list may come after the error; then the failure already recorded gets it.
        """
        if self._available is None:
            return
        available, self._available = tuple(self._available), None
        self._pending_available = available
        for i, f in enumerate(self._failures):
            if f.kind is FailureKind.UNKNOWN_BUFFER_TYPE and not f.available:
                self._failures[i] = replace(f, available=available)

    def _parse_timing(self, line: str) -> list[Event] | None:
        slot: int | None = None
        task: int | None = None
        m = _SLOT_PREFIX.match(line)
        if m:
            slot, task = int(m.group(1)), int(m.group(2))
            rest = line[m.end() :]
            if not rest.strip():
                # ik: the prefix alone, the three lines follow without it.
                self._timing = _TimingDraft(slot, task)
                return []
        else:
            lib = _LIB_TIMING.match(line)
            rest = line[lib.end() :] if lib else line
        pm = _PROMPT_EVAL.match(rest)
        if pm:
            draft = self._timing if self._timing and self._timing.prompt is None else None
            if draft is None or (m and (draft.slot, draft.task) != (slot, task)):
                draft = _TimingDraft(slot, task)
            draft.prompt = (_float(pm.group(1)), int(pm.group(2)), _float(pm.group(4)))
            self._timing = draft
            return []
        em = _EVAL.match(rest)
        if em:
            draft = self._timing or _TimingDraft(slot, task)
            draft.eval = (_float(em.group(1)), int(em.group(2)), _float(em.group(4)))
            self._timing = draft
            return []
        tm = _TOTAL.match(rest)
        if tm:
            draft = self._timing or _TimingDraft(slot, task)
            self._timing = None
            p_ms, p_n, p_tps = draft.prompt or (0.0, 0, 0.0)
            e_ms, e_n, e_tps = draft.eval or (0.0, 0, 0.0)
            return [
                RequestTiming(
                    prompt_tokens=p_n,
                    prompt_ms=p_ms,
                    prompt_tokens_per_second=p_tps,
                    eval_tokens=e_n,
                    eval_ms=e_ms,
                    eval_tokens_per_second=e_tps,
                    total_ms=_float(tm.group(1)),
                    total_tokens=int(tm.group(2)),
                    slot=draft.slot if draft.slot is not None else slot,
                    task=draft.task if draft.task is not None else task,
                )
            ]
        if m:
            return []  # another slot line (prompt progress, graphs reused, …)
        return None

    def _parse_ik_server(self, m: re.Match[str]) -> list[Event]:
        level, _function, message = m.group(1), m.group(2), m.group(3).strip()
        pairs = {k: v for k, v in _KV_PAIR.findall(m.group(4) or "")}
        if message == "model loaded":
            return [ModelLoaded()]
        if message == "HTTP server listening":
            host = _json_str(pairs.get("hostname", ""))
            port = _json_str(pairs.get("port", ""))
            return [Listening(host, int(port) if port.isdigit() else None)]
        if level == "ERR" and message == "unable to load model":
            model = _json_str(pairs.get("model", ""))
            text = f"unable to load model {model}".strip()
            return [Failure(FailureKind.MODEL_LOAD, text, consequence=True)]
        return []

    def _parse_load(self, line: str) -> list[Event] | None:
        m = _META.search(line)
        if m and line.startswith("llama_model_loader:"):
            return [MetadataLoaded(int(m.group(1)), int(m.group(2)), m.group(3), m.group(4) or "")]
        m = _LAYER_DEVICE.match(line)
        if m:
            return [LayerDevice(int(m.group(1)), int(m.group(2)))]
        m = _IK_OVERRIDE.match(line)
        if m:
            return [TensorOverride(m.group(1), m.group(3), _mib_bytes(m.group(2)))]
        m = _ML_OVERRIDE.match(line)
        if m:
            return [TensorOverride(m.group(1), m.group(4), int(m.group(2)) * MiB, m.group(3))]
        m = _OFFLOADED.match(line)
        if m:
            return [LayersOffloaded(int(m.group(1)), int(m.group(2)))]
        m = _ML_DEVICE.match(line)
        if m:
            return [DeviceFound(m.group(1), int(m.group(4)) * MiB, m.group(2))]
        m = _IK_DEVICE.match(line)
        if m and m.group(1) == m.group(2):
            free = m.group(3)
            return [DeviceFound(m.group(2), int(free) * MiB if free is not None else None)]
        m = _UNUSED.search(line)
        if m:
            return [UnusedTensor(m.group(1), int(m.group(2)))]
        m = _PINNED.search(line)
        if m:
            return [PinnedMemoryFallback(_mib_bytes(m.group(1)), m.group(2).strip())]
        if _CONTEXT_START.match(line):
            self._phase_to(LoadPhase.CONTEXT)
            return []
        if _ML_LOADING.match(line):
            # Mainline at its default verbosity prints nothing else before the tensors load.
            self._phase_to(LoadPhase.METADATA)
            return []
        return None

    def _parse_buffers(self, line: str) -> list[Event] | None:
        if "buffer size =" in line:
            for kind, rx in (
                (BufferKind.MODEL, _MODEL_BUF),
                (BufferKind.KV, _KV_BUF),
                (BufferKind.OUTPUT, _OUT_BUF),
                (BufferKind.COMPUTE, _COMPUTE_BUF),
            ):
                m = rx.match(line)
                if m:
                    return [BufferSize(kind, m.group(1), _mib_bytes(m.group(2)))]
        m = _IK_KV_TOTAL.match(line)
        if m:
            return [KvTotal(_mib_bytes(m.group(1)), _kv_parts(m.group(2)))]
        m = _ML_KV_TOTAL.match(line)
        if m:
            return [
                KvTotal(
                    _mib_bytes(m.group(1)),
                    _kv_parts(m.group(4)),
                    cells=int(m.group(2)),
                    layers=int(m.group(3)),
                )
            ]
        return None

    def _parse_failure(self, line: str) -> list[Event] | None:
        m = _CUDA_OOM.search(line)
        if m:
            device = int(m.group(2))
            return [
                Failure(
                    FailureKind.DEVICE_OUT_OF_MEMORY,
                    m.group(3).strip(),
                    device=device,
                    buffer=f"CUDA{device}",
                    nbytes=_mib_bytes(m.group(1)),
                    purpose=self._purpose(),
                )
            ]
        m = _ALLOC_BUFFER.match(line)
        if m:
            # ggml-alloc: a compute (gallocr) or tensor-range buffer; the phase says which.
            buffer = m.group(1)
            return [
                Failure(
                    FailureKind.BUFFER_ALLOCATION,
                    f"failed to allocate {buffer} buffer",
                    buffer=buffer,
                    device=_cuda_index(buffer),
                    nbytes=int(m.group(2)),
                    purpose=self._purpose(),
                )
            ]
        m = _ALLOC_BUFT.match(line)
        if m:
            buffer = m.group(1)
            return [
                Failure(
                    FailureKind.BUFFER_ALLOCATION,
                    f"failed to allocate buffer type {buffer}",
                    buffer=buffer,
                    device=_cuda_index(buffer),
                    purpose=BufferKind.MODEL,
                )
            ]
        if _KV_FAIL.search(line):
            buffer = self._last_alloc_buffer()
            return [
                Failure(
                    FailureKind.KV_CACHE,
                    "failed to allocate buffer for kv cache",
                    buffer=buffer,
                    device=_cuda_index(buffer),
                    purpose=BufferKind.KV,
                )
            ]
        if _COMPUTE_FAIL.search(line):
            failed = self._last_failure(
                FailureKind.BUFFER_ALLOCATION, FailureKind.DEVICE_OUT_OF_MEMORY
            )
            return [
                Failure(
                    FailureKind.COMPUTE_BUFFERS,
                    "failed to allocate compute buffers",
                    buffer=failed.buffer if failed else "",
                    device=failed.device if failed else None,
                    nbytes=failed.nbytes if failed else None,
                    purpose=BufferKind.COMPUTE,
                )
            ]
        m = _GGUF_OPEN.match(line)
        if m:
            return [Failure(FailureKind.MODEL_LOAD, m.group(1).strip())]
        m = _LOAD_ERROR.match(line)
        if m:
            reason = m.group(1).strip()
            ml_buffer = re.match(r"unable to allocate (?!backend )(\S+) buffer", reason)
            return [
                Failure(
                    FailureKind.MODEL_LOAD,
                    reason,
                    buffer=ml_buffer.group(1) if ml_buffer else "",
                    device=_cuda_index(ml_buffer.group(1)) if ml_buffer else None,
                    purpose=BufferKind.MODEL if "allocate" in reason else None,
                )
            ]
        m = _ML_CTX_ERROR.match(line)
        if m:
            return [Failure(FailureKind.MODEL_LOAD, m.group(1).strip())]
        m = _UNKNOWN_ARG.match(line)
        if m:
            return [
                Failure(
                    FailureKind.UNKNOWN_ARGUMENT, "unknown argument", argument=m.group(1).strip()
                )
            ]
        m = _IK_BAD_BUFT.match(line)
        if m:
            value = m.group(1)
            return [
                Failure(
                    FailureKind.UNKNOWN_BUFFER_TYPE,
                    "Invalid tensor buffer type override",
                    buffer=value.split("=", 1)[1] if "=" in value else value,
                    argument=value,
                    available=self._pending_available,
                )
            ]
        m = _ML_HANDLER_ERROR.match(line)
        if m:
            arg, reason = m.group(1), m.group(2).strip()
            if "unknown buffer type" in reason:
                return [
                    Failure(
                        FailureKind.UNKNOWN_BUFFER_TYPE,
                        reason,
                        argument=arg,
                        available=self._pending_available,
                    )
                ]
            return [Failure(FailureKind.INVALID_ARGUMENT, reason, argument=arg)]
        m = _INVALID_PARAM.match(line)
        if m:
            if self._last_failure(FailureKind.UNKNOWN_BUFFER_TYPE):
                return []  # ik's second line after an unknown -ot buffer type
            return [
                Failure(
                    FailureKind.INVALID_ARGUMENT, "invalid parameter", argument=m.group(1).strip()
                )
            ]
        m = _CUDA_ERROR.match(line)
        if m:
            self._cuda_error = m.group(1).strip()
            return []
        m = _ASSERT.match(line)
        if m:
            return [Failure(FailureKind.ASSERTION, m.group(1).strip())]
        m = _HEAP_ABORT.match(line.strip())
        if m:
            return [Failure(FailureKind.ABORT_AT_EXIT, m.group(1))]
        if _SECONDARY.search(line) and ("error" in line.lower() or "fail" in line.lower()):
            if self._failures:
                return []
            reason = line.split(": ", 1)[-1].strip()
            return [Failure(FailureKind.MODEL_LOAD, reason, consequence=True)]
        return None

    def _parse_ready(self, line: str) -> list[Event] | None:
        if not line.startswith(("srv ", "main:")):
            return None
        body = line.split(": ", 1)[1] if ": " in line else line
        if body.strip() == "model loaded":
            return [ModelLoaded()]
        m = _ML_LISTEN_OLD.search(body)
        if m:
            return [Listening(m.group(1), int(m.group(2)))]
        m = _ML_LISTEN.search(body)
        if m:
            host = m.group(2).strip("[]")
            return [Listening(host, int(m.group(3)) if m.group(3) else None)]
        return None

    # -- state ----------------------------------------------------------------------------

    def _phase_to(self, phase: LoadPhase) -> None:
        order = list(LoadPhase)
        if phase is not LoadPhase.FAILED and order.index(phase) > order.index(self._stage):
            self._stage = phase
        if self._phase is not LoadPhase.FAILED:
            self._phase = phase if phase is LoadPhase.FAILED else self._stage

    def _last_failure(self, *kinds: FailureKind) -> Failure | None:
        for f in reversed(self._failures):
            if f.kind in kinds:
                return f
        return None

    def _last_alloc_buffer(self) -> str:
        f = self._last_failure(FailureKind.DEVICE_OUT_OF_MEMORY, FailureKind.BUFFER_ALLOCATION)
        return f.buffer if f else ""

    def _apply(self, event: Event) -> None:
        if isinstance(event, MetadataLoaded):
            self._metadata = event
            self._phase_to(LoadPhase.METADATA)
        elif isinstance(event, LoadProgress):
            self._progress = max(self._progress, event.fraction)
        elif isinstance(event, BufferSize):
            table = self._buffers[event.kind]
            table[event.buffer] = table.get(event.buffer, 0) + event.nbytes
            phase = {
                BufferKind.MODEL: LoadPhase.TENSORS,
                BufferKind.KV: LoadPhase.CONTEXT,
                BufferKind.OUTPUT: LoadPhase.CONTEXT,
                BufferKind.COMPUTE: LoadPhase.COMPUTE,
            }[event.kind]
            self._phase_to(phase)
        elif isinstance(event, KvTotal):
            self._kv_total = (self._kv_total or 0) + event.nbytes
            self._kv_parts.extend(event.parts)
            self._phase_to(LoadPhase.COMPUTE)
        elif isinstance(event, DeviceFound):
            if event not in self._devices:
                self._devices.append(event)
        elif isinstance(event, LayerDevice):
            self._layer_devices[event.layer] = event.device
            self._phase_to(LoadPhase.TENSORS)
        elif isinstance(event, LayersOffloaded):
            self._offloaded = event
            self._phase_to(LoadPhase.TENSORS)
        elif isinstance(event, TensorOverride):
            self._overrides.append(event)
            self._phase_to(LoadPhase.TENSORS)
        elif isinstance(event, UnusedTensor):
            self._unused.append(event)
        elif isinstance(event, PinnedMemoryFallback):
            self._warnings.append(event)
        elif isinstance(event, ModelLoaded):
            self._model_loaded = True
            self._progress = 1.0
        elif isinstance(event, Listening):
            self._listening = event
        elif isinstance(event, RequestTiming):
            self._timings.append(event)
        elif isinstance(event, Failure):
            self._failures.append(event)
            if not event.benign_after_stop:
                self._phase_to(LoadPhase.FAILED)
        if self._model_loaded and self._listening is not None:
            self._phase_to(LoadPhase.READY)


def _kv_parts(text: str) -> tuple[tuple[str, str, int], ...]:
    return tuple((label, typ, _mib_bytes(n)) for label, typ, n in _KV_PART.findall(text))


def _cuda_index(buffer: str) -> int | None:
    m = re.fullmatch(r"CUDA(\d+)", buffer)
    return int(m.group(1)) if m else None


def _json_str(value: str) -> str:
    if value.startswith('"'):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value.strip('"')
        return str(decoded)
    return value


def parse_log(lines: Iterable[str], dialect: Engine | None = None) -> LoadReport:
    """Read a whole log (an iterable of lines, e.g. an open file) into a :class:`LoadReport`."""
    parser = EngineLogParser(dialect)
    for line in lines:
        parser.feed(line)
    parser.finish()
    return parser.report()
