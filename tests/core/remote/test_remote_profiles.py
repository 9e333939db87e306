"""A plan made from a remote model survives the download: the profile binds to the local file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.gguf.model import open_model
from moe_studio.core.profiles.schema import load_profile
from tests.support.hf_server import HubServer
from tests.support.standin_tools import install_standin

SPEC = "hf://org/tiny/Q8_0/tiny-qwen3moe-Q8_0.gguf"


@pytest.fixture
def tiny_hub(tiny_qwen3moe: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> HubServer:
    server = HubServer()
    server.add_repo("org/tiny", {"Q8_0/tiny-qwen3moe-Q8_0.gguf": tiny_qwen3moe})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with server:
        yield server


@pytest.fixture
def saved(tiny_hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "tiny.json"
    argv = ["plan", SPEC, "--ram", "16GiB", "--ctx", "512", "--pin", "L:1-2=CPU", "--save"]
    assert main([*argv, str(path)]) == 0
    out = capsys.readouterr().out
    # The command names the file the download will write, and says how to download it.
    assert " -m tiny/Q8_0/tiny-qwen3moe-Q8_0.gguf " in out
    assert "hf download org/tiny --include Q8_0/tiny-qwen3moe-Q8_0.gguf --local-dir tiny" in out
    return path


@pytest.fixture
def engine(tmp_path: Path) -> Path:
    return install_standin(tmp_path / "engine", "ik", bench=False)


def test_profile_of_a_remote_model_records_url_and_identity(
    saved: Path, tiny_qwen3moe: Path
) -> None:
    doc = json.loads(saved.read_text())
    local = open_model(tiny_qwen3moe)
    assert doc["model"]["path"] == SPEC and doc["model"]["url"] == SPEC
    assert doc["model"]["identity"] == local.identity
    assert doc["model"]["tensor_count"] == len(local.tensors)


def test_launch_needs_the_file_and_says_how_to_get_it(
    saved: Path, engine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["launch", str(saved), "--engine", str(engine), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "planned from the remote model hf://org/tiny/Q8_0/tiny-qwen3moe-Q8_0.gguf" in err
    assert "hf download org/tiny" in err and "--gguf tiny/Q8_0/tiny-qwen3moe-Q8_0.gguf" in err
    assert main(["launch", SPEC, "--ram", "16GiB", "--engine", str(engine), "--dry-run"]) == 1
    assert "launch needs the model on disk" in capsys.readouterr().err
    assert main(["export", str(saved), "--to", "json"]) == 1
    assert "planned from the remote model" in capsys.readouterr().err


def test_naming_the_downloaded_file_binds_the_profile(
    saved: Path, engine: Path, tiny_qwen3moe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = load_profile(saved)
    argv = ["launch", str(saved), "--engine", str(engine), "--gguf", str(tiny_qwen3moe)]
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f" -m {tiny_qwen3moe} " in out
    after = load_profile(saved)
    assert after.model.source == str(tiny_qwen3moe)
    assert after.model.url == SPEC
    assert after.model.identity == before.model.identity
    assert after.placement == before.placement and after.pinned == before.pinned
    assert after.pinned  # the pins of --pin L:1-2=CPU
    assert after.settings == before.settings
    # Bound: it now launches without --gguf.
    assert main(["launch", str(saved), "--engine", str(engine), "--dry-run"]) == 0


def test_another_model_is_not_bound(
    saved: Path, engine: Path, tiny_deepseek2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = saved.read_text()
    argv = ["launch", str(saved), "--engine", str(engine), "--gguf", str(tiny_deepseek2)]
    assert main([*argv, "--dry-run"]) == 1
    assert "is not the one this profile was made for" in capsys.readouterr().err
    assert saved.read_text() == text
