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

The events and the report are in ``log_events``, the line formats in ``log_patterns``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from types import MappingProxyType

from moe_studio.core.engine import log_patterns as lp
from moe_studio.core.engine.log_events import (
    BufferKind,
    BufferSize,
    DeviceFound,
    Event,
    Failure,
    FailureKind,
    KvTotal,
    LayerDevice,
    LayersOffloaded,
    Listening,
    LoadPhase,
    LoadProgress,
    LoadReport,
    MetadataLoaded,
    ModelLoaded,
    PinnedMemoryFallback,
    RequestTiming,
    SplitShare,
    TensorOverride,
    UnusedTensor,
    frozen_mapping,
)
from moe_studio.core.gguf.ggml_types import Engine
from moe_studio.core.units import MiB

log = logging.getLogger(__name__)


# Loader events of mainline's --fit dry run, which are dropped.
_DRY_RUN_EVENTS = (
    MetadataLoaded,
    DeviceFound,
    TensorOverride,
    LayersOffloaded,
    BufferSize,
    KvTotal,
    SplitShare,
    LoadProgress,
    UnusedTensor,
)


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
        self._split: dict[BufferKind, dict[int, int]] = {BufferKind.MODEL: {}, BufferKind.KV: {}}
        self._split_block: BufferKind | None = None  # reading a "… per device:" block
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
        line = lp.clean(line)
        if self._dialect is None:
            vote = lp.vote(line)
            self._ik_votes += vote == "ik"
            self._ml_votes += vote == "mainline"
        line = lp.ML_PREFIX.sub("", line, count=1)
        self._tail_dots = 0
        events = self._flush_cuda_error(line)
        if lp.FIT_START.match(line):
            self._fit_dry_run = True
        elif lp.FIT_END.match(line):
            self._fit_dry_run = False
        try:
            events.extend(self._parse(line))
        except (ValueError, OverflowError):
            # A number too long to convert (Python refuses ints of over 4,300 digits): the engine
            # never prints one, so the line is noise, not an event.
            log.debug("skipped an engine log line with an unreadable number: %.200s", line)
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
            model_buffers=frozen_mapping(b[BufferKind.MODEL]),
            kv_buffers=frozen_mapping(b[BufferKind.KV]),
            output_buffers=frozen_mapping(b[BufferKind.OUTPUT]),
            compute_buffers=frozen_mapping(b[BufferKind.COMPUTE]),
            kv_total=self._kv_total,
            kv_parts=tuple(self._kv_parts),
            split_model=_by_index(self._split[BufferKind.MODEL]),
            split_kv=_by_index(self._split[BufferKind.KV]),
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
        where = lp.CUDA_WHERE.match(line) if line is not None else None
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

        # ik -sm graph: "Estimated model buffer size per device:" / "KV cache size per device:",
        # then one "    Device N:  X MiB" per device.
        if self._split_block is not None:
            m = lp.SPLIT_DEVICE.match(line)
            if m:
                return [SplitShare(self._split_block, int(m.group(1)), lp.mib_bytes(m.group(2)))]
            self._split_block = None
        if lp.SPLIT_MODEL_HEAD.match(line):
            self._split_block = BufferKind.MODEL
            return []
        if lp.SPLIT_KV_HEAD.match(line):
            self._split_block = BufferKind.KV
            return []

        if line[0] == "." and set(line.strip()) == {"."}:
            return [self._progress_event(len(line.strip()), done=True)]

        timing = self._parse_timing(line)
        if timing is not None:
            return timing

        m = lp.IK_SERVER_LOG.match(line)
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
        m = lp.SLOT_PREFIX.match(line)
        if m:
            slot, task = int(m.group(1)), int(m.group(2))
            rest = line[m.end() :]
            if not rest.strip():
                # ik: the prefix alone, the three lines follow without it.
                self._timing = _TimingDraft(slot, task)
                return []
        else:
            lib = lp.LIB_TIMING.match(line)
            rest = line[lib.end() :] if lib else line
        pm = lp.PROMPT_EVAL.match(rest)
        if pm:
            draft = self._timing if self._timing and self._timing.prompt is None else None
            if draft is None or (m and (draft.slot, draft.task) != (slot, task)):
                draft = _TimingDraft(slot, task)
            draft.prompt = (lp.to_float(pm.group(1)), int(pm.group(2)), lp.to_float(pm.group(4)))
            self._timing = draft
            return []
        em = lp.EVAL.match(rest)
        if em:
            draft = self._timing or _TimingDraft(slot, task)
            draft.eval = (lp.to_float(em.group(1)), int(em.group(2)), lp.to_float(em.group(4)))
            self._timing = draft
            return []
        tm = lp.TOTAL.match(rest)
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
                    total_ms=lp.to_float(tm.group(1)),
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
        pairs = {k: v for k, v in lp.KV_PAIR.findall(m.group(4) or "")}
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
        m = lp.META.search(line)
        if m and line.startswith("llama_model_loader:"):
            return [MetadataLoaded(int(m.group(1)), int(m.group(2)), m.group(3), m.group(4) or "")]
        m = lp.LAYER_DEVICE.match(line)
        if m:
            return [LayerDevice(int(m.group(1)), int(m.group(2)))]
        m = lp.IK_OVERRIDE.match(line)
        if m:
            return [TensorOverride(m.group(1), m.group(3), lp.mib_bytes(m.group(2)))]
        m = lp.ML_OVERRIDE.match(line)
        if m:
            return [TensorOverride(m.group(1), m.group(4), int(m.group(2)) * MiB, m.group(3))]
        m = lp.OFFLOADED.match(line)
        if m:
            return [LayersOffloaded(int(m.group(1)), int(m.group(2)))]
        m = lp.ML_DEVICE.match(line)
        if m:
            return [DeviceFound(m.group(1), int(m.group(4)) * MiB, m.group(2))]
        m = lp.IK_DEVICE.match(line)
        if m and m.group(1) == m.group(2):
            free = m.group(3)
            return [DeviceFound(m.group(2), int(free) * MiB if free is not None else None)]
        m = lp.UNUSED.search(line)
        if m:
            return [UnusedTensor(m.group(1), int(m.group(2)))]
        m = lp.PINNED.search(line)
        if m:
            return [PinnedMemoryFallback(lp.mib_bytes(m.group(1)), m.group(2).strip())]
        if lp.CONTEXT_START.match(line):
            self._phase_to(LoadPhase.CONTEXT)
            return []
        if lp.ML_LOADING.match(line):
            # Mainline at its default verbosity prints nothing else before the tensors load.
            self._phase_to(LoadPhase.METADATA)
            return []
        return None

    def _parse_buffers(self, line: str) -> list[Event] | None:
        if "buffer size =" in line:
            for kind, rx in (
                (BufferKind.MODEL, lp.MODEL_BUF),
                (BufferKind.KV, lp.KV_BUF),
                (BufferKind.OUTPUT, lp.OUT_BUF),
                (BufferKind.COMPUTE, lp.COMPUTE_BUF),
            ):
                m = rx.match(line)
                if m:
                    return [BufferSize(kind, _buffer_name(m.group(1)), lp.mib_bytes(m.group(2)))]
        m = lp.IK_KV_TOTAL.match(line)
        if m:
            return [KvTotal(lp.mib_bytes(m.group(1)), _kv_parts(m.group(2)))]
        m = lp.ML_KV_TOTAL.match(line)
        if m:
            return [
                KvTotal(
                    lp.mib_bytes(m.group(1)),
                    _kv_parts(m.group(4)),
                    cells=int(m.group(2)),
                    layers=int(m.group(3)),
                )
            ]
        return None

    def _parse_failure(self, line: str) -> list[Event] | None:
        m = lp.CUDA_OOM.search(line)
        if m:
            device = int(m.group(2))
            return [
                Failure(
                    FailureKind.DEVICE_OUT_OF_MEMORY,
                    m.group(3).strip(),
                    device=device,
                    buffer=f"CUDA{device}",
                    nbytes=lp.mib_bytes(m.group(1)),
                    purpose=self._purpose(),
                )
            ]
        m = lp.ALLOC_BUFFER.match(line)
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
        m = lp.ALLOC_BUFT.match(line)
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
        if lp.KV_FAIL.search(line):
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
        if lp.COMPUTE_FAIL.search(line):
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
        m = lp.GGUF_OPEN.match(line)
        if m:
            return [Failure(FailureKind.MODEL_LOAD, m.group(1).strip())]
        m = lp.LOAD_ERROR.match(line)
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
        m = lp.ML_CTX_ERROR.match(line)
        if m:
            return [Failure(FailureKind.MODEL_LOAD, m.group(1).strip())]
        m = lp.UNKNOWN_ARG.match(line)
        if m:
            return [
                Failure(
                    FailureKind.UNKNOWN_ARGUMENT, "unknown argument", argument=m.group(1).strip()
                )
            ]
        m = lp.IK_BAD_BUFT.match(line)
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
        m = lp.ML_HANDLER_ERROR.match(line)
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
        m = lp.INVALID_PARAM.match(line)
        if m:
            if self._last_failure(FailureKind.UNKNOWN_BUFFER_TYPE):
                return []  # ik's second line after an unknown -ot buffer type
            return [
                Failure(
                    FailureKind.INVALID_ARGUMENT, "invalid parameter", argument=m.group(1).strip()
                )
            ]
        m = lp.CUDA_ERROR.match(line)
        if m:
            self._cuda_error = m.group(1).strip()
            return []
        m = lp.ASSERT.match(line)
        if m:
            return [Failure(FailureKind.ASSERTION, m.group(1).strip())]
        m = lp.HEAP_ABORT.match(line.strip())
        if m:
            return [Failure(FailureKind.ABORT_AT_EXIT, m.group(1))]
        if lp.SECONDARY.search(line) and ("error" in line.lower() or "fail" in line.lower()):
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
        m = lp.ML_LISTEN_OLD.search(body)
        if m:
            return [Listening(m.group(1), int(m.group(2)))]
        m = lp.ML_LISTEN.search(body)
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
        elif isinstance(event, SplitShare):
            shares = self._split[event.kind]
            shares[event.index] = shares.get(event.index, 0) + event.nbytes
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
    return tuple((label, typ, lp.mib_bytes(n)) for label, typ, n in lp.KV_PART.findall(text))


def _by_index(table: dict[int, int]) -> tuple[int, ...]:
    """``{index: bytes}`` as a tuple by index (0 for an index never printed)."""
    return tuple(table.get(i, 0) for i in range(max(table) + 1)) if table else ()


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


def _buffer_name(name: str) -> str:
    """A buffer's device as the plan names it: ik builds before the RPC backend numbered its
    devices (build 3737 prints ``RPC[127.0.0.1:50052]``) meant device 0 of that server."""
    m = lp.OLD_RPC_NAME.match(name)
    return f"RPC0[{m.group(1)}]" if m else name
