"""A scripted stand-in for ``llama-sweep-bench`` (ik) and ``llama-bench`` (both engines).

Run as ``standin_bench.py sweep-bench|bench ARGS…``. It reads the arguments the tools share
(``-m -c -ub -b -p -n -d -r -t``, ``--output-format`` / ``-o``), prints a few loader lines to
stderr and the results in the real formats (tests/data/bench): sweep-bench rows to stderr (md or
jsonl), llama-bench to stdout (mainline ``-o jsonl`` one object per line, ik ``-o json`` an
array). Numbers are made up but plausible (speeds fall as the KV cache fills).

Knobs: ``STANDIN_DIALECT`` (``ik``/``mainline``), ``STANDIN_BENCH_STEP_SECONDS`` (sleep per row,
default 0), ``STANDIN_BENCH_ARGV`` (a file to write the argv to, one argument per line),
``STANDIN_BENCH_FAIL=1`` (exit 1 after the loader lines, like a failed load),
``STANDIN_BENCH_IGNORE_TERM=1`` (ignore SIGTERM, so that only SIGKILL stops it),
``STANDIN_BENCH_SPEED`` (a factor on every speed, default 1: two "placements" that differ),
``STANDIN_BENCH_LOG`` (a file to append one JSON line per run: its argv; a run is a model load),
``STANDIN_BENCH_OOM_UB`` (a run with ``-ub`` at least this fails with a CUDA out-of-memory line,
like a compute buffer that does not fit).

``STANDIN_BENCH_PLANT`` plants an optimum for the tuner: a JSON object ``{"ub": 1024,
"threads": 2, "cpu_layers": 1, "noise": 0.02, "seed": 1}``. Every speed is then multiplied by
:func:`planted_factor` of the run's ``-ub``, ``-t`` and the number of layers whose routed experts
the ``-ot`` rules / ``--n-cpu-moe`` put on the CPU (S_TG ignores ``-ub``), with seeded noise.
llama-bench takes comma lists of ``-ub``/``-t`` (one row per combination, one load);
llama-sweep-bench takes ``--sweep-stride``. Standard library only.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import sys
import time

MAX_LAYERS = 64


def _opt(argv: list[str], *names: str, default: str | None = None) -> str | None:
    value = default
    for i, a in enumerate(argv):
        if a in names and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def cpu_expert_layers(argv: list[str]) -> int:
    """Layers whose routed experts the command keeps on the CPU (``-ot …=CPU``, ``-cmoe``,
    ``--n-cpu-moe N``), counted over ``blk.0`` … ``blk.63``."""
    if "-cmoe" in argv or "--cpu-moe" in argv:
        return MAX_LAYERS
    n = int(_opt(argv, "--n-cpu-moe", "-ncmoe", default="0") or 0)
    rules = []
    for i, a in enumerate(argv):
        if a in ("-ot", "--override-tensor") and i + 1 < len(argv):
            for rule in argv[i + 1].split(";"):
                pattern, _, device = rule.rpartition("=")
                rules.append((re.compile(pattern), device))
    for layer in range(MAX_LAYERS):
        name = f"blk.{layer}.ffn_up_exps.weight"
        device = next((d for p, d in rules if p.search(name)), None)
        if device == "CPU":
            n += 1
    return min(n, MAX_LAYERS)


def planted_factor(ub: int, threads: int, cpu_layers: int, *, tg: bool, salt: str) -> float:
    """The planted speed factor (1 at the optimum, lower away from it, times seeded noise)."""
    plant = json.loads(os.environ.get("STANDIN_BENCH_PLANT") or "{}")
    if not plant:
        return 1.0
    f = 1.0
    if not tg and "ub" in plant:
        f *= math.exp(-0.35 * abs(math.log2(max(1, ub) / plant["ub"])))
    if "threads" in plant:
        f *= 1.0 / (1.0 + 0.3 * abs(threads - plant["threads"]))
    if "cpu_layers" in plant:
        f *= 1.0 / (1.0 + 0.15 * abs(cpu_layers - plant["cpu_layers"]))
    noise = float(plant.get("noise", 0.0))
    rng = random.Random(f"{plant.get('seed', 0)}|{salt}|{ub}|{threads}|{cpu_layers}|{tg}")
    return f * (1.0 + noise * rng.uniform(-1.0, 1.0))


def _oom(ub: int) -> bool:
    limit = os.environ.get("STANDIN_BENCH_OOM_UB")
    if not limit or ub < int(limit):
        return False
    sys.stderr.write(
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4096.00 MiB on device 0: "
        "cudaMalloc failed: out of memory\n"
        "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 4294967296\n"
        "llama_init_from_gpt_params: error: failed to create context with model\n"
    )
    return True


def _loader(model: str) -> None:
    err = sys.stderr
    err.write(
        "llama_model_loader: loaded meta data with 27 key-value pairs and 51 tensors from "
        f"{model} (version GGUF V3 (latest))\n"
    )
    err.write("llm_load_tensors:        CPU buffer size =     1.82 MiB\n")
    err.flush()


def sweep(argv: list[str]) -> int:
    model = _opt(argv, "-m", "--model", default="model.gguf") or ""
    n_ctx = int(_opt(argv, "-c", "--ctx-size", default="512") or 512)
    ub = int(_opt(argv, "-ub", "--ubatch-size", default="512") or 512)
    batch = int(_opt(argv, "-b", "--batch-size", default="2048") or 2048)
    fmt = _opt(argv, "--output-format", default="md")
    if fmt not in ("md", "jsonl"):
        sys.stderr.write("error: invalid parameter for argument: --output-format\n")
        return 1
    tg = int(_opt(argv, "-n", default=str(max(1, ub // 4))) or 1)
    step = float(os.environ.get("STANDIN_BENCH_STEP_SECONDS", "0"))
    _loader(model)
    if os.environ.get("STANDIN_BENCH_FAIL") == "1":
        sys.stderr.write("llama_init_from_gpt_params: error: failed to load model\n")
        return 1
    if _oom(ub):
        return 1
    stride = int(_opt(argv, "--sweep-stride", default="1") or 1)
    threads = int(_opt(argv, "-t", "--threads", default="1") or 1)
    cpu_layers = cpu_expert_layers(argv)
    err = sys.stderr
    head = {
        "n_kv_max": n_ctx,
        "n_batch": batch,
        "n_ubatch": ub,
        "flash_attn": 1,
        "n_gpu_layers": 999,
        "n_threads": 1,
        "n_threads_batch": 1,
    }
    if fmt == "md":
        err.write(
            "\nmain: " + ", ".join(f"{k} = {v}" for k, v in head.items()) + "\n\n"
            "|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |\n"
            "|-------|--------|--------|----------|----------|----------|----------|\n"
        )
    speed = float(os.environ.get("STANDIN_BENCH_SPEED", "1"))
    for i, n_kv in enumerate(range(0, n_ctx, ub)):
        if i % stride:
            continue
        salt = f"sweep{n_kv}"
        s_pp = speed * 2000.0 / (1 + n_kv / 4096)
        s_pp *= planted_factor(ub, threads, cpu_layers, tg=False, salt=salt)
        s_tg = speed * 200.0 / (1 + n_kv / 8192)
        s_tg *= planted_factor(ub, threads, cpu_layers, tg=True, salt=salt)
        t_pp, t_tg = ub / s_pp, tg / s_tg
        if fmt == "md":
            err.write(
                f"|{ub:6d} | {tg:6d} | {n_kv:6d} | {t_pp:8.3f} | {s_pp:8.2f} | {t_tg:8.3f} | "
                f"{s_tg:8.2f} |\n"
            )
        else:
            row = {
                **head,
                "pp": ub,
                "tg": tg,
                "n_kv": n_kv,
                "t_pp": round(t_pp, 6),
                "speed_pp": round(s_pp, 6),
                "t_tg": round(t_tg, 6),
                "speed_tg": round(s_tg, 6),
            }
            err.write(json.dumps(row) + "\n")
        err.flush()
        time.sleep(step)
    err.write("\nllama_print_timings:        load time =      25.65 ms\n")
    return 0


def bench(argv: list[str], dialect: str) -> int:
    model = _opt(argv, "-m", "--model", default="model.gguf") or ""
    fmt = _opt(argv, "-o", "--output", default="md")
    allowed = ("csv", "json", "md", "sql") + (("jsonl",) if dialect == "mainline" else ())
    if fmt not in allowed:
        sys.stderr.write("error: invalid parameter for argument: -o\n")
        return 1
    if fmt not in ("json", "jsonl"):
        sys.stderr.write(f"standin_bench: -o {fmt} is not simulated\n")
        return 1
    n_prompt = int(_opt(argv, "-p", "--n-prompt", default="512") or 512)
    n_gen = int(_opt(argv, "-n", "--n-gen", default="128") or 128)
    depths = [int(d) for d in (_opt(argv, "-d", "--n-depth", default="0") or "0").split(",")]
    ubs = [int(u) for u in (_opt(argv, "-ub", "--ubatch-size", default="512") or "512").split(",")]
    threads = [int(t) for t in (_opt(argv, "-t", "--threads", default="1") or "1").split(",")]
    cpu_layers = cpu_expert_layers(argv)
    step = float(os.environ.get("STANDIN_BENCH_STEP_SECONDS", "0"))
    _loader(model)
    speed = float(os.environ.get("STANDIN_BENCH_SPEED", "1"))
    rows = []
    for ub in ubs:  # llama-bench: one context per combination, the model loaded once
        if _oom(ub):
            return 1
        for t in threads:
            for depth in depths:
                for pp, tg in ((n_prompt, 0), (0, n_gen)):
                    if not (pp or tg):
                        continue
                    ts = speed * (2000.0 if pp else 200.0) / (1 + depth / 4096)
                    ts *= planted_factor(ub, t, cpu_layers, tg=not pp, salt=f"bench{depth}")
                    rows.append(
                        {
                            "build_commit": "unknown",
                            "build_number": 0,
                            "model_filename": model,
                            "model_type": "qwen3moe ?B Q8_0",
                            "n_ubatch": ub,
                            "n_threads": t,
                            "n_prompt": pp,
                            "n_gen": tg,
                            "n_depth": depth,
                            "avg_ns": int((pp or tg) / ts * 1e9),
                            "stddev_ns": 1000,
                            "avg_ts": round(ts, 6),
                            "stddev_ts": round(ts / 100, 6),
                            "samples_ts": [round(ts, 1), round(ts, 1)],
                        }
                    )
                    time.sleep(step)
    if dialect == "ik":
        for r in rows:
            r.pop("n_depth")
    out = sys.stdout
    if fmt == "jsonl":
        for r in rows:
            out.write(json.dumps(r) + "\n")
    else:
        out.write(json.dumps(rows, indent=2) + "\n")
    return 0


def main(argv: list[str]) -> int:
    dialect = "mainline" if os.environ.get("STANDIN_DIALECT", "ik") in ("mainline", "ml") else "ik"
    if os.environ.get("STANDIN_BENCH_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    runs = os.environ.get("STANDIN_BENCH_LOG")
    if runs:
        with open(runs, "a", encoding="utf-8") as f:
            f.write(json.dumps(argv) + "\n")
    record = os.environ.get("STANDIN_BENCH_ARGV")
    if record:
        with open(record, "w", encoding="utf-8") as f:
            f.write("\n".join(argv) + "\n")
    tool, args = (argv[0], argv[1:]) if argv else ("", [])
    if tool == "sweep-bench" and dialect == "ik":
        return sweep(args)
    if tool == "bench":
        return bench(args, dialect)
    sys.stderr.write(f"standin_bench: no {tool!r} for {dialect}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
