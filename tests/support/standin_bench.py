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
``STANDIN_BENCH_SPEED`` (a factor on every speed, default 1: two "placements" that differ).
Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def _opt(argv: list[str], *names: str, default: str | None = None) -> str | None:
    value = default
    for i, a in enumerate(argv):
        if a in names and i + 1 < len(argv):
            value = argv[i + 1]
    return value


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
    for n_kv in range(0, n_ctx, ub):
        s_pp = speed * 2000.0 / (1 + n_kv / 4096)
        s_tg = speed * 200.0 / (1 + n_kv / 8192)
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
    ub = int(_opt(argv, "-ub", "--ubatch-size", default="512") or 512)
    step = float(os.environ.get("STANDIN_BENCH_STEP_SECONDS", "0"))
    _loader(model)
    speed = float(os.environ.get("STANDIN_BENCH_SPEED", "1"))
    rows = []
    for depth in depths:
        for pp, tg in ((n_prompt, 0), (0, n_gen)):
            if not (pp or tg):
                continue
            ts = speed * (2000.0 if pp else 200.0) / (1 + depth / 4096)
            rows.append(
                {
                    "build_commit": "unknown",
                    "build_number": 0,
                    "model_filename": model,
                    "model_type": "qwen3moe ?B Q8_0",
                    "n_ubatch": ub,
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
