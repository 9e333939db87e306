"""`moe-studio inspect` and `catalog`: output, JSON shape, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moe_studio.core.cli.main import main


def test_inspect_json_has_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "catalog:qwen3-30b-a3b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("architecture", "n_layers", "total_bytes", "total_params", "tensors"):
        assert key in data
    t = data["tensors"][1]
    assert set(t) == {"name", "type", "shape", "bytes", "layer", "group", "shard", "loaded"}
    assert data["tensors"][0]["layer"] is None  # token_embd is global
    assert sum(x["bytes"] for x in data["tensors"] if x["loaded"]) == data["total_bytes"]


def test_inspect_table_shows_layers_totals_and_types(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "catalog:glm-4.6"]) == 0
    out = capsys.readouterr().out
    assert "352.8B parameters" in out
    assert "(not loaded)" in out  # the MTP block
    assert "Experts down" in out and "Q4_K" in out


def test_catalog_lists_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalog"]) == 0
    out = capsys.readouterr().out
    for key in (
        "deepseek-v3",
        "kimi-k2",
        "glm-4.6",
        "qwen3-235b-a22b",
        "qwen3-30b-a3b",
        "gpt-oss-120b",
    ):
        assert f"catalog:{key}" in out


@pytest.mark.parametrize("kind", ["missing", "folder", "garbage", "catalog"])
def test_errors_are_one_line_without_traceback(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = {
        "missing": str(tmp_path / "nope.gguf"),
        "folder": str(tmp_path),
        "garbage": str(tmp_path / "garbage.gguf"),
        "catalog": "catalog:nonexistent",
    }[kind]
    (tmp_path / "garbage.gguf").write_bytes(b"hello world, not a model at all")
    assert main(["inspect", target]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("moe-studio: error: ")
    assert "Traceback" not in err


def test_inspect_imports_only_the_reader_side_of_core() -> None:
    """`moe-studio inspect` must not pay for the launcher, log parser, planner or exporters."""
    code = (
        "import contextlib, io, sys\n"
        "from moe_studio.core.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['inspect', 'catalog:deepseek-v3']) == 0\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('moe_studio.core.'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    rooms = {m.split(".")[2] for m in out}
    assert rooms <= {"cli", "gguf", "errors", "units", "remote"}, out
    # Of the remote room, only what tells a URL from a path (no HTTP client, no Hub library).
    assert {m for m in out if ".remote" in m} == {
        "moe_studio.core.remote",
        "moe_studio.core.remote.urls",
    }, out
    assert "moe_studio.core.cli.launch" not in out
