"""``moe-studio tune`` with the stand-in benchmark tools: progress, table, best vs baseline and its
command, ``--json``, ``--resume`` and the option parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.cli.tune import parse_budget, parse_depths
from moe_studio.core.errors import CommandError
from tests.support.standin_tools import clean_env, install_standin

PLANT = {"ub": 1024, "threads": 2, "cpu_layers": 1, "noise": 0.02, "seed": 5}


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in clean_env() if k.startswith("STANDIN_")]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("STANDIN_BENCH_PLANT", json.dumps(PLANT))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return install_standin(tmp_path / "engine", "ik")


def test_tune_prints_best_against_baseline_and_resumes(
    engine: Path, tiny_qwen3moe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "tiny.tune.json"
    argv = [
        "tune", str(tiny_qwen3moe), "--gpu", "1GiB", "--ram", "16GiB", "--ctx", "4096",
        "--engine", str(engine), "--budget", "30trials", "--depths", "0,1024",
        "--try-threads", "4,2", "--try-ubatch", "512,1024,2048", "--journal", str(journal),
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "configurations fit" in out and "[  1] screen" in out
    assert "model loads" in out and "baseline:" in out and "best:" in out
    best = next(line for line in out.splitlines() if line.startswith("best:"))
    assert "-ub 1024" in best and "-t 2" in best and "experts 3@CUDA0" in best
    command = next(line for line in out.splitlines() if "llama-server -m" in line)
    assert "-ub 1024" in command and "-t 2" in command and "--n-cpu-moe 1" in command
    # The trials' measured memory went to the calibration file.
    assert (tmp_path / "data" / "moe-studio" / "calibration.jsonl").stat().st_size > 0

    assert main([*argv, "--resume", "--json", "--no-calibration"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trials_measured"] == 0 and data["loads"] == 0
    assert data["best"]["knobs"]["ubatch"] == 1024 and data["gain"] > 1
    assert data["argv"][data["argv"].index("-ub") + 1] == "1024"


def test_tune_without_a_benchmark_tool_says_what_to_build(
    tmp_path: Path, tiny_qwen3moe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = install_standin(tmp_path / "bare", "ik", bench=False)
    code = main(
        ["tune", str(tiny_qwen3moe), "--gpu", "1GiB", "--ram", "16GiB", "--engine", str(server)]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "llama-sweep-bench" in err and "Traceback" not in err


def test_budget_and_depths_parsing() -> None:
    assert parse_budget("20m") == (1200.0, None)
    assert parse_budget("1h30m") == (5400.0, None)
    assert parse_budget("90s") == (90.0, None)
    assert parse_budget("300") == (300.0, None)
    assert parse_budget("30trials") == (None, 30)
    assert parse_budget("12 t") == (None, 12)
    for bad in ("", "abc", "0", "-5m", "20x"):
        with pytest.raises(CommandError, match="--budget"):
            parse_budget(bad)
    assert parse_depths("8192,0") == (0, 8192)
    for bad in ("", "a,b", "-1"):
        with pytest.raises(CommandError, match="--depths"):
            parse_depths(bad)
