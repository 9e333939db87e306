"""The measured calibration points still describe the engine: each stored run, started again.

``resources/calibration/compute.json`` and ``layer_sizes.json`` were recorded with
``python -m tests.engine.compute_calibration``; this runs every stored command again (two local
rpc-servers, the tiny fixture it names) and expects the same ``compute buffer size`` and
``Layer sizes`` lines. A failure means the engine changed: record the points again and look at
what ``tests/core/test_calibration.py`` says about our model then.
"""

from __future__ import annotations

import json
import shlex
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.engine.compute_calibration import (
    COMPUTE_FILE,
    LAYER_SIZES_FILE,
    SOURCE,
    measure,
    our_device,
)

pytestmark = pytest.mark.engine


def _runs() -> list[tuple[str, dict[str, Any]]]:
    """``(run name, {model, command, compute: device → MiB, layers})`` of the measured points."""
    runs: dict[str, dict[str, Any]] = defaultdict(dict)
    for point in json.loads(COMPUTE_FILE.read_text()):
        if point["source"] != SOURCE:
            continue
        run = runs[point["run"]]
        run.update(model=point["model"], command=point["command"])
        run.setdefault("compute", {})[point["device"]] = point["reported_mib"]
    for point in json.loads(LAYER_SIZES_FILE.read_text()):
        runs[point["run"]]["layers"] = point["layers"]
    return sorted(runs.items())


RUNS = _runs()


@pytest.mark.parametrize(("name", "run"), RUNS, ids=[name for name, _ in RUNS])
def test_stored_run_reproduces(
    name: str,
    run: dict[str, Any],
    engine: Path,
    rpc_endpoints: list[str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    arch = run["model"].removeprefix("fixture:tiny-")
    model: Path = request.getfixturevalue(f"tiny_{arch.replace('-', '_')}")
    got = measure(shlex.split(run["command"]), engine, model, rpc_endpoints, tmp_path / "log")
    assert {our_device(d): mib for d, mib in got.compute.items()} == run["compute"], name
    if "layers" in run:
        assert got.layers == run["layers"]
