"""The MLA attention term against ik_llama.cpp 8337e4cd's own printed buffers.

No published CUDA log comes from a build the compute model describes, so
``tests/data/mla_dryrun.json`` holds what the real engine (the CPU+RPC build of the commit that
``moe_studio.core.plan.compute`` cites) printed with ``--dry-run`` for full-width DeepSeek-V3
attention on RPC devices, over context 8k…128k, ``-ub`` 512…4096 and ``-amb`` 0…2048. The
attention buffer is a graph allocation and the same on an RPC or a CUDA device; RPC devices only
never take offloaded weights, which these runs do not have.

Kimi-K2 (64 heads, 163840-token vocabulary) runs are kept in the file but not asserted: the
term is -25…+15 % there (reported by ``benchmarks/cuda_corpus.py``). The host (``CPU``) figures
are kept but not asserted either: ours are ~44 % high there
(the engine does not count the token-embedding rows we charge to the host).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict

from tests.support.cuda_corpus import Point, dryrun_points


def device_compute(points: list[Point]) -> list[Point]:
    return [p for p in points if p.term == "compute" and p.device != "CPU"]


def test_mla_attention_matches_the_engine() -> None:
    points = device_compute(dryrun_points("deepseek-v3"))
    errors = [abs(p.error_pct) for p in points]
    assert len(points) >= 45
    worst = max(points, key=lambda p: abs(p.error_pct))
    # The two worst (+13 %, +19 %) are one two-device run whose layer split differs from ik's.
    assert abs(worst.error_pct) <= 20, f"{worst.name}: {worst.error_pct:+.1f} %"
    # 48 of 49 within ±10 %, median 2.9 % since the device graph's allocation is replayed
    # (core/plan/mla_alloc.py); before: 42 of 49, median 3.6 % (single-pass 8k-16k contexts at
    # -6…-12 %, now -2…-10 %).
    assert sum(e <= 10 for e in errors) >= 0.95 * len(errors)
    assert statistics.median(errors) <= 3.5


def test_kv_total_per_run_is_exact() -> None:
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for p in dryrun_points():
        if p.term == "kv":
            totals[p.run][0] += p.reported_mib
            totals[p.run][1] += p.ours_mib
    assert totals
    for run, (reported, ours) in totals.items():
        assert abs(ours - reported) <= 0.01 * reported, f"{run}: {reported} vs {ours}"


def test_build_3737_mla_prompt_path_is_replayed() -> None:
    # ik build 3737 itself (before PR #1211) on RPC devices: every flash-attention run's device
    # buffer, one and two devices, -amb 0/512/2048, -ub 512-4096, ctx 8k-32k, q8_0 and f16 K.
    from tests.support.cuda_corpus import MLA_3737

    doc = json.loads(MLA_3737.read_text())
    fa_runs = {i for i, run in enumerate(doc["runs"]) if " -fa" in run["command"]}
    points = [
        p
        for p in device_compute(dryrun_points(path=MLA_3737))
        if int(p.name.split(":")[1].split("-")[0]) in fa_runs
    ]
    assert len(points) >= 24
    for p in points:
        assert abs(p.error_pct) < 0.5, f"{p.name} {p.device}: {p.error_pct:+.2f} %"


def test_build_3737_host_holds_the_f32_mask_and_the_embeddings() -> None:
    from tests.support.cuda_corpus import MLA_3737

    host = [p for p in dryrun_points(path=MLA_3737) if p.term == "compute" and p.device == "CPU"]
    assert len(host) >= 24
    # (the token ids, positions and output ids, 3 · 4 · T bytes, are not counted)
    assert all(abs(p.ours_mib - p.reported_mib) < 0.06 for p in host)


def test_old_builds_replay_fused_moe_as_the_command_writes_it() -> None:
    # Build 3737's command carries -fmoe (cmdline writes it from build 3571), so the replay of
    # a GPU holding routed experts fuses up and gate whether or not -fmoe is in the extras.
    from moe_studio.core.plan import mla_alloc
    from moe_studio.core.plan.compute import mla_device_attention
    from moe_studio.core.plan.settings import Settings
    from tests.support.cuda_corpus import attention_layout

    layout = attention_layout("deepseek-v3")
    layers = (mla_alloc.MlaLayer(True, mla_alloc.Ffn.MOE),) * 3
    base = Settings(engine_build=3737, ctx=8192, ubatch=4096, batch=4096, amb=512, mla=3)
    plain = mla_device_attention(layout, base, layers, holds_last=False, first_attention=True)
    extra = base.with_(extra_args=("-fmoe",))
    fmoe = mla_device_attention(layout, extra, layers, holds_last=False, first_attention=True)
    unfused = base.with_(extra_args=("-no-fmoe",))
    split = mla_device_attention(layout, unfused, layers, holds_last=False, first_attention=True)
    assert plain == fmoe and plain is not None and split is not None and split > plain
