"""The engines' argument tables: which option takes how many values."""

from __future__ import annotations

import pytest

from moe_studio.core.plan.engine_options import option_arity, split_options


@pytest.mark.parametrize(
    ("option", "dialect", "arity"),
    [
        ("-mla", "ik", 1),  # its --help line shows no value; common.cpp reads one
        ("--fit", "ik", 0),  # ik: a switch
        ("--fit", "mainline", 1),  # mainline: on|off
        ("-fa", "ik", 1),
        ("--log-file", "ik", 1),  # parsed in common/log.h, not gpt_params_find_arg
        ("--log-file", "mainline", 1),
        ("--spec-replace", "ik", 2),
        ("--control-vector-layer-range", "mainline", 2),
        ("--no-mmap", "ik", 0),
        ("--n_cpu_moe", "ik", 1),  # '_' read as '-'
        ("--no-such-option", "ik", None),
    ],
)
def test_option_arity(option: str, dialect: str, arity: int | None) -> None:
    assert option_arity(option, dialect) == arity  # type: ignore[arg-type]


def test_split_options_keeps_values_that_look_like_options() -> None:
    args = ["--log-file", "-x", "-c", "-1", "--alias", "--port", "--port=9", "--unknown", "-v"]
    assert split_options(args, "mainline") == [
        ["--log-file", "-x"], ["-c", "-1"], ["--alias", "--port"], ["--port=9"], ["--unknown"],
        ["-v"],
    ]  # fmt: skip
    assert split_options(["stray", "--unknown", "value"], "ik") == [
        ["stray"],
        ["--unknown", "value"],
    ]
