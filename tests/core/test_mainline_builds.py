"""Mainline llama.cpp builds: the change table and the memory terms that follow the build.

Each expectation comes from mainline's source at the build named (core/plan/engine_builds.py
cites commit, date and PR) and, where a log exists, from what that build printed
(tests/data/cuda_corpus).
"""

from __future__ import annotations

from functools import cache

import pytest

from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.plan import engine_builds as builds
from moe_studio.core.plan.compute import (
    RamWeights,
    compute_terms,
    describes_build,
    layer_compute_bytes,
    mainline_mask_rows,
    mainline_mla_attention_bytes,
    mask_bytes,
)
from moe_studio.core.plan.layers import engine_layer_devices
from moe_studio.core.plan.memory import kv_layer_bytes
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import MiB


@cache
def layout(spec: str) -> ModelLayout:
    return catalog.load_catalog(spec)


def mainline(build: int | None, **changes: object) -> Settings:
    return Settings(dialect="mainline", engine_build=build).with_(**changes)


def test_the_mainline_table_cites_mainline_history() -> None:
    assert builds.MAINLINE_CHANGES
    previous = 0
    for change in builds.MAINLINE_CHANGES:
        assert change.build > previous  # in build order, like the ik table
        previous = change.build
        assert len(change.commit) >= 9 and int(change.commit, 16) >= 0
        assert change.date.startswith("20") and change.pr > 0 and change.what
    assert builds.ML_MLA.build == builds.MAINLINE_OLDEST_DESCRIBED


def test_mainline_changes_are_asked_of_mainline_settings_only() -> None:
    old, new = mainline(5331), mainline(None)
    assert not old.has_mainline(builds.ML_MLA_V_LESS)
    assert old.has_mainline(builds.ML_MLA)
    assert new.has_mainline(builds.ML_MLA_V_LESS)
    assert not Settings().has_mainline(builds.ML_MLA)  # ik
    assert not new.has(builds.MLA_DEFAULT_3)  # Settings.has stays ik only


def test_a_mainline_build_number_is_judged_by_the_mainline_table() -> None:
    # b5331 was out on 2025-05-09; a number claiming #19067 (2026-01-25) was not.
    assert builds.plausible(5331, "2025-05-09", builds.MAINLINE_CHANGES)
    assert not builds.plausible(7900, "2025-05-09", builds.MAINLINE_CHANGES)
    assert builds.newest_by("2025-05-09", builds.MAINLINE_CHANGES) == builds.ML_FA_VALUE.build - 1
    assert builds.newest_by("2026-08-01", builds.MAINLINE_CHANGES) is None


def test_mainline_mla_kept_a_v_cache_before_19067() -> None:
    """b5331 printed "K (f16): 1098.00 MiB, V (f16): 976.00 MiB" for DeepSeek-V3 at 16384
    cells (ik PR #394): 576 and 512 values per cell and layer. Since #19067 only K."""
    ds = layout("deepseek-v3@Q4_K_M")
    assert ds.hparams.is_mla and ds.hparams.key_length_mla
    per_layer = {
        build: kv_layer_bytes(ds, mainline(build, ctx=16384), 10)
        for build in (5331, builds.ML_MLA_V_LESS.build - 1, builds.ML_MLA_V_LESS.build, None)
    }
    assert per_layer[5331] == per_layer[builds.ML_MLA_V_LESS.build - 1] == (576 + 512) * 2 * 16384
    assert per_layer[builds.ML_MLA_V_LESS.build] == per_layer[None] == 576 * 2 * 16384
    total = sum(kv_layer_bytes(ds, mainline(5331, ctx=16384), il) for il in range(61))
    assert total == 2074 * MiB


def test_mainline_context_padding_follows_the_build() -> None:
    """get_padding (256 with FA, 32 without) until #16812, none until #17046, then 256."""
    assert mainline(5331, ctx=1025).kv_size == 1280
    assert mainline(5331, ctx=1025, flash_attn=False).kv_size == 1056
    assert mainline(builds.ML_NO_CTX_PAD.build, ctx=1025).kv_size == 1025
    assert mainline(builds.ML_CTX_PAD_256.build, ctx=1025, flash_attn=False).kv_size == 1280
    assert mainline(None, ctx=1025).kv_size == 1280


def test_mainline_mask_rows_follow_the_build() -> None:
    """GGML_PAD(n_tokens, GGML_KQ_MASK_PAD): 64 from #11583, 1 from #17505."""
    assert mainline_mask_rows(mainline(5331, ubatch=100)) == 128
    assert mainline_mask_rows(mainline(4000, ubatch=100)) == 128  # pad 32: 4 · 32
    assert mainline_mask_rows(mainline(4000, ubatch=70)) == 96
    assert mainline_mask_rows(mainline(5331, ubatch=70)) == 128
    assert mainline_mask_rows(mainline(None, ubatch=100)) == 100
    qwen = layout("qwen3-235b-a22b@Q4_K_M")
    old = mask_bytes(qwen, mainline(5331, ubatch=100, ctx=4096), host=False)
    assert old == 4096 * 128 * 2  # f16 cast on the device
    assert mask_bytes(qwen, mainline(None, ubatch=100, ctx=4096), host=True) == 4096 * 100 * 4


def test_mainline_copies_one_offloaded_weight_at_a_time() -> None:
    """Mainline multiplies up, gate and down apart and the scheduler starts a new split at each
    RAM weight, so one expert tensor is copied at a time (ik's fused up/gate needs two). b5269
    printed 774 MiB on the 3090 of ik discussion #357: 630 MiB of Q6_K experts + 128 + 16."""
    qwen = layout("qwen3-235b-a22b@Q4_K_M")
    expert = 630 * MiB
    ram = RamWeights(expert_max=expert, has_cuda=True)
    args = {
        "holds_layers": True,
        "holds_output": False,
        "is_cuda": True,
        "cpu_expert_tensor_max": expert,
        "offload_target": True,
        "ram": ram,
    }
    ml = compute_terms(qwen, mainline(5269, ctx=16384, cache_type_k="q8_0"), **args)
    ik = compute_terms(qwen, Settings(ctx=16384, cache_type_k="q8_0"), **args)
    assert ml.offload_copy == expert
    assert ik.offload_copy == 2 * expert
    assert ml.total == 774 * MiB


def test_mainline_output_phase_does_not_carry_the_mask() -> None:
    """The mask dies with the last layer's attention: the output GPU's peak is the logits and
    their input (b5269, 2x3090 of ik discussion #357: CUDA1 printed 304.75 MiB)."""
    qwen = layout("qwen3-235b-a22b@Q4_K_M")
    settings = mainline(5269, ctx=16384, cache_type_k="q8_0", cache_type_v="q8_0")
    terms = compute_terms(
        qwen,
        settings,
        holds_layers=True,
        holds_output=True,
        is_cuda=True,
        cpu_expert_tensor_max=0,
        offload_target=False,
        layer_compute=layer_compute_bytes(qwen, settings),
    )
    assert terms.logits == 0 and terms.mask == 16 * MiB
    assert terms.output == (151936 + 4096) * 512 * 4
    assert terms.total == int(304.75 * MiB)


def test_mainline_mla_attention_follows_its_graph() -> None:
    """b5331 with flash attention, DeepSeek-V3 at -ub 1024 (ik PR #394): the GPUs without a
    weight copy printed 788 MiB; the sum of the layer's attention tensors up to Qcur (which
    fits no freed hole) is 734 MiB, + the 32 MiB mask. On CUDA0 the expert copy sits on the FFN
    phase only, not on the attention."""
    ds = layout("deepseek-v3@Q4_K_M")
    per_token = 2 * 7168 + 1536 + 128 * (192 + 64 + 512 + 576)
    assert mainline_mla_attention_bytes(ds, 1024) == per_token * 1024 * 4 == 734 * MiB
    settings = mainline(5331, ctx=16384, ubatch=1024)
    lc = layer_compute_bytes(ds, settings)
    args = {"holds_layers": True, "holds_output": False, "is_cuda": True, "layer_compute": lc}
    plain = compute_terms(ds, settings, cpu_expert_tensor_max=0, offload_target=False, **args)
    assert plain.total == 766 * MiB
    copy = 2940 * MiB
    ram = RamWeights(expert_max=copy, has_cuda=True)
    first = compute_terms(
        ds, settings, cpu_expert_tensor_max=copy, offload_target=True, ram=ram, **args
    )
    assert first.total == int(32 * MiB + lc + copy)
    no_fa = settings.with_(flash_attn=False)
    bare = compute_terms(ds, no_fa, cpu_expert_tensor_max=0, offload_target=False, **args)
    assert bare.attention > plain.attention  # the K·Q scores: generic rows


def test_mainline_splits_layers_by_the_free_memory_itself() -> None:
    """llama_model::load_tensors: "default split, by free memory" (splits[i] = free); ik keeps
    a 1 GiB margin. The b5331 log of ik PR #394 put 15/12/12/22 layers on its four GPUs."""
    ds = layout("deepseek-v3@Q4_K_M")
    free = [29249 * MiB, 23633 * MiB, 23698 * MiB, 48280 * MiB]
    devices = ["CUDA0", "CUDA1", "CUDA2", "CUDA3"]
    out = engine_layer_devices(ds, mainline(5331), devices, 99, (), free)
    assert [out[:61].count(d) for d in devices] == [15, 12, 12, 22]


def test_mainline_builds_are_described_from_the_mla_cache_on() -> None:
    assert describes_build("llama.cpp", "2025-05-02", 5269)
    assert describes_build("llama.cpp", "2025-04-30", 5192)
    assert not describes_build("llama.cpp", "2025-04-01", 5000)
    assert describes_build("llama.cpp", "2025-05-09", 5331)
    assert describes_build("llama.cpp", "2025-05-01")  # no build printed: by date
    assert not describes_build("llama.cpp", "2025-03-01")


def test_an_engine_gives_its_build_to_plans_of_its_own_dialect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``plan --engine`` plans for the build that engine prints, mainline's too; a build number
    from the other engine's history is not taken (the numbers are not comparable)."""
    from moe_studio.core.cli import plan as plan_cli
    from moe_studio.core.engine import discovery

    info = {
        "ml": discovery.EngineInfo("ml", flavour="mainline", build=5331),
        "ik": discovery.EngineInfo("ik", flavour="ik", build=3737),
    }
    monkeypatch.setattr(discovery, "probe_engine", lambda path: info[path])
    assert plan_cli._engine_build("ml", "mainline") == 5331
    assert plan_cli._engine_build("ik", "ik") == 3737
    assert plan_cli._engine_build("ml", "ik") is None
    assert plan_cli._engine_build("ik", "mainline") is None


def test_switching_dialect_forgets_the_other_engines_build() -> None:
    """ik build 4840 is not mainline b4840 (which predates mainline's MLA cache)."""
    ik = Settings(engine_build=4840)
    assert ik.for_dialect("ik").engine_build == 4840
    assert ik.for_dialect("mainline").engine_build is None
    assert mainline(5331).for_dialect("ik").engine_build is None
    assert mainline(5331).for_dialect("mainline").engine_build == 5331
