"""Plans, the engine resolver, override generation, command building and import."""

from __future__ import annotations

import re
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_studio.core.errors import CommandError, DialectError, PlanError
from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, TensorGroup
from moe_studio.core.hardware.devices import CPU_NAME, Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.autoplace import auto_place
from moe_studio.core.plan.cmdline import build_command, import_command, parse_command
from moe_studio.core.plan.layers import LayerSplit, engine_layer_devices, plan_layer_split
from moe_studio.core.plan.memory import kv_bytes
from moe_studio.core.plan.overrides import Overrides, generate, number_regex, resolve
from moe_studio.core.plan.placement import (
    Plan,
    as_mapping,
    assign,
    cell_device,
    column_cells,
    expert_cells,
    initial_plan,
    range_cells,
    row_cells,
)
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB, MiB

G = TensorGroup


def rig_of(*gpus: int, rpc: tuple[str, ...] = (), ram: int = 512) -> Rig:
    devices = [Device(f"RPC0[{e}]", DeviceKind.RPC, 24 * GiB, endpoint=e) for e in rpc]
    devices += [
        Device(f"CUDA{i}", DeviceKind.CUDA, g * GiB, index=i, pcie_gen=4, pcie_width=16)
        for i, g in enumerate(gpus)
    ]
    return Rig("test", HostInfo(ram * GiB, cores_physical=16), tuple(devices))


@cache
def layout(spec: str) -> ModelLayout:
    return catalog.load_catalog(spec)


# --- plan operations -----------------------------------------------------------------------------


def test_operations_return_the_exact_inverse() -> None:
    ds = layout("deepseek-v3")
    p0 = initial_plan(ds)
    edit = assign(ds, p0, expert_cells(ds, 10, 20), "CUDA0")
    assert edit.changed and edit.inverse().after == p0
    assert all(cell_device(ds, edit.after, c) == "CUDA0" for c in expert_cells(ds, 10, 20))
    assert cell_device(ds, edit.after, (9, G.EXPS_UP)) == CPU_NAME
    assert set(expert_cells(ds, 10, 20)) <= edit.after.pinned
    rows = row_cells(ds, [GLOBAL_LAYER])
    assert {c[1] for c in rows} == {G.TOKEN_EMBD, G.OUTPUT, G.OUTPUT_NORM}
    assert len(column_cells(ds, [G.SHARED])) == 58
    assert len(range_cells(ds, 0, 2)) == 3 * 2  # attention + dense FFN in the dense layers
    with pytest.raises(PlanError, match="no Shared expert cell"):
        assign(ds, p0, [(0, G.SHARED)], "CUDA0")


def test_nextn_tensors_get_no_device() -> None:
    glm = layout("glm-4.6")
    p = initial_plan(glm)
    assert all(d == "" for t, d in zip(glm.tensors, p.devices, strict=True) if not t.loaded)
    assert "blk.92.ffn_up_exps.weight" not in as_mapping(glm, p)


# --- KV cache ------------------------------------------------------------------------------------


def test_deepseek_mla_kv_is_the_published_1166_62_mib() -> None:
    ds = layout("deepseek-v3@IQ2_KS")  # ik flavour (attn_kv_b)
    s = Settings(
        dialect="ik", mla=3, flash_attn=True, cache_type_k="q8_0", cache_type_v="q8_0", ctx=32768
    )
    assert round(sum(kv_bytes(ds, s)) / MiB, 2) == 1166.62
    # The mainline-converted file makes ik fall back to -mla 1; with FA the size is the same.
    assert round(sum(kv_bytes(layout("deepseek-v3"), s)) / MiB, 2) == 1166.62


def test_qwen3_235b_gqa_kv_by_hand() -> None:
    q = layout("qwen3-235b-a22b")
    s = Settings(ctx=32768, cache_type_k="f16", cache_type_v="f16")
    # 94 layers × 32768 cells × (4 kv heads × 128) × (K + V) × 2 bytes
    assert sum(kv_bytes(q, s)) == 94 * 32768 * 4 * 128 * 2 * 2
    assert sum(kv_bytes(q, s.with_(dialect="mainline"))) == 94 * 32768 * 4 * 128 * 2 * 2


def test_kv_variants() -> None:
    ds_ik = layout("deepseek-v3@IQ2_KS")
    base = Settings(ctx=8192)
    # ik -mla 1 without FA keeps a second V^T cache of kv_lora_rank.
    mla1 = sum(kv_bytes(ds_ik, base.with_(mla=1, flash_attn=False)))
    assert mla1 == 61 * 8192 * (576 + 512) * 2
    # mainline stores only the latent K for an MLA-converted file.
    assert (
        sum(kv_bytes(layout("deepseek-v3"), base.with_(dialect="mainline"))) == 61 * 8192 * 576 * 2
    )
    # mainline runs a legacy (attn_kv_b) file as plain MHA: 192+128 per head, 128 heads.
    assert sum(kv_bytes(ds_ik, base.with_(dialect="mainline"))) == 61 * 8192 * 128 * (192 + 128) * 2
    # GLM: the nextn layer has no KV.
    glm = layout("glm-4.6")
    assert kv_bytes(glm, base)[92] == 0 and kv_bytes(glm, base)[91] > 0
    # gpt-oss: ik keeps full context on SWA layers, mainline only window + ubatch (padded).
    oss = layout("gpt-oss-120b")
    ik_sizes = kv_bytes(oss, base)
    ml_sizes = kv_bytes(oss, base.with_(dialect="mainline", ubatch=512))
    assert ik_sizes[0] == ik_sizes[1]
    assert ml_sizes[0] == 768 * 8 * 64 * 2 * 2 and ml_sizes[1] == ik_sizes[1]
    # q8_KV adds 8 bytes per K row (per head per cell) in ik.
    q = layout("qwen3-30b-a3b")
    f16 = kv_bytes(q, base.with_(cache_type_k="f16"))[0]
    q8kv = kv_bytes(q, base.with_(cache_type_k="q8_KV"))[0]
    assert q8kv - (f16 - 8192 * 4 * 128 * 2) == 8192 * 4 * (128 + 8)


# --- resolver ------------------------------------------------------------------------------------


def _split(lay: ModelLayout, device: str = "CUDA0") -> LayerSplit:
    return LayerSplit(999, (device,), tuple([device] * (lay.n_layer + 1)))


def test_resolver_defaults_and_first_match_wins() -> None:
    ds = layout("deepseek-v3")
    rules = Overrides(
        ((r"blk\.3\.ffn_up_exps", "CUDA0"), ("exps", CPU_NAME), (r"blk\.3\.", CPU_NAME))
    )
    placed = resolve(ds, rules, _split(ds), "ik").devices
    assert placed["token_embd.weight"] == CPU_NAME  # input layer always on the host
    assert placed["output.weight"] == "CUDA0"
    assert placed["blk.3.ffn_up_exps.weight"] == "CUDA0"
    assert placed["blk.3.ffn_gate_exps.weight"] == CPU_NAME
    assert placed["blk.3.attn_q_a.weight"] == CPU_NAME
    assert placed["blk.4.attn_q_a.weight"] == "CUDA0"


def test_output_needs_ngl_above_n_layer() -> None:
    ds = layout("deepseek-v3")
    s = Settings()
    devs = engine_layer_devices(ds, s, ["CUDA0"], 61, [])
    assert devs[61] == CPU_NAME and devs[0] == "CUDA0"
    devs = engine_layer_devices(ds, s, ["CUDA0"], 50, [])
    assert devs[10] == CPU_NAME and devs[11] == "CUDA0"
    ml = engine_layer_devices(ds, s.with_(dialect="mainline"), ["CUDA0"], 1, [])
    assert ml[61] == "CUDA0" and ml[60] == CPU_NAME  # mainline offloads the output first


def test_n_cpu_moe_is_last_n_in_ik_and_first_n_in_mainline() -> None:
    ds = layout("deepseek-v3")
    split = _split(ds)
    ik = resolve(ds, Overrides(n_cpu_moe=5), split, "ik").devices
    on_cpu = sorted({int(n.split(".")[1]) for n, d in ik.items() if d == CPU_NAME and "exps" in n})
    assert on_cpu == [56, 57, 58, 59, 60]
    ml = resolve(ds, Overrides(n_cpu_moe=5, n_cpu_moe_at=0), split, "mainline").devices
    on_cpu = sorted({int(n.split(".")[1]) for n, d in ml.items() if d == CPU_NAME and "exps" in n})
    assert on_cpu == [3, 4]  # layers 0–4, but 0–2 are dense
    everything = resolve(ds, Overrides(n_cpu_moe=999), split, "ik").devices
    assert all(d == CPU_NAME for n, d in everything.items() if "_exps" in n)


def test_ik_drops_overrides_without_a_gpu() -> None:
    ds = layout("qwen3-30b-a3b")
    cpu_only = LayerSplit(0, (), tuple([CPU_NAME] * (ds.n_layer + 1)))
    res = resolve(ds, Overrides((("exps", "CUDA0"),)), cpu_only, "ik")
    assert set(res.devices.values()) == {CPU_NAME}
    assert "discards every tensor override" in res.notes[0]


def test_number_regex_matches_exactly() -> None:
    for values in (
        [3],
        [1, 2, 3, 10, 11],
        list(range(10, 25)),
        list(range(3, 61)),
        [0, 9, 99, 100],
    ):
        rx = re.compile(rf"blk\.({number_regex(values)})\.")
        assert [i for i in range(200) if rx.search(f"blk.{i}.x")] == values


# --- generation round trip -----------------------------------------------------------------------

SPECS = [f"{key}@{recipe}" for key, e in catalog.CATALOG.items() for recipe in e.recipes[:2]]
RPC_A, RPC_B = "127.0.0.1:50052", "127.0.0.1:50053"


@st.composite
def random_plans(draw: st.DrawFn) -> tuple[str, Rig, Plan, str]:
    spec = draw(st.sampled_from(SPECS))
    lay = layout(spec)
    n_gpu = draw(st.integers(0, 3))
    rpc = tuple(draw(st.sampled_from([(), (RPC_A,), (RPC_A, RPC_B)])))
    rig = rig_of(*([24] * n_gpu), rpc=rpc)
    names = [d.name for d in rig.devices] + [CPU_NAME]
    rnd = draw(st.randoms(use_true_random=False))
    style = draw(st.sampled_from(["cells", "homes"]))
    devices = list(initial_plan(lay).devices)
    if style == "cells":
        for idx in lay.cells.values():
            dev = rnd.choice(names)
            for i in idx:
                if devices[i]:
                    devices[i] = dev
    else:
        # Contiguous homes with experts scattered — the shape real plans have.
        bounds = [0, *sorted(rnd.randint(0, lay.n_layer) for _ in names[1:]), lay.n_layer]
        home = {il: names[k] for k in range(len(names)) for il in range(bounds[k], bounds[k + 1])}
        for (layer, group), idx in lay.cells.items():
            dev = home.get(layer, CPU_NAME)
            if group.is_routed_expert and rnd.random() < 0.5:
                dev = rnd.choice(names)
            for i in idx:
                if devices[i]:
                    devices[i] = dev
    dialect = draw(st.sampled_from(["ik", "mainline"]))
    return spec, rig, Plan(tuple(devices)), dialect


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(random_plans())
def test_resolve_of_generate_is_the_plan(case: tuple[str, Rig, Plan, str]) -> None:
    spec, rig, plan, dialect = case
    lay = layout(spec)
    s = Settings(dialect=dialect)  # type: ignore[arg-type]
    split = plan_layer_split(lay, plan, rig, s)
    overrides = generate(lay, plan, split, dialect)  # type: ignore[arg-type]
    for regex, _ in overrides.rules:
        assert "," not in regex and "=" not in regex
    expected = as_mapping(lay, plan)
    if split.devices:
        got = resolve(lay, overrides, split, dialect).devices  # type: ignore[arg-type]
        wrong = {k: (v, got[k]) for k, v in expected.items() if got[k] != v}
        assert not wrong, (spec, dialect, overrides, list(wrong.items())[:5])
    # The whole way round: argv → parse → engine layer split from -ngl/-dev/-ts → resolve.
    command = build_command(lay, plan, rig, s)
    back, _, _ = import_command(list(command.argv), lay, rig, dialect=dialect)  # type: ignore[arg-type]
    if split.devices:
        got = as_mapping(lay, back)
        wrong = {k: (v, got[k]) for k, v in expected.items() if got[k] != v}
        assert not wrong, (spec, dialect, command.argv, list(wrong.items())[:5])
        # And the KV layer split the engine derives equals the one we estimated with.
        imported = parse_command(list(command.argv), dialect=dialect)  # type: ignore[arg-type]
        from moe_studio.core.plan.cmdline import imported_split, rig_for_command

        engine = imported_split(lay, imported, rig_for_command(imported, rig))
        assert engine.kv_devices == split.kv_devices
    else:
        assert set(as_mapping(lay, back).values()) == {CPU_NAME}


# --- real commands from users --------------------------------------------------------------------


def test_seed_guide_command() -> None:
    ds = layout("deepseek-v3")
    cmd = r'''./llama-server \
      -m /models/DeepSeek-V3-Q4_K_M-00001-of-00009.gguf \
      -ngl 999 \
      -ot "blk\.([0-9]|[1-2][0-9]|30)\.=CUDA0,exps=CPU"'''
    rig = rig_of(96)
    plan, imported, _ = import_command(cmd, ds, rig)
    placed = as_mapping(ds, plan)
    assert imported.model.endswith("00001-of-00009.gguf")
    assert placed["blk.30.ffn_up_exps.weight"] == "CUDA0"
    assert placed["blk.31.ffn_up_exps.weight"] == CPU_NAME
    assert placed["blk.60.attn_output.weight"] == "CUDA0"
    assert placed["token_embd.weight"] == CPU_NAME
    assert plan.pinned == frozenset(ds.cells)
    _reemit_resolves_the_same(ds, plan, rig, "ik")


def test_ik_pr_409_multi_gpu_style() -> None:
    ds = layout("deepseek-v3@IQ2_KS")
    cmd = (
        "llama-server -m ds.gguf -ngl 999 -mla 2 -fa on -amb 512 "
        '-ot "blk.(0|1|2|3|4|5|6|7).ffn.=CUDA0" -ot "blk.(8|9|10|11).ffn.=CUDA1" '
        '-ot "blk.(12|13|14|15).ffn.=CUDA2" -ot "blk.(16|17|18|19).ffn.=CUDA3" -ot "ffn.*=CPU"'
    )
    rig = rig_of(24, 24, 24, 24)
    plan, imported, _ = import_command(cmd, ds, rig)
    placed = as_mapping(ds, plan)
    assert imported.settings.mla == 2 and imported.settings.amb == 512
    assert placed["blk.5.ffn_up_exps.weight"] == "CUDA0"
    assert placed["blk.10.ffn_down_exps.weight"] == "CUDA1"
    assert placed["blk.19.ffn_down_shexp.weight"] == "CUDA3"
    assert placed["blk.20.ffn_gate_exps.weight"] == CPU_NAME
    assert placed["blk.20.ffn_norm.weight"] == CPU_NAME  # "ffn.*" also catches the FFN norm
    _reemit_resolves_the_same(ds, plan, rig, "ik")


def test_kimi_k2_command_from_llama_cpp_14642() -> None:
    kimi = layout("kimi-k2")
    cmd = (
        "./build/bin/llama-server --model Kimi-K2-Instruct-UD-Q4_K_XL-00001-of-00013.gguf "
        '-ngl 62 -ot "blk\\.(3|4|5|6|7|8)\\.ffn_.*=CUDA0" -ot exps=CPU -ub 4096 -b 4096 '
        "--numa numactl -c 131072 --threads 64 -fit off"
    )
    rig = rig_of(96, ram=768)
    plan, imported, _ = import_command(cmd, kimi, rig, dialect="mainline")
    placed = as_mapping(kimi, plan)
    s = imported.settings
    assert (s.ubatch, s.batch, s.ctx, s.numa, s.threads) == (4096, 4096, 131072, "numactl", 64)
    assert placed["blk.8.ffn_down_exps.weight"] == "CUDA0"
    assert placed["blk.9.ffn_down_exps.weight"] == CPU_NAME
    assert placed["blk.9.ffn_down_shexp.weight"] == "CUDA0"  # layer default: -ngl 62 offloads all
    assert placed["output.weight"] == "CUDA0"
    _reemit_resolves_the_same(kimi, plan, rig, "mainline")


def _reemit_resolves_the_same(lay: ModelLayout, plan: Plan, rig: Rig, dialect: str) -> None:
    command = build_command(lay, plan, rig, Settings(dialect=dialect))  # type: ignore[arg-type]
    again, _, _ = import_command(list(command.argv), lay, rig, dialect=dialect)  # type: ignore[arg-type]
    assert as_mapping(lay, again) == as_mapping(lay, plan)


def test_import_keeps_unknown_flags_and_fixes_old_ones() -> None:
    imported = parse_command(
        "CUDA_VISIBLE_DEVICES=0 numactl --interleave=all ./llama-server -m m.gguf -fa -fmoe "
        "--mlock --slot-save-path /tmp/slots -ot exps=CPU --n-cpu-moe 3 -c 8192"
    )
    assert imported.env == {"CUDA_VISIBLE_DEVICES": "0"}
    assert imported.prefix == ("numactl", "--interleave=all")
    assert imported.settings.flash_attn is True
    assert imported.settings.extra_args == ("--mlock", "--slot-save-path", "/tmp/slots")
    assert imported.overrides.rules == (("exps", CPU_NAME),) and imported.overrides.n_cpu_moe == 3
    assert any("-fmoe" in n for n in imported.notes)
    with pytest.raises(CommandError, match="no -m"):
        parse_command("llama-server -c 4096")
    with pytest.raises(CommandError, match="needs a value"):
        parse_command("llama-server -m x.gguf -c")
    with pytest.raises(CommandError, match="not REGEX=BUFFER_TYPE"):
        parse_command("llama-server -m x.gguf -ot exps")


def test_perplexity_context_holds_every_chunk_of_a_batch() -> None:
    """llama-perplexity scores n_batch / -c chunks at once: its context is that many chunks
    (ik PR #616: -c 512 with the default -b 2048 prints n_ctx = 2048)."""
    ppl = parse_command("llama-perplexity -m m.gguf -f wiki.test.raw -c 512 -ub 512").settings
    assert (ppl.ctx, ppl.batch, ppl.parallel) == (2048, 2048, 4)
    default = parse_command("llama-perplexity -m m.gguf -f wiki.test.raw").settings
    assert (default.ctx, default.batch) == (2048, 2048)  # -c defaults to 512 there
    long = parse_command("llama-perplexity -m m.gguf -c 4096").settings
    assert (long.ctx, long.batch, long.parallel) == (4096, 2048, 1)
    server = parse_command("llama-server -m m.gguf -c 512").settings
    assert (server.ctx, server.parallel) == (512, 1)


# --- command building ----------------------------------------------------------------------------


def test_command_never_has_fmoe_or_bare_fa_and_paths_survive(tmp_path: object) -> None:
    q = layout("qwen3-30b-a3b")
    rig = rig_of(24)
    plan = auto_place(q, initial_plan(q), rig, Settings()).plan
    weird = '/models/my model\'s $(rm -rf ~) `x` "q".gguf'
    for dialect in ("ik", "mainline"):
        argv = build_command(q, plan, rig, Settings(dialect=dialect), model_path=weird).argv  # type: ignore[arg-type]
        assert "-fmoe" not in argv
        fa = argv.index("-fa")
        assert argv[fa + 1] == "on"
        assert argv[argv.index("-m") + 1] == weird
        assert argv[argv.index("--host") + 1] == "127.0.0.1"
        assert "-c" in argv
        for i, a in enumerate(argv):
            if a == "-ot":
                regex = argv[i + 1].rsplit("=", 1)[0]
                assert "," not in regex and "=" not in regex
    mainline = build_command(q, plan, rig, Settings(dialect="mainline")).argv
    assert mainline[mainline.index("-fit") + 1] == "off"


def test_rpc_comes_before_rules_naming_it() -> None:
    q = layout("qwen3-30b-a3b")
    rig = rig_of(rpc=(RPC_A, RPC_B))
    plan = assign(q, initial_plan(q), range_cells(q, 0, 47), f"RPC0[{RPC_A}]").after
    plan = assign(q, plan, expert_cells(q, 20, 30), f"RPC0[{RPC_B}]").after
    argv = build_command(q, plan, rig, Settings()).argv
    assert argv.index("--rpc") < argv.index("-ot")
    assert argv[argv.index("--rpc") + 1] == f"{RPC_A},{RPC_B}"
    assert argv[argv.index("-dev") + 1] == f"RPC0[{RPC_A}],RPC0[{RPC_B}]"
    ml = build_command(q, plan, rig, Settings(dialect="mainline")).argv
    assert ml[ml.index("-dev") + 1] == "RPC0,RPC1"


def test_dialect_errors_are_clear() -> None:
    ds = layout("deepseek-v3")
    rig = rig_of(24)
    plan = initial_plan(ds)
    with pytest.raises(DialectError, match="-mla"):
        build_command(ds, plan, rig, Settings(dialect="mainline", mla=3))
    with pytest.raises(DialectError, match="q6_0"):
        build_command(ds, plan, rig, Settings(dialect="mainline", cache_type_k="q6_0"))
    with pytest.raises(CommandError, match="at least two GPUs"):
        build_command(ds, plan, rig, Settings(split_mode_graph=True))
    with pytest.raises(CommandError, match="merge"):
        build_command(
            layout("glm-4.6"), initial_plan(layout("glm-4.6")), rig, Settings(merge_qkv=True)
        )
    with pytest.raises(CommandError, match="flash attention"):
        build_command(ds, plan, rig, Settings(flash_attn=False, cache_type_v="q8_0"))


def test_cpu_only_plans_emit_no_overrides_and_say_why() -> None:
    q = layout("qwen3-30b-a3b")
    cmd = build_command(q, initial_plan(q), rig_of(), Settings())
    assert "-ot" not in cmd.argv and cmd.argv[cmd.argv.index("-ngl") + 1] == "0"
    assert "ignores tensor overrides" in cmd.notes[0]
    on_gpu_rig = build_command(q, initial_plan(q), rig_of(24), Settings())
    assert on_gpu_rig.argv[on_gpu_rig.argv.index("-ngl") + 1] == "0"


def test_extra_arguments_pass_verbatim() -> None:
    q = layout("qwen3-30b-a3b")
    extra = ("--alias", "my model", "--chat-template-file", "/t/a b.jinja")
    argv = build_command(q, initial_plan(q), rig_of(24), Settings(extra_args=extra)).argv
    assert argv[-4:] == extra


# --- auto-placement ------------------------------------------------------------------------------


def test_auto_place_keeps_always_active_on_gpu_and_fills_experts() -> None:
    ds = layout("deepseek-v3@IQ2_KS")
    rig = rig_of(24, ram=256)
    s = Settings(cache_type_k="q8_0", cache_type_v="q8_0", ubatch=512)
    placed = as_mapping(ds, auto_place(ds, initial_plan(ds), rig, s).plan)
    for il in range(61):
        assert placed[f"blk.{il}.attn_output.weight"] == "CUDA0"
    assert placed["output.weight"] == "CUDA0" and placed["token_embd.weight"] == CPU_NAME
    on_gpu = sorted(
        {int(n.split(".")[1]) for n, d in placed.items() if "_exps" in n and d == "CUDA0"}
    )
    assert on_gpu and on_gpu[0] == 3  # the first MoE layers, in order
    for il in on_gpu:  # up and gate of a layer are never split
        assert placed[f"blk.{il}.ffn_up_exps.weight"] == placed[f"blk.{il}.ffn_gate_exps.weight"]


def test_auto_place_never_moves_pins_and_handles_uneven_gpus() -> None:
    ds = layout("deepseek-v3")
    rig = rig_of(24, 16, 48, 12)
    pinned = assign(ds, initial_plan(ds), expert_cells(ds, 50, 52), "CUDA2").after
    pinned = assign(ds, pinned, [(5, G.ATTENTION)], CPU_NAME).after
    result = auto_place(ds, pinned, rig, Settings(cache_type_k="q8_0"))
    for cell in pinned.pinned:
        for i in ds.cells[cell]:
            assert result.plan.devices[i] == pinned.devices[i]
    from moe_studio.core.plan.layers import plan_layer_split
    from moe_studio.core.plan.memory import estimate

    split = plan_layer_split(ds, result.plan, rig, Settings(cache_type_k="q8_0"))
    est = estimate(ds, result.plan, rig, Settings(cache_type_k="q8_0"), split.kv_devices)
    assert all(d.fits for d in est.devices[:-1])
    used = {d.name: d.weights for d in est.devices}
    assert used["CUDA2"] > used["CUDA1"]  # 48 GiB card holds more than the 16 GiB one


def test_auto_place_says_by_how_much_it_falls_short() -> None:
    kimi = layout("kimi-k2")
    result = auto_place(kimi, initial_plan(kimi), rig_of(8), Settings(ctx=131072))
    assert result.shortfall > 0
    assert any("-c 65536" in s for s in result.suggestions)
    assert any("q8_0" in s for s in result.suggestions)
    assert "stay on the CPU" in result.notes[0]


def test_ik_switches_mla_to_3_when_only_some_layers_are_offloaded() -> None:
    from moe_studio.core.plan.memory import engine_settings, estimate

    ds = layout("deepseek-v3@IQ2_KS")
    s = Settings(mla=1, flash_attn=False, ctx=4096)
    assert engine_settings(ds, s, 999).effective_mla == 1
    assert engine_settings(ds, s, 30).effective_mla == 3
    assert engine_settings(ds, s.with_(dialect="mainline"), 30) == s.with_(dialect="mainline")
    # The estimate uses what the engine will run with: attention of layer 0 on the CPU means
    # -ngl 60, so the -mla 1 V^T cache disappears from the KV.
    rig = rig_of(96)
    everything = assign(ds, initial_plan(ds), range_cells(ds, 0, 60), "CUDA0").after
    partial = assign(ds, everything, [(0, G.ATTENTION)], CPU_NAME).after
    split = plan_layer_split(ds, partial, rig, s)
    assert split.ngl == 60
    kv = sum(d.kv for d in estimate(ds, partial, rig, s, split.kv_devices).devices)
    assert kv == 61 * 4096 * 576 * 2  # mla 3 without FA: one latent cache of type_v (f16)


def test_mainline_offloads_the_output_layer_first() -> None:
    q = layout("qwen3-30b-a3b")
    rig = rig_of(24)
    experts_only = assign(q, initial_plan(q), expert_cells(q, 0, 5), "CUDA0").after
    s = Settings(dialect="mainline")
    split = plan_layer_split(q, experts_only, rig, s)
    assert split.ngl == 1 and split.layer_devices[-1] == "CUDA0"
    command = build_command(q, experts_only, rig, s)
    back, _, _ = import_command(list(command.argv), q, rig, dialect="mainline")
    assert as_mapping(q, back) == as_mapping(q, experts_only)
    assert as_mapping(q, back)["output.weight"] == CPU_NAME


@pytest.mark.parametrize("gpus", [(24, 12, 1), (24, 24, 24), (48, 16)])
def test_ts_values_are_rounded_to_what_changes_the_split(gpus: tuple[int, ...]) -> None:
    """-ts 644,331,25 rather than 644.262,330.654,25.0842: the engine lands the same layers."""
    ds = layout("deepseek-v3@IQ2_KS")
    rig = rig_of(*gpus)
    s = Settings()
    plan = auto_place(ds, initial_plan(ds), rig, s).plan
    argv = list(build_command(ds, plan, rig, s).argv)
    values = argv[argv.index("-ts") + 1].split(",")
    assert all(re.fullmatch(r"\d+", v) for v in values), values
    imported = parse_command(argv)
    from moe_studio.core.plan.cmdline import imported_split, rig_for_command

    engine = imported_split(ds, imported, rig_for_command(imported, rig))
    assert engine.kv_devices == plan_layer_split(ds, plan, rig, s).kv_devices


def test_ik_before_4327_splits_layers_by_their_count() -> None:
    # Build 3737 (src/llama.cpp load_tensors): layer i to the first GPU whose cumulative share
    # exceeds i / min(ngl, n_layer + 1). Two equal GPUs, -ngl 99, DeepSeek's 61 layers: 31 on
    # CUDA0 and 30 + the output on CUDA1, as ik issue #437's logs print (KV 592.89 / 573.76 MiB).
    ds = catalog.load_catalog("catalog:deepseek-v3@IQ2_KS")
    old = engine_layer_devices(ds, Settings(engine_build=3737), ["CUDA0", "CUDA1"], 99, [])
    assert old.count("CUDA0") == 31 and old[:31] == ["CUDA0"] * 31
    assert old[31:] == ["CUDA1"] * 31
    # -ngl 50: the first 11 layers stay on the CPU, the other 50 split 25/25, output on the CPU
    part = engine_layer_devices(ds, Settings(engine_build=3737), ["CUDA0", "CUDA1"], 50, [])
    assert part[:11] == ["CPU"] * 11 and part[11:61].count("CUDA0") == 25
    assert part[61] == "CPU"


def test_only_the_first_gpu_budgets_the_offloaded_expert_matmuls() -> None:
    # -ub 4096 with routed experts in RAM: the first CUDA device takes their big-batch matmuls
    # (and the weight copies); the others must not reserve that too, or each leaves ~5 GiB of
    # experts in RAM that would fit.
    from moe_studio.core.plan.planning import Planner

    ds = catalog.load_catalog("catalog:deepseek-v3@IQ2_KS")
    gpus = tuple(Device(f"CUDA{i}", DeviceKind.CUDA, 24 * GiB, index=i) for i in range(4))
    rig = Rig("4x24", HostInfo(512 * GiB, cores_physical=32), gpus)
    planner = Planner(ds, rig, Settings(ctx=32768, cache_type_k="q8_0", ubatch=4096, batch=4096))
    estimate = planner.estimate(planner.auto_place(planner.initial()).plan)[1]
    for name in ("CUDA1", "CUDA2"):
        gpu = estimate.device(name)
        assert gpu is not None and gpu.fits
        assert gpu.usable - gpu.total < 2 * GiB, f"{name}: {gpu.usable - gpu.total} bytes unused"
