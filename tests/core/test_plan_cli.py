"""`moe-studio plan`: JSON and text output, pins, imports, and one-line errors."""

from __future__ import annotations

import json
import shlex

import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.gguf import catalog


def _plan(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_json_has_argv_devices_and_placement(capsys: pytest.CaptureFixture[str]) -> None:
    out = _plan(
        capsys,
        "catalog:qwen3-235b-a22b",
        "--gpu",
        "24GiB",
        "--gpu",
        "16GiB",
        "--ram",
        "256GiB",
        "--ctx",
        "16384",
    )
    argv = out["argv"]
    assert isinstance(argv, list) and argv[0] == "llama-server" and "-c" in argv
    assert argv[argv.index("-c") + 1] == "16384"
    devices = {d["name"]: d for d in out["devices"]}  # type: ignore[union-attr]
    assert set(devices) == {"CUDA0", "CUDA1", "CPU"}
    for d in devices.values():
        assert {"capacity", "weights", "kv", "compute", "overhead", "total"} <= set(d)
        assert d["total"] == d["weights"] + d["kv"] + d["compute"] + d["overhead"]
    placement = out["placement"]
    assert placement["token_embd.weight"] == "CPU"  # type: ignore[index]
    assert set(placement.values()) <= {"CUDA0", "CUDA1", "CPU"}  # type: ignore[union-attr]


def test_pins_are_kept_by_auto_placement(capsys: pytest.CaptureFixture[str]) -> None:
    out = _plan(
        capsys,
        "catalog:deepseek-v3@IQ2_KS",
        "--gpu",
        "24GiB",
        "--ram",
        "256GiB",
        "--pin",
        "E:3-4=CUDA0",
        "--pin",
        r"blk\.60\.attn=CPU",
    )
    placement = out["placement"]
    assert placement["blk.3.ffn_up_exps.weight"] == "CUDA0"  # type: ignore[index]
    assert placement["blk.60.attn_output.weight"] == "CPU"  # type: ignore[index]
    assert "3:exps_up" in out["pinned"]  # type: ignore[operator]


def test_import_keeps_the_commands_own_settings_and_dialect(
    capsys: pytest.CaptureFixture[str],
) -> None:
    command = (
        "llama-server -m x.gguf -c 65536 --port 9000 --host 0.0.0.0 -np 4 -ngl 999 "
        "-ot exps=CPU -fit off -ctk q8_0 -ctv q8_0"
    )
    out = _plan(
        capsys, "catalog:qwen3-30b-a3b", "--gpu", "24GiB", "--ram", "64GiB", "--import", command
    )
    s = out["settings"]
    assert (s["ctx"], s["port"], s["host"], s["parallel"], s["dialect"]) == (
        65536,
        9000,
        "0.0.0.0",
        4,
        "mainline",
    )  # type: ignore[index]
    argv = out["argv"]
    assert argv[argv.index("--port") + 1] == "9000"  # type: ignore[union-attr, index]
    # A flag given on the command line still wins over the import.
    out = _plan(
        capsys,
        "catalog:qwen3-30b-a3b",
        "--gpu",
        "24GiB",
        "--ram",
        "64GiB",
        "--import",
        command,
        "--ctx",
        "8192",
    )
    assert out["settings"]["ctx"] == 8192  # type: ignore[index]


def test_text_output_has_command_budget_table_and_advice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main(["plan", "catalog:deepseek-v3@IQ2_KS", "--rig", "demo-24g-256g", "--cache", "q8_0"])
        == 0
    )
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert shlex.split(first)[0] == "llama-server"
    assert "-fmoe" not in first and "-fa on" in first
    assert "CUDA0" in out and "CPU (host RAM)" in out and "Advice" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu", "24", "--ram", "64GiB"], "unit"),
        (["--gpu", "24GiB"], "RAM"),
        (
            ["--gpu", "24GiB", "--ram", "64GiB", "--import", "llama-server -m x.gguf -ctk bogus"],
            "cache type",
        ),
        (["--gpu", "24GiB", "--ram", "64GiB", "--pin", "E:3-999=CUDA0"], "outside"),
        (
            ["--gpu", "24GiB", "--ram", "64GiB", "--dialect", "mainline", "--mla", "3"],
            "mainline llama.cpp has no -mla",
        ),
    ],
)
def test_errors_are_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["plan", "catalog:qwen3-30b-a3b", *args])
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert message in text
    if code != 0:
        assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def _kv_total(out: dict[str, object]) -> int:
    return sum(d["kv"] for d in out["devices"])  # type: ignore[index,misc,union-attr]


@pytest.mark.parametrize("how", ["--ctx", "--import"])
def test_ctx_0_plans_the_training_context(capsys: pytest.CaptureFixture[str], how: str) -> None:
    """-c 0 means the model's training context to both engines."""
    train_ctx = catalog.load_catalog("catalog:qwen3-30b-a3b").hparams.n_ctx_train
    assert train_ctx > 0
    rig = ["--gpu", "24GiB", "--ram", "64GiB", "--no-auto"]

    def run(ctx: str) -> dict[str, object]:
        if how == "--ctx":
            return _plan(capsys, "catalog:qwen3-30b-a3b", *rig, "--ctx", ctx)
        command = f"llama-server -m x.gguf -ngl 99 -ot exps=CPU -c {ctx} -ub 512"
        return _plan(capsys, "catalog:qwen3-30b-a3b", *rig, "--import", command)

    zero, train = run("0"), run(str(train_ctx))
    assert _kv_total(train) > 0
    assert _kv_total(zero) == _kv_total(train)
    if how == "--import":
        assert any("training context" in n for n in zero["notes"])  # type: ignore[union-attr]


def test_plan_for_an_engine_and_its_build(
    capsys: pytest.CaptureFixture[str], tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    from tests.support.standin_tools import install_standin, isolate_engine_env

    assert isinstance(tmp_path, Path)
    isolate_engine_env(monkeypatch, tmp_path, STANDIN_VERSION="version: 3737 (58f08e43)")
    engine = install_standin(tmp_path / "engine", "ik", bench=False)
    args = ["catalog:qwen3-30b-a3b", "--gpu", "8GiB", "--ram", "64GiB", "--engine", str(engine)]
    out = _plan(capsys, *args, "--extra=--made-up-flag")
    argv = out["argv"]
    assert isinstance(argv, list) and "-fmoe" in argv and "-cmoe" not in argv
    assert argv[argv.index("-fa") + 1] != "on"  # build 3737: a bare -fa
    notes = " ".join(str(n) for n in out["notes"])  # type: ignore[attr-defined]
    # (the stand-in's help is the newest build's: it lists no -fmoe either)
    assert "--help does not list -fmoe, --made-up-flag" in notes
    imported = _plan(capsys, "catalog:qwen3-30b-a3b", "--engine-build", "3737", "--import",
                     "llama-server -m x.gguf -c 4096 -ot exps=CPU")  # fmt: skip
    assert "-fa" not in imported["argv"]  # type: ignore[operator]  # no -fa: off before 3928
