"""Every number a user types is checked once, in core (issue 12, items 7 and 8)."""

from __future__ import annotations

import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.errors import CommandError
from moe_studio.core.plan.settings import LIMITS, Settings, check_number

BASE = ["plan", "catalog:qwen3-30b-a3b", "--gpu", "24GiB", "--ram", "64GiB"]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--ctx", "-1"], "--ctx"),
        (["--ctx", "9" * 400], "--ctx"),
        (["--port", "70000"], "--port"),
        (["--port", "-1"], "--port"),
        (["--port", "99999"], "--port"),
        (["--parallel", "0"], "--parallel"),
        (["-np", "0"], "--parallel"),
        (["--threads", "0"], "--threads"),
        (["--amb", "-1"], "--amb"),
        (["--host", ""], "--host"),
        (["--gpu", "0GiB"], "--gpu"),
        (["--gpu", "9" * 400 + "GiB"], "--gpu"),
        (["--ram", "1e400GiB"], "--ram"),
        (["--import", "llama-server -m x.gguf -c -5"], "--ctx"),
        (["--import", "llama-server -m x.gguf -np 0"], "--parallel"),
        (["--import", "llama-server -m x.gguf --port 99999"], "--port"),
        (["--extra=--"], "--extra"),
    ],
)
def test_bad_numbers_are_one_line_errors_with_exit_1(
    capsys: pytest.CaptureFixture[str], args: list[str], flag: str
) -> None:
    assert main([*BASE, *args]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and flag in err and len(err) < 300, err


def test_a_5000_character_model_path_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["inspect", "/" + "x" * 5000 + ".gguf"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err, (code, err[:300])


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_each_limit_names_its_flag_and_range(name: str) -> None:
    flag, low, high = LIMITS[name]
    check_number(name, low)
    check_number(name, high)
    with pytest.raises(CommandError, match=f"{low}\\.\\.{high}") as err:
        check_number(name, high + 1)
    assert flag in str(err.value)


def test_settings_cannot_be_built_out_of_range() -> None:
    with pytest.raises(CommandError, match="--port"):
        Settings(port=0)
    with pytest.raises(CommandError, match="--extra"):
        Settings(extra_args=(["--"],))  # type: ignore[arg-type]
    assert Settings().port == 8080


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5"])
def test_plan_warns_when_the_server_listens_beyond_this_machine(
    capsys: pytest.CaptureFixture[str], host: str
) -> None:
    assert main([*BASE, "--host", host]) == 0
    out = capsys.readouterr().out
    assert f"--host {host}" in out and "no authentication" in out


def test_loopback_hosts_get_no_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*BASE, "--host", "127.0.0.1"]) == 0
    assert "no authentication" not in capsys.readouterr().out
