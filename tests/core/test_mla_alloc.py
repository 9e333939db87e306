"""The replay of ik's graph allocation for DeepSeek (MLA) devices against what ik printed.

``tests/data/mla_tiny_grid.json`` holds the ``compute buffer size`` lines ik_llama.cpp 8337e4cd
(build 4840) printed for tiny-deepseek2 over ctx 256/1024/2048, ``-ub`` 256/1024, ``-fa`` on/off,
``-mla`` 1/2/3 and f16/q8_0 K caches, on two rpc-server devices and the CPU (recorded with
``python -m tests.engine.mla_grid``). ``resources/calibration/compute.json`` has the rest of the
tiny grid (``tests/core/test_calibration.py``, 2 % for every DeepSeek point now).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.plan.mla_alloc import DynAllocator
from tests.core.test_calibration import LOG_ROUNDING_MIB, error_pct, layouts, our_compute_mib

GRID = Path(__file__).resolve().parents[1] / "data" / "mla_tiny_grid.json"
DOC: dict[str, Any] = json.loads(GRID.read_text())
POINTS = [
    (point, device, mib) for point in DOC["points"] for device, mib in point["compute"].items()
]
TOLERANCE_PCT = 2.0


def host_output_or_experts(point: dict[str, Any], device: str) -> str | None:
    """Why a host (CPU) figure is not asserted: the host's own term (compute.compute_terms'
    ``is_host`` branch), not the MLA attention, misses these two regimes (issue 10)."""
    if device != "CPU" or not point["settings"]["flash_attn"]:
        return None
    s = point["settings"]
    if "/spread/" in point["run"] and s["ctx"] <= min(s["ubatch"], 256):
        # ik frees the mask before the output matmul and puts the logits above the last
        # layer's output copy and result_norm: 2·128·256·4 + 512·256·4 = 0.75 MiB; we add the
        # mask to the logits: 0.62 MiB (-16.7 %).
        return "host output phase at 256 cells"
    if "/exps_cpu/" in point["run"]:
        # The CPU's experts: ggml_mul_mat_id(down) gives n_embd·n_used·T·4 (1 MiB at 1024
        # tokens) above the mask; we count the up/gate output n_ff_exp·n_used·T·4 (0.5 MiB):
        # -16.7 % / -16.9 %. At 4096 cells the down output fits in freed space and we are right.
        return "host expert FFN at 1024 cells"
    return None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ModelLayout:
    return layouts(tmp_path_factory.mktemp("mla-grid"))("fixture:tiny-deepseek2")


def test_grid_says_where_it_comes_from() -> None:
    assert DOC["engine"] == "ik_llama.cpp"
    assert "8337e4cd" in DOC["build"] and "4840" in DOC["build"]
    assert len(DOC["points"]) >= 90
    settings = {json.dumps(p["settings"], sort_keys=True) for p in DOC["points"]}
    assert any('"mla": 2' in s for s in settings) and any("q8_0" in s for s in settings)


@pytest.mark.parametrize(
    ("point", "device", "reported"),
    POINTS,
    ids=[f"{p['run']}@{d}" for p, d, _ in POINTS],
)
def test_compute_within_two_percent(
    point: dict[str, Any], device: str, reported: float, tiny: ModelLayout
) -> None:
    ours = our_compute_mib(
        {"engine": "ik_llama.cpp", "command": point["command"], "device": device}, tiny
    )
    off = abs(ours - reported) > max(reported * TOLERANCE_PCT / 100, LOG_ROUNDING_MIB)
    known = host_output_or_experts(point, device)
    if known:
        # Kept apart with its reason; when the host term learns it, this says so.
        assert off, f"{point['run']}@{device} now matches: assert it ({known})"
        return
    assert not off, (
        f"{point['run']}@{device}: engine {reported:.2f} MiB, ours {ours:.2f} MiB "
        f"({error_pct(reported, ours):+.1f} %)"
    )


def test_allocator_takes_the_best_fit_and_merges_freed_blocks() -> None:
    alloc = DynAllocator(alignment=1)
    for name, size in (("a", 100), ("b", 50), ("c", 30), ("d", 10)):
        alloc.alloc(name, size)
    alloc.free("a")  # hole of 100 at 0
    alloc.free("c")  # hole of 30 at 150
    alloc.alloc("e", 25)  # best fit: the 30 hole, not the 100 one
    assert alloc.live["e"] == (150, 25)
    alloc.alloc("f", 120)  # fits no hole: the tail
    assert alloc.live["f"] == (190, 120)
    alloc.free("b")  # 0..150 is one block again
    alloc.alloc("g", 140)
    assert alloc.live["g"] == (0, 140)
    assert alloc.max_size == 310
