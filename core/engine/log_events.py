"""What llama-server's log says, as values: the events the parser emits (buffers, devices,
overrides, progress, readiness, request timings, failures) and the :class:`LoadReport` they sum
to. The line formats that produce them are in ``log_patterns``, the parser in ``log_parser``.

Sizes arrive as MiB with two decimals (``%8.2f MiB``) and are stored as bytes, so a size is exact
to ±5 KiB. Every repeated buffer line is a separate allocation and is summed: one ``CPU`` /
``CPU_Mapped`` model buffer per split GGUF file, and ik lists RPC devices twice and reserves a
compute buffer for each (engines.md §10, §11).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from moe_studio.core.gguf.ggml_types import Engine
from moe_studio.core.units import format_bytes

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
class SplitShare(Event):
    """ik ``-sm graph``: one device's part of the split buffers of a kind (``MODEL`` or ``KV``).

    ik prints the bytes its split tensors take on each device in a block: ``Estimated model buffer
    size per device:`` / ``KV cache size per device:``, then ``    Device 1:  1234.56 MiB``.
    ``index`` is the device's place in ik's device list (the ``using device`` lines); in a CUDA
    build the pieces of device ``i`` sit on CUDA device ``i``.
    """

    kind: BufferKind
    index: int
    nbytes: int


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


_PURPOSE_WORDS = {
    BufferKind.MODEL: "model weights",
    BufferKind.KV: "KV cache",
    BufferKind.OUTPUT: "output buffer",
    BufferKind.COMPUTE: "compute buffer",
}

_HOST_BUFFERS = ("CPU", "CPU_Mapped", "CPU_REPACK", "CUDA_Host", "CPU_AARCH64")


# ik's split buffer types (``-sm graph``): ``CUDA_Split`` (``ggml/src/ggml-cuda.cu`` 830, 1337),
# ``SYCL_Split``.
SPLIT_SUFFIX = "_Split"


def buffer_device(buffer: str) -> str:
    """The device a buffer type lives on: host buffers (``CPU_Mapped``, ``CUDA_Host``…) → ``CPU``.

    ``CUDA0`` stays ``CUDA0``; ``RPC0[host:port]`` stays itself.
    """
    if buffer in _HOST_BUFFERS or buffer.startswith("CPU"):
        return "CPU"
    return buffer


def spread_split(buffer: str, nbytes: int, shares: Sequence[int]) -> list[tuple[str, int]]:
    """A buffer's bytes per device: a split buffer (``CUDA_Split``) over ``CUDA0``, ``CUDA1``…
    in proportion to ik's per-device figures ``shares`` (:class:`SplitShare`, by device index);
    any other buffer, or a split one without figures, stays whole on :func:`buffer_device`.

    The split buffer's size is every piece plus row padding (``ggml-cuda.cu`` 1362-1380), the
    per-device figures the pieces alone, so the padding is shared out with them.
    """
    total = sum(shares)
    if not buffer.endswith(SPLIT_SUFFIX) or total <= 0:
        return [(buffer_device(buffer), nbytes)]
    prefix = buffer[: -len(SPLIT_SUFFIX)]
    last = max(i for i, share in enumerate(shares) if share > 0)
    out: list[tuple[str, int]] = []
    given = 0
    for i, share in enumerate(shares):
        if share <= 0:
            continue
        part = nbytes - given if i == last else nbytes * share // total
        given += part
        out.append((f"{prefix}{i}", part))
    return out


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


def frozen_mapping(d: Mapping[str, int]) -> Mapping[str, int]:
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
    split_model: tuple[int, ...] = ()  # -sm graph: split weights per device index
    split_kv: tuple[int, ...] = ()  # -sm graph: split KV cache per device index
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
        """Bytes per device (host buffers folded into ``CPU``, ik's ``-sm graph`` split buffers
        shared out over their devices by :func:`spread_split`), in first-seen order."""
        acc: dict[str, dict[BufferKind, int]] = {}
        for kind, table, shares in (
            (BufferKind.MODEL, self.model_buffers, self.split_model),
            (BufferKind.KV, self.kv_buffers, self.split_kv),
            (BufferKind.OUTPUT, self.output_buffers, ()),
            (BufferKind.COMPUTE, self.compute_buffers, ()),
        ):
            for name, n in table.items():
                for device, part in spread_split(name, n, shares):
                    slot = acc.setdefault(device, {})
                    slot[kind] = slot.get(kind, 0) + part
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
