"""``moe-studio launch`` with the stand-in engine: ready and prompt, Ctrl-C, failure with fixes,
profiles, dry runs and a taken port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.engine.calibration import read_records
from moe_studio.core.gguf import catalog
from moe_studio.core.hardware.devices import HostInfo, Rig
from moe_studio.core.plan.placement import initial_plan
from moe_studio.core.plan.planning import Planner
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB
from tests.support.standin_tools import clean_env, install_standin, isolate_engine_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cli-engines")
    return {d: install_standin(base / d, d, bench=False) for d in ("ik", "mainline")}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean environment: no STANDIN_* knobs, config and data folders in tmp_path."""
    return isolate_engine_env(monkeypatch, tmp_path)


def base_args(model: Path, engine: Path, port: int) -> list[str]:
    return ["launch", str(model), "--ram", "16GiB", "--engine", str(engine), "--port", str(port),
            "--ctx", "512"]  # fmt: skip


def test_launch_check_with_test_prompt(
    env: Path, bins: dict[str, Path], tiny_qwen3moe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    code = main([*base_args(tiny_qwen3moe, bins["mainline"], port), "--test-prompt", "Hello",
                 "--check"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("llama.cpp 0.6.0-dev (build 0, commit unknown) at ")
    assert lines[1].endswith(f"--port {port} -lv 4")  # dialect from the engine, -lv 4 added
    assert any(line.startswith("loading (") for line in lines)
    assert "memory: ours / engine's (difference)" in out
    cpu = next(line for line in lines if line.startswith("CPU "))
    assert "?" not in cpu  # every part read back from the engine
    assert f"ready: http://127.0.0.1:{port} after " in out
    assert "test prompt: 32 tokens at 200.0 tokens/s" in out
    assert lines[-1] == "llama-server stopped."
    records = read_records(env / "data" / "moe-studio" / "calibration.jsonl")
    assert len(records) == 1 and records[0].dialect == "mainline"
    assert records[0].devices[0].name == "CPU" and records[0].devices[0].actual["kv"] > 0


@pytest.mark.parametrize("dialect", ["ik", "mainline"])
def test_launch_with_an_api_key_polls_and_prompts_with_it(
    env: Path,
    bins: dict[str, Path],
    tiny_qwen3moe: Path,
    capsys: pytest.CaptureFixture[str],
    dialect: str,
) -> None:
    # The stand-in, like both engines, answers /completion only with the key (401 otherwise).
    port = free_port()
    args = [*base_args(tiny_qwen3moe, bins[dialect], port), "--api-key", "auto"]
    code = main([*args, "--test-prompt", "Hello", "--check"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "--api-key " in out.splitlines()[1]
    assert "test prompt: 32 tokens at" in out


def test_the_standin_refuses_a_prompt_without_the_key(
    env: Path, bins: dict[str, Path], tiny_qwen3moe: Path
) -> None:
    from moe_studio.core.engine.health import poll_health, send_test_prompt
    from moe_studio.core.errors import EngineError

    port = free_port()
    proc = subprocess.Popen(
        [str(bins["mainline"]), "-m", str(tiny_qwen3moe), "--port", str(port), "--api-key", "k1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while proc.poll() is None and poll_health("127.0.0.1", port).status != 200:
            pass  # /health is public: no key needed (the stand-in answers 503 while loading)
        assert proc.poll() is None
        with pytest.raises(EngineError, match="401"):
            send_test_prompt("127.0.0.1", port, "Hi", timeout=30)
        assert send_test_prompt("127.0.0.1", port, "Hi", api_key="k1", timeout=30).predicted_tokens
    finally:
        proc.terminate()
        proc.wait(30)


def test_dry_run_starts_nothing(
    env: Path, bins: dict[str, Path], tiny_qwen3moe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    code = main([*base_args(tiny_qwen3moe, bins["ik"], free_port()), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[1].startswith(f"CUDA_DEVICE_ORDER=PCI_BUS_ID {bins['ik']} -m ")
    assert "-lv" not in out
    assert {p.pid for p in psutil.Process().children(recursive=True)} == before
    assert not (env / "data").exists()


def test_dialect_that_contradicts_the_engine_is_refused(
    env: Path, bins: dict[str, Path], tiny_qwen3moe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*base_args(tiny_qwen3moe, bins["ik"], free_port()), "--dialect", "mainline"]
    assert main([*args, "--dry-run"]) == 1
    assert "does not match" in capsys.readouterr().err


def test_taken_port_is_refused(
    env: Path, bins: dict[str, Path], tiny_qwen3moe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main([*base_args(tiny_qwen3moe, bins["ik"], port), "--check"]) == 1
    err = capsys.readouterr().err
    assert f"Port {port} on 127.0.0.1 is already in use by " in err and f"pid {os.getpid()}" in err


def test_oom_prints_diagnosis_and_fixes(
    env: Path,
    bins: dict[str, Path],
    tiny_qwen3moe: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STANDIN_CUDA_MIB", "12")
    monkeypatch.setenv("STANDIN_ENFORCE_FREE", "1")
    args = ["launch", str(tiny_qwen3moe), "--ram", "16GiB", "--gpu", "24GiB", "--engine",
            str(bins["ik"]), "--port", str(free_port()), "--ctx", "4096", "--pin", "L:0-3=CUDA0",
            "--no-auto", "--check"]  # fmt: skip
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "failed: CUDA0 ran out of memory allocating the 3.0 MiB compute buffer; " in out
    assert "was missing." in out
    assert "Lower -ub from 512 to 256" in out and "--ubatch 256" in out
    assert "(includes cells you pinned)" in out and "--pin E:" in out
    assert "  | " in out  # the end of the engine's log
    assert "ready:" not in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_the_server_cleanly(
    sig: signal.Signals, env: Path, bins: dict[str, Path], tiny_qwen3moe: Path
) -> None:
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    # A shell without job control starts background commands with SIGINT ignored; a terminal's
    # Ctrl-C reaches a foreground program, so give the CLI Python's usual handler back.
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from moe_studio.core.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    cli = subprocess.Popen(
        [sys.executable, "-c", code, *base_args(tiny_qwen3moe, bins["ik"], port)],
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(PYTHONPATH=str(root), XDG_DATA_HOME=str(env / "data")),
        cwd=root,
    )
    watchdog = threading.Timer(30, cli.kill)  # never hang the suite
    watchdog.start()
    try:
        assert cli.stdout is not None
        lines = []
        for line in cli.stdout:
            lines.append(line)
            if line.startswith("running; press Ctrl-C"):
                break
        else:
            raise AssertionError("".join(lines))
        children = psutil.Process(cli.pid).children()
        server = [p for p in children if "standin" in " ".join(p.cmdline())]
        assert len(server) == 1
        cli.send_signal(sig)
        rest, _ = cli.communicate(timeout=15)
        assert cli.returncode == 0, rest
        assert rest.rstrip().endswith("llama-server stopped.")
        # The CLI said it stopped the server: wait for that process to be gone (the timeout only
        # turns a hang into a failure).
        _, alive = psutil.wait_procs(server, timeout=60)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], (
            "the server survived the CLI's stop"
        )
    finally:
        watchdog.cancel()
        if cli.poll() is None:
            cli.kill()
        cli.wait(10)
        if cli.stdout is not None:
            cli.stdout.close()


def test_launch_a_profile(
    env: Path,
    bins: dict[str, Path],
    tiny_qwen3moe: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from moe_studio.core.profiles.plans import save_profile_from_plan

    layout = catalog.load(str(tiny_qwen3moe))
    settings = Settings(ctx=1024, ubatch=256, port=9)  # the port is overridden below
    planner = Planner(layout, Rig("test", HostInfo(16 * GiB)), settings)
    path = env / "tiny.json"
    save_profile_from_plan(path, planner, initial_plan(layout), executable=str(bins["ik"]))
    port = free_port()
    assert main(["launch", str(path), "--port", str(port), "--check", "--no-calibration"]) == 0
    out = capsys.readouterr().out
    command = out.splitlines()[1]
    assert f"{bins['ik']} -m {tiny_qwen3moe}" in command  # the profile's engine and model
    assert "-c 1024" in command and "-ub 256" in command and f"--port {port}" in command
    assert "ready:" in out
    json.loads(path.read_text())  # untouched and still valid
