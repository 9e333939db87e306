"""Commands written for older ik_llama.cpp builds: each flag in the form that build accepts.

The eras come from ik's history (core/plan/engine_builds.py): a bare ``-fa`` and ``-fmoe``
before build 3928, ``-no-fa`` (flash attention on by default) from 3928, ``-fa on|off`` from
3985; ``-cmoe``/``--n-cpu-moe`` from 3833, ``-dev`` from 3933, ``RPC<n>[host:port]`` buffers
from 4033, ``-sm graph`` from 4035.
"""

from __future__ import annotations

from functools import cache

import pytest

from moe_studio.core.engine.discovery import EngineInfo
from moe_studio.core.engine.launch import build_launch_spec
from moe_studio.core.errors import CommandError
from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.hardware.devices import CPU_NAME, Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan import engine_builds as builds
from moe_studio.core.plan.autoplace import auto_place
from moe_studio.core.plan.cmdline import (
    build_command,
    import_command,
    parse_command,
    unlisted_options,
)
from moe_studio.core.plan.engine_options import split_options
from moe_studio.core.plan.layers import engine_layer_devices
from moe_studio.core.plan.placement import (
    Plan,
    as_mapping,
    assign,
    expert_cells,
    initial_plan,
    range_cells,
)
from moe_studio.core.plan.planning import Planner, apply_pin
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB

EP = "10.0.0.2:50052"
RPC = f"RPC0[{EP}]"


@cache
def layout(spec: str) -> ModelLayout:
    return catalog.load_catalog(spec)


def rig(*gpus: int, rpc: bool = False) -> Rig:
    devices = [Device(RPC, DeviceKind.RPC, 24 * GiB, endpoint=EP)] if rpc else []
    devices += [Device(f"CUDA{i}", DeviceKind.CUDA, g * GiB, index=i) for i, g in enumerate(gpus)]
    return Rig("test", HostInfo(512 * GiB, cores_physical=16), tuple(devices))


def experts_on_cpu() -> tuple[ModelLayout, Plan, Rig]:
    """qwen3-30b-a3b on one 8 GiB GPU: most experts stay in RAM."""
    q = layout("qwen3-30b-a3b")
    r = rig(8)
    # Every layer and the output on the GPU, the routed experts of the last 36 layers on the
    # CPU (what ik's --n-cpu-moe 36 says).
    plan = initial_plan(q)
    for rule in ("L:0-47=CUDA0", "^output=CUDA0", "E:12-47=CPU"):
        plan = apply_pin(q, plan, rule).after
    return q, plan, r


def flags(argv: tuple[str, ...]) -> list[str]:
    return [g[0] for g in split_options(list(argv[1:]), "ik") if g[0].startswith("-")]


ERAS = [3737, 3927, 3928, 3984, 3985, None]


@pytest.mark.parametrize("build", ERAS)
@pytest.mark.parametrize("flash", [True, False])
def test_flash_attention_is_written_as_the_build_reads_it(build: int | None, flash: bool) -> None:
    q, plan, r = experts_on_cpu()
    argv = build_command(q, plan, r, Settings(engine_build=build, flash_attn=flash)).argv
    if build is not None and build < 3928:  # off by default; a bare -fa turns it on
        assert ("-fa" in argv) is flash and "-no-fa" not in argv
        if flash:
            assert argv[argv.index("-fa") + 1] not in ("on", "off")
    elif build is not None and build < 3985:  # on by default; only -no-fa
        assert "-fa" not in argv and ("-no-fa" in argv) is not flash
    else:
        assert argv[argv.index("-fa") + 1] == ("on" if flash else "off")
    # Read back for the same build, the command means the same flash attention.
    assert parse_command(argv, engine_build=build).settings.flash_attn is flash


@pytest.mark.parametrize("build", [3570, 3571, 3737, 3927, 3928, None])
def test_fused_moe_is_asked_for_where_it_is_off_by_default(build: int | None) -> None:
    q = layout("qwen3-30b-a3b")
    argv = build_command(q, initial_plan(q), rig(24), Settings(engine_build=build)).argv
    assert ("-fmoe" in argv) is (build is not None and 3571 <= build < 3928)


@pytest.mark.parametrize("build", [*ERAS, 3600, 3833, 3933, 4033])
def test_every_flag_written_is_one_the_build_accepts(build: int | None) -> None:
    q, plan, r = experts_on_cpu()
    settings = Settings(engine_build=build, amb=512, rtr=True, metrics=True, api_key="k1")
    for flag in flags(build_command(q, plan, r, settings).argv):
        assert builds.accepts(build, flag), (build, flag)


def test_cpu_moe_becomes_override_rules_before_build_3833() -> None:
    q, plan, r = experts_on_cpu()
    new = build_command(q, plan, r, Settings()).argv
    old = build_command(q, plan, r, Settings(engine_build=3832)).argv
    assert "--n-cpu-moe" in new or "-cmoe" in new
    assert "--n-cpu-moe" not in old and "-cmoe" not in old and "-ot" in old
    again, _, _ = import_command(old, q, r, engine_build=3832)
    assert as_mapping(q, again) == as_mapping(q, plan)


def test_no_tensor_overrides_before_build_3573() -> None:
    q, plan, r = experts_on_cpu()
    with pytest.raises(CommandError, match=r"build 3572 has no -ot .*3573"):
        build_command(q, plan, r, Settings(engine_build=3572))
    whole = initial_plan(q)  # every layer whole on the CPU: no override needed
    assert "-ot" not in build_command(q, whole, r, Settings(engine_build=3572)).argv


def test_graph_split_is_refused_before_build_4035() -> None:
    q = layout("qwen3-30b-a3b")
    r = rig(24, 24)
    plan = auto_place(q, initial_plan(q), r, Settings()).plan
    graph = Settings(split_mode_graph=True)
    assert "graph" in build_command(q, plan, r, graph).argv
    with pytest.raises(CommandError, match=r"-sm graph .*build 4035"):
        build_command(q, plan, r, graph.with_(engine_build=4034))


def test_device_list_without_dev_before_build_3933() -> None:
    q = layout("qwen3-30b-a3b")
    r = rig(24, 24)
    on_second = assign(q, initial_plan(q), range_cells(q, 0, q.n_layer - 1), "CUDA1").after
    argv = build_command(q, on_second, r, Settings(engine_build=3933)).argv
    assert argv[argv.index("-dev") + 1] == "CUDA1"
    with pytest.raises(CommandError, match=r"no -dev .*uses every GPU"):
        build_command(q, on_second, r, Settings(engine_build=3932))


def rpc_plan(gpu_first: bool) -> tuple[ModelLayout, Plan, Rig]:
    """Half the layers on CUDA0, half on the RPC server, some experts moved to the other."""
    q = layout("qwen3-30b-a3b")
    first, second = ("CUDA0", RPC) if gpu_first else (RPC, "CUDA0")
    plan = assign(q, initial_plan(q), range_cells(q, 0, 23), first).after
    plan = assign(q, plan, range_cells(q, 24, 47), second).after
    plan = assign(q, plan, expert_cells(q, 10, 15), second).after
    plan = assign(q, plan, expert_cells(q, 30, 35), first).after
    plan = assign(q, plan, expert_cells(q, 40, 47), CPU_NAME).after
    return q, plan, rig(24, rpc=True)


def test_rpc_buffers_are_named_as_the_build_names_them() -> None:
    q, plan, r = rpc_plan(gpu_first=False)
    new = build_command(q, plan, r, Settings()).argv
    assert any(a.endswith(f"={RPC}") for a in new) and RPC in new[new.index("-dev") + 1]
    old = build_command(q, plan, r, Settings(engine_build=4032)).argv
    assert not any("RPC0[" in a for a in old)
    assert any(a.endswith(f"=RPC[{EP}]") for a in old)
    # Read back, the old names are today's.
    again, _, _ = import_command(old, q, r, engine_build=4032)
    assert as_mapping(q, again) == as_mapping(q, plan)


def test_rpc_comes_after_the_gpus_before_build_4027() -> None:
    q, plan, r = rpc_plan(gpu_first=False)
    with pytest.raises(CommandError, match=r"RPC devices after the GPUs .*build 4027"):
        build_command(q, plan, r, Settings(engine_build=4026))
    with pytest.raises(CommandError, match="no -dev"):
        build_command(q, plan, r, Settings(engine_build=3737))
    q, plan, r = rpc_plan(gpu_first=True)
    argv = build_command(q, plan, r, Settings(engine_build=3737)).argv
    # No -dev: the engine's own order (every GPU, then --rpc) is the plan's.
    assert "-dev" not in argv and argv[argv.index("--rpc") + 1] == EP
    assert any(a.endswith(f"=RPC[{EP}]") for a in argv)


def test_flags_the_build_lacks_are_left_out_with_a_note() -> None:
    q, plan, r = experts_on_cpu()
    settings = Settings(amb=512, rtr=True, extra_args=("-cuda", "offload-batch-size=64", "-ooae"))
    new = build_command(q, plan, r, settings)
    assert "-cuda" in new.argv and "-ooae" not in new.argv
    assert any("-ooae left out" in n and "3917" in n for n in new.notes)
    old = build_command(q, plan, r, settings.with_(engine_build=3575))
    assert "-cuda" not in old.argv and "offload-batch-size=64" not in old.argv
    assert "-amb" not in old.argv and "-rtr" in old.argv
    notes = " ".join(old.notes)
    assert "-cuda offload-batch-size=64 left out" in notes and "3961" in notes
    assert "-amb 512 left out" in notes and "3576" in notes
    between = build_command(q, plan, r, settings.with_(engine_build=3900))
    assert "-ooae" in between.argv and "-amb" in between.argv


def test_old_builds_refuse_what_the_memory_depends_on() -> None:
    ds = layout("deepseek-v3")
    r = rig(24)
    plan = initial_plan(ds)
    with pytest.raises(CommandError, match=r"-mla 3 .*build 3599"):
        build_command(ds, plan, r, Settings(engine_build=3598, mla=3))
    with pytest.raises(CommandError, match=r"q8_kv .*build 3561"):
        build_command(ds, plan, r, Settings(engine_build=3560, cache_type_k="q8_KV"))
    argv = build_command(ds, plan, r, Settings(engine_build=3598, mla=2)).argv
    assert argv[argv.index("-mla") + 1] == "2"


def test_import_for_an_old_build() -> None:
    old = parse_command("llama-server -m x.gguf -fa -fmoe -c 4096", engine_build=3737)
    assert old.settings.flash_attn is True and old.notes == ()
    assert old.settings.engine_build == 3737 and "-fmoe" not in old.settings.extra_args
    assert parse_command("llama-server -m x.gguf", engine_build=3737).settings.flash_attn is False
    # The newest build: a bare -fa and -fmoe are fixed, with a note each.
    new = parse_command("llama-server -m x.gguf -fa -fmoe -c 4096")
    assert new.settings.flash_attn is True and len(new.notes) == 2
    no_fa = parse_command("llama-server -m x.gguf -no-fa", engine_build=3950)
    assert no_fa.settings.flash_attn is False


def test_options_the_engine_does_not_list_give_a_note() -> None:
    argv = ("llama-server", "-m", "x.gguf", "-ot", "exps=CPU", "--port=8081", "-c", "-1")
    assert unlisted_options(argv, frozenset(), "ik") == ""  # help not read
    assert unlisted_options(argv, frozenset({"-m", "-ot", "--port", "-c"}), "ik") == ""
    note = unlisted_options(argv, frozenset({"-m", "-c"}), "ik")
    assert "does not list -ot, --port" in note and "unknown argument" in note


def test_build_table_is_in_build_order() -> None:
    numbers = [c.build for c in builds.IK_CHANGES]
    assert numbers == sorted(numbers)
    for since, until in builds.IK_FLAGS.values():
        assert since in builds.IK_CHANGES and (until is None or until.build > since.build)
    assert builds.accepts(3737, "-fmoe") and not builds.accepts(None, "-fmoe")
    assert not builds.accepts(3737, "-dev") and builds.accepts(3737, "--metrics")


def test_a_launch_notes_options_the_engines_help_does_not_list() -> None:
    q, plan, r = experts_on_cpu()
    result = Planner(q, r, Settings(engine_build=3737, rtr=True)).result(plan)
    assert result.command is not None
    listed = frozenset(flags(result.command.argv)) - {"-ot", "-rtr"}
    engine = EngineInfo("/opt/ik/llama-server", "ik", build=3737, options=listed)
    spec = build_launch_spec(result, engine, dialect="ik")
    assert "-ot" in spec.argv and "-rtr" in spec.argv  # kept: build 3737 accepts both
    assert any("does not list -ot, -rtr" in n for n in spec.notes)
    full = EngineInfo("/opt/ik/llama-server", "ik", build=3737, options=listed | {"-ot", "-rtr"})
    assert not build_launch_spec(result, full, dialect="ik").notes


def test_a_bare_fa_does_not_take_the_next_option() -> None:
    args = ["-c", "512", "-fa", "-b", "2048", "-fmoe", "-np", "1"]
    assert split_options(args, "ik") == [
        ["-c", "512"],
        ["-fa"],
        ["-b", "2048"],
        ["-fmoe"],
        ["-np", "1"],
    ]
    assert split_options(["-fa", "on", "-b", "8"], "ik") == [["-fa", "on"], ["-b", "8"]]
    note = unlisted_options(["llama-server", *args], frozenset({"-c", "-fa", "-np"}), "ik")
    assert "does not list -b, -fmoe" in note


def test_a_cpu_only_build_before_3933_keeps_layer_0_off_its_cpu() -> None:
    # Build 3737 without CUDA counts the CPU as device 0 beside its rpc-server and gave it layer
    # 0 (seen on the real build: KV 0.75 + 0.25 MiB); -ts 0,1 keeps every layer on the RPC device.
    q = layout("qwen3-30b-a3b")
    r = rig(rpc=True)
    plan = initial_plan(q)
    for rule in (f"L:0-47={RPC}", f"^output={RPC}"):
        plan = apply_pin(q, plan, rule).after
    old = build_command(q, plan, r, Settings(engine_build=3737)).argv
    assert old[old.index("-ts") + 1] == "0,1"
    new = build_command(q, plan, r, Settings()).argv
    assert "-ts" not in new
    gpu = rig(24)  # a CUDA build lists its GPUs, not the CPU
    gpu_plan = auto_place(q, initial_plan(q), gpu, Settings(engine_build=3737)).plan
    assert "-ts" not in build_command(q, gpu_plan, gpu, Settings(engine_build=3737)).argv


@pytest.mark.parametrize("build", [3737, 4326, 4327, None])
def test_the_written_split_gives_the_planned_layers_on_that_build(build: int | None) -> None:
    # Before build 4327 ik split layers by count over the -ts shares; from 4327 by layer size.
    # The -ts the command writes must bring each layer where the plan put it, read back with
    # that build's own rule.
    ds = layout("deepseek-v3")
    r = rig(24, 24, 24)
    plan = initial_plan(ds)
    for rule in ("L:0-11=CUDA0", "L:12-40=CUDA1", "L:41-60=CUDA2", "^output=CUDA2", "E:3-60=CPU"):
        plan = apply_pin(ds, plan, rule).after
    settings = Settings(engine_build=build)
    argv = build_command(ds, plan, r, settings).argv
    ts = [float(x) for x in argv[argv.index("-ts") + 1].split(",")]
    engine = engine_layer_devices(ds, settings, ["CUDA0", "CUDA1", "CUDA2"], 999, ts)
    planned = Planner(ds, r, settings).estimate(plan)[0].layer_devices
    assert list(engine[: ds.n_layer]) == list(planned[: ds.n_layer])


def test_mainline_commands_follow_the_mainline_build() -> None:
    # b6325 (#15434): -fa takes a value; b7407 (#16653): -fit exists.
    q, plan, r = experts_on_cpu()
    old = build_command(q, plan, r, Settings(dialect="mainline", engine_build=5331)).argv
    assert "-fa" in old and old[old.index("-fa") + 1].startswith("-") and "-fit" not in old
    mid = build_command(q, plan, r, Settings(dialect="mainline", engine_build=7000)).argv
    assert mid[mid.index("-fa") + 1] == "on" and "-fit" not in mid
    new = build_command(q, plan, r, Settings(dialect="mainline")).argv
    assert new[new.index("-fa") + 1] == "on" and new[new.index("-fit") + 1] == "off"
