"""Profiles (core.profiles): round trips, migrations, refusals, unknown keys, model changes,
the library, and autosave/recovery. Bad files must be left byte for byte as they were."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from moe_studio.core import __version__
from moe_studio.core.cli.main import main
from moe_studio.core.errors import ProfileError
from moe_studio.core.fsutil import backup_path
from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.model import ModelLayout, open_model
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, TensorGroup
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, NumaNode, Rig
from moe_studio.core.plan.placement import as_mapping, assign, expert_cells
from moe_studio.core.plan.planning import Planner
from moe_studio.core.plan.settings import Settings
from moe_studio.core.profiles import library, migrations, plans
from moe_studio.core.profiles.library import (
    ProfileLibrary,
    autosave,
    autosave_path,
    discard_autosave,
    pending_recovery,
)
from moe_studio.core.profiles.migrations import migrate
from moe_studio.core.profiles.plans import check_model, plan_from_profile, profile_from_plan
from moe_studio.core.profiles.schema import (
    ModelRef,
    Profile,
    from_json,
    load_profile,
    save_profile,
    to_json,
)
from moe_studio.core.units import GiB, MiB
from tests.support.sparse import write_catalog_sparse
from tests.support.tiny_models import write_tiny_model

MOMENT = datetime(2025, 5, 1, 9, 30, tzinfo=UTC)


def _rig() -> Rig:
    """A rig using every field of Rig, HostInfo, NumaNode and Device."""
    host = HostInfo(
        ram_total=256 * GiB,
        ram_available=200 * GiB,
        swap_total=16 * GiB,
        cores_physical=32,
        cores_logical=64,
        cpu_brand="AMD EPYC 9334 32-Core Processor",
        cpu_flags=frozenset({"avx2", "avx512f", "avx512_vnni"}),
        numa_nodes=(
            NumaNode(0, (0, 1, 2, 3, 32, 33), 128 * GiB),
            NumaNode(1, (4, 5, 6, 7, 36, 37), 128 * GiB),
        ),
    )
    devices = (
        Device(
            "RPC0[10.0.0.2:50052]",
            DeviceKind.RPC,
            24 * GiB,
            label="3090 next door",
            endpoint="10.0.0.2:50052",
        ),
        Device(
            "CUDA0",
            DeviceKind.CUDA,
            24 * GiB,
            label="NVIDIA GeForce RTX 4090",
            index=0,
            memory_free=23 * GiB,
            pcie_gen=4,
            pcie_width=16,
            uuid="GPU-1234",
            compute_capability="8.9",
        ),
    )
    return Rig("test rig ✓", host, devices, source="file:/rigs/test.toml", notes=("no NVML",))


def _settings() -> Settings:
    """Every field away from its default (the dialect apart), so each one must round-trip."""
    return Settings(
        dialect="ik",
        ctx=65536,
        cache_type_k="q8_0",
        cache_type_v="q8_0",
        batch=4096,
        ubatch=4096,
        flash_attn=True,
        parallel=2,
        threads=30,
        threads_batch=31,
        numa="distribute",
        host="0.0.0.0",
        port=8181,
        no_mmap=True,
        metrics=True,
        mla=2,
        amb=512,
        rtr=True,
        split_mode_graph=False,
        merge_qkv=True,
        gpu_overhead=300 * MiB,
        reserve=128 * MiB,
        extra_args=("--jinja", "-cuda", "offload-batch-size=64"),
    )


def _profile(layout: ModelLayout, **changes: Any) -> Profile:
    planner = Planner(layout, _rig(), _settings())
    plan = planner.initial()
    plan = assign(layout, plan, [(GLOBAL_LAYER, TensorGroup.TOKEN_EMBD)], "CUDA0").after
    plan = assign(layout, plan, expert_cells(layout, 0, 1), "RPC0[10.0.0.2:50052]").after
    profile = profile_from_plan(
        planner,
        plan,
        executable="/opt/ik llama/bin/llama-server",
        name="tiny on the 4090",
        notes="first try\nsecond line: ünïcödé",
        benchmarks=[{"kind": "sweep", "tokens_per_second": 12.5, "rows": [{"n_kv": 0}]}],
        now=MOMENT,
    )
    return replace(profile, **changes)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelLayout]:
    path = write_tiny_model(tmp_path_factory.mktemp("profile-model") / "tiny.gguf", "qwen3moe")
    return path, open_model(path)


@pytest.fixture
def saved(tmp_path: Path, tiny: tuple[Path, ModelLayout]) -> tuple[Path, Profile]:
    path = tmp_path / "tiny.json"
    return path, save_profile(path, _profile(tiny[1]), stamp=False)


def _document(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _write(path: Path, doc: dict[str, Any]) -> bytes:
    data = json.dumps(doc, indent=1).encode()
    path.write_bytes(data)
    return data


# --- round trips ---------------------------------------------------------------------------------


def test_round_trip_is_equal_and_byte_stable(saved: tuple[Path, Profile]) -> None:
    path, written = saved
    loaded = load_profile(path)
    assert loaded == written
    assert loaded.warnings == ()
    assert loaded.written_by == __version__
    assert to_json(loaded) == path.read_text(encoding="utf-8")
    assert loaded.rig == _rig()
    assert loaded.settings == _settings()
    assert loaded.benchmarks[0]["rows"] == [{"n_kv": 0}]


def test_profile_records_model_identity_plan_and_fit(
    saved: tuple[Path, Profile], tiny: tuple[Path, ModelLayout]
) -> None:
    path, written = saved
    layout = tiny[1]
    doc = _document(path)
    assert doc["format"] == "moe-studio-profile" and doc["schema"] == migrations.SCHEMA_VERSION
    assert doc["model"] == {
        "path": str(tiny[0]),
        "name": layout.name,
        "architecture": "qwen3moe",
        "tensor_count": 51,
        "total_bytes": layout.total_bytes,
        "identity": layout.identity,
    }
    assert doc["engine"] == {"path": "/opt/ik llama/bin/llama-server", "dialect": "ik"}
    assert "dialect" not in doc["settings"]
    assert set(doc["settings"]) == Settings.field_names() - {"dialect"}
    assert doc["created"] == "2025-05-01T09:30:00Z"
    assert [-1, "token_embd"] in doc["pinned"] and [0, "exps_up"] in doc["pinned"]
    assert doc["placement"]["token_embd.weight"] == "CUDA0"
    assert doc["placement"]["blk.1.ffn_down_exps.weight"] == "RPC0[10.0.0.2:50052]"
    assert set(doc["placement"]) == {t.name for t in layout.tensors if t.loaded}
    assert isinstance(doc["fits"], bool)
    plan = plan_from_profile(written, layout)
    assert as_mapping(layout, plan) == dict(written.placement)
    assert plan.pinned == written.pinned


def test_save_stamps_modified_and_keeps_a_backup(
    tmp_path: Path, tiny: tuple[Path, ModelLayout]
) -> None:
    path = tmp_path / "p.json"
    first = save_profile(path, _profile(tiny[1]))
    assert first.modified > MOMENT and first.created == MOMENT
    before = path.read_bytes()
    save_profile(path, replace(first, notes="changed"))
    assert backup_path(path).read_bytes() == before
    assert load_profile(path).notes == "changed"


def test_a_save_that_fails_leaves_the_file_untouched(saved: tuple[Path, Profile]) -> None:
    path, profile = saved
    before = path.read_bytes()
    with pytest.raises(ProfileError, match=r"Could not save .*: Out of range float values"):
        save_profile(path, replace(profile, benchmarks=({"tokens_per_second": float("nan")},)))
    with pytest.raises(ProfileError, match="does not exist"):
        save_profile(path.parent / "missing" / "p.json", profile)
    assert path.read_bytes() == before


# --- refusals: the file is never touched ---------------------------------------------------------


def _refused(path: Path, match: str) -> ProfileError:
    before = path.read_bytes()
    with pytest.raises(ProfileError, match=match) as info:
        load_profile(path)
    assert path.read_bytes() == before
    assert "Traceback" not in str(info.value)
    return info.value


def test_truncated_json_names_line_and_column(saved: tuple[Path, Profile]) -> None:
    path, _ = saved
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    error = _refused(path, r"is not valid JSON \(the file looks truncated\)")
    line = text[: len(text) // 2].count("\n") + 1
    assert f"(line {line}, column" in str(error)


def test_a_syntax_error_points_at_the_backup_when_there_is_one(
    saved: tuple[Path, Profile],
) -> None:
    path, profile = saved
    save_profile(path, profile)  # now there is a .bak
    text = path.read_text(encoding="utf-8").replace('"schema": 1,', '"schema": 1,,', 1)
    path.write_text(text, encoding="utf-8")
    error = _refused(path, "line 3, column 14")
    assert str(backup_path(path)) in str(error)


def test_newer_schema_is_refused_naming_the_version_that_wrote_it(
    saved: tuple[Path, Profile],
) -> None:
    path, _ = saved
    doc = _document(path)
    doc["schema"] = migrations.SCHEMA_VERSION + 1
    doc["written_by"] = "9.3.1"
    doc["settings"] = "a shape this version cannot read"
    _write(path, doc)
    error = _refused(path, "written by MoE Studio 9.3.1 in profile format 2")
    assert f"reads format {migrations.SCHEMA_VERSION} and older" in str(error)
    assert "Update MoE Studio" in str(error)


_DROP = object()

# (key path, new value or _DROP, what the message must say)
_BAD_VALUES: list[tuple[tuple[str | int, ...], object, str]] = [
    (("settings", "ctx"), "big", 'settings.ctx must be a whole number, not the text "big"'),
    (("settings", "ctx"), True, "settings.ctx must be a whole number, not true"),
    (("settings", "flash_attn"), 1, "settings.flash_attn must be true or false, not the number 1"),
    (("settings", "threads"), "4", "settings.threads must be a whole number or null"),
    (("settings", "numa"), "sometimes", 'settings.numa must be one of "", "distribute"'),
    (("settings", "extra_args"), ["--jinja", 3], r"settings.extra_args\[1\] must be text"),
    (("settings", "dialect"), "mainline", "contradicts engine.dialect"),
    (("engine", "dialect"), "vllm", 'engine.dialect must be one of "ik", "mainline"'),
    (
        ("rig", "devices", 1, "kind"),
        "tpu",
        r'devices\[1\].kind must be one of "cpu", "cuda", "rpc"',
    ),
    (("rig", "host", "ram_total"), "lots", "rig.host.ram_total must be a whole number"),
    (("rig", "host", "numa_nodes", 0, "cpus"), [0, "1"], r"numa_nodes\[0\].cpus\[1\] must be a"),
    (("rig", "devices"), {}, "rig.devices must be a list of objects"),
    (("model", "tensor_count"), "51", "model.tensor_count must be a whole number"),
    (("model", "identity"), _DROP, "model has no 'identity'"),
    (("rig", "host", "ram_total"), _DROP, "rig.host has no 'ram_total'"),
    (("placement",), _DROP, "the profile has no 'placement'"),
    (("pinned",), [["3", "attn"]], r"pinned\[0\] must be a \[layer, group\] pair"),
    (("pinned",), [[3, "attention"]], r"pinned\[0\] must be a \[layer, group\] pair"),
    (("placement", "output.weight"), 0, "placement.output.weight must be a device name"),
    (("benchmarks",), "fast", "benchmarks must be a list of objects"),
    (("benchmarks",), [3], r"benchmarks\[0\] must be an object"),
    (("created",), "yesterday", "created must be a date and time"),
    (("fits",), "yes", "fits must be true or false or null"),
    (("schema",), "1", 'schema must be a whole number from 1, not the text "1"'),
    (("schema",), 0, "schema must be a whole number from 1, not the number 0"),
    (("format",), _DROP, "is not a MoE Studio profile"),
]


@pytest.mark.parametrize(("keys", "value", "message"), _BAD_VALUES)
def test_wrong_types_name_the_key_path(
    saved: tuple[Path, Profile], keys: tuple[str | int, ...], value: object, message: str
) -> None:
    path, _ = saved
    doc = _document(path)
    parent: Any = doc
    for key in keys[:-1]:
        parent = parent[key]
    if value is _DROP:
        del parent[keys[-1]]
    else:
        parent[keys[-1]] = value
    _write(path, doc)
    error = _refused(path, message)
    assert str(error).startswith(str(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[1, 2]", "its JSON is a list, not an object"),
        (b'"hello"', "its JSON is the text"),
        (b"", r"not valid JSON \(the file looks truncated\)"),
        (b"\xff\xfe{}", "byte 0 is not UTF-8"),
        (b'{"format": "something-else"}', "is not a MoE Studio profile"),
    ],
)
def test_files_that_are_not_profiles(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "odd.json"
    path.write_bytes(content)
    _refused(path, message)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(tmp_path / "nope.json")
    with pytest.raises(ProfileError, match="is a folder"):
        load_profile(tmp_path)


def test_a_byte_order_mark_is_accepted(saved: tuple[Path, Profile]) -> None:
    path, profile = saved
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_profile(path) == profile


def test_missing_settings_take_their_defaults(saved: tuple[Path, Profile]) -> None:
    path, _ = saved
    doc = _document(path)
    del doc["settings"]["amb"], doc["settings"]["extra_args"]
    _write(path, doc)
    loaded = load_profile(path)
    assert loaded.settings.amb is None and loaded.settings.extra_args == ()
    assert loaded.warnings == ()


# --- unknown keys --------------------------------------------------------------------------------


def test_unknown_keys_are_reported_kept_and_written_back(saved: tuple[Path, Profile]) -> None:
    path, _ = saved
    doc = _document(path)
    doc["window"] = {"splitter": [1, 2]}
    doc["settings"]["speculative"] = {"draft": "tiny.gguf"}
    doc["model"]["sha256"] = "abc"
    doc["rig"]["devices"][1]["vendor"] = "nvidia"
    doc["rig"]["host"]["numa_nodes"][1]["distance"] = [21, 10]
    doc["engine"]["build"] = 4321
    _write(path, doc)
    loaded = load_profile(path)
    reported = {u.dotted for u in loaded.unknown}
    assert reported == {
        "window",
        "settings.speculative",
        "model.sha256",
        "rig.devices[1].vendor",
        "rig.host.numa_nodes[1].distance",
        "engine.build",
    }
    assert len(loaded.warnings) == 6
    assert all("unknown key" in w and "kept" in w for w in loaded.warnings)
    save_profile(path, replace(loaded, notes="edited by an older version"))
    again = _document(path)
    assert again["window"] == {"splitter": [1, 2]}
    assert again["settings"]["speculative"] == {"draft": "tiny.gguf"}
    assert again["model"]["sha256"] == "abc"
    assert again["rig"]["devices"][1]["vendor"] == "nvidia"
    assert again["rig"]["host"]["numa_nodes"][1]["distance"] == [21, 10]
    assert again["engine"]["build"] == 4321
    assert again["notes"] == "edited by an older version"


def test_unknown_keys_of_a_device_that_is_gone_are_dropped_with_a_log(
    saved: tuple[Path, Profile], caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = saved
    doc = _document(path)
    doc["rig"]["devices"][1]["vendor"] = "nvidia"
    _write(path, doc)
    loaded = load_profile(path)
    smaller = replace(loaded, rig=loaded.rig.with_devices(loaded.rig.devices[:1]))
    text = to_json(smaller)
    assert "vendor" not in text
    assert "rig.devices[1].vendor dropped" in caplog.text


# --- migrations ----------------------------------------------------------------------------------


def test_migrate_runs_each_step_in_order() -> None:
    calls: list[int] = []

    def step(n: int) -> migrations.Migration:
        def run(doc: dict[str, Any]) -> dict[str, Any]:
            calls.append(n)
            doc.setdefault("trail", []).append(n)
            return doc

        return run

    doc, notes = migrate({"schema": 1}, target=4, migrations={1: step(1), 2: step(2), 3: step(3)})
    assert calls == [1, 2, 3]
    assert doc == {"schema": 4, "trail": [1, 2, 3]}
    assert "converted from format 1 to format 4" in notes[0]
    same, none = migrate({"schema": 4}, target=4, migrations={})
    assert same == {"schema": 4} and none == []


def test_migrate_refuses_a_gap_and_reports_a_failing_step() -> None:
    with pytest.raises(ProfileError, match="format 2 can no longer be read"):
        migrate({"schema": 1}, target=3, migrations={1: lambda d: d})

    def broken(doc: dict[str, Any]) -> dict[str, Any]:
        return {"x": doc["no such key"]}

    with pytest.raises(ProfileError, match="could not be converted from format 1 to 2"):
        migrate({"schema": 1}, target=2, migrations={1: broken})


def test_an_older_schema_is_migrated_when_read(
    saved: tuple[Path, Profile], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pretend the current format is 2, where format 1 kept the notes under "comment"."""
    path, profile = saved
    doc = _document(path)
    doc["comment"] = doc.pop("notes")
    old = _write(path, doc)

    def v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
        d["notes"] = d.pop("comment")
        return d

    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(migrations, "MIGRATIONS", {1: v1_to_v2})
    loaded = load_profile(path)
    assert path.read_bytes() == old  # reading converts in memory only
    assert loaded == profile
    assert any("converted from format 1 to format 2" in w for w in loaded.warnings)
    save_profile(path, loaded)
    assert _document(path)["schema"] == 2
    assert backup_path(path).read_bytes() == old


# --- the model changed ---------------------------------------------------------------------------


def test_check_model_accepts_the_same_model(tiny: tuple[Path, ModelLayout]) -> None:
    profile = _profile(tiny[1])
    assert check_model(profile, open_model(tiny[0])) is None
    plans.require_model(profile, tiny[1])


def test_a_different_file_at_the_same_path_is_detected(
    tmp_path: Path, tiny: tuple[Path, ModelLayout]
) -> None:
    path = write_tiny_model(tmp_path / "model.gguf", "qwen3moe")
    profile = _profile(open_model(path))
    write_tiny_model(path, "deepseek2")
    message = check_model(profile, open_model(path))
    assert message is not None
    assert f"The model {path} is not the one this profile was made for" in message
    assert "architecture is deepseek2, not qwen3moe" in message
    assert "66 tensors, not 51" in message
    assert "its tensors take" in message
    with pytest.raises(ProfileError, match="not the one this profile was made for"):
        plans.require_model(profile, open_model(path))
    write_tiny_model(path, "qwen3moe", n_layer=5)
    message = check_model(profile, open_model(path))
    assert message is not None and "architecture" not in message
    assert "63 tensors, not 51" in message


def test_a_requantized_tensor_is_detected_even_at_the_same_size(
    tiny: tuple[Path, ModelLayout],
) -> None:
    layout = tiny[1]
    profile = _profile(layout)
    i = next(k for k, t in enumerate(layout.tensors) if t.type_id == 1)  # an F16 matrix
    changed = list(layout.tensors)
    changed[i] = replace(layout.tensors[i], type_id=30)  # BF16: same bytes, other type
    requantized = replace(layout, tensors=tuple(changed))
    message = check_model(profile, requantized)
    assert message is not None
    assert "type or shape of some tensors changed" in message
    assert "tensors take" not in message and "architecture" not in message


def test_a_requantized_sparse_model_is_detected(tmp_path: Path) -> None:
    """Full-size (sparse) shards of one recipe replaced by another at the same path."""
    q4 = write_catalog_sparse("qwen3-30b-a3b@Q4_K_M", tmp_path / "q4")
    layout = open_model(q4[0])
    planner = Planner(layout, _rig(), Settings())
    profile = profile_from_plan(planner, planner.initial())
    iq4 = write_catalog_sparse("qwen3-30b-a3b@IQ4_KS", tmp_path / "iq4")
    q4[0].unlink()
    os.replace(iq4[0], q4[0])
    message = check_model(profile, open_model(q4[0]))
    assert message is not None
    assert "its tensors take" in message and "tensor table differs" in message
    assert "architecture" not in message and "tensors, not" not in message


def test_plan_from_profile_refuses_another_models_tensors(
    tiny: tuple[Path, ModelLayout],
) -> None:
    layout = tiny[1]
    profile = _profile(layout)
    foreign = dict(profile.placement)
    foreign["blk.9.ffn_up_exps.weight"] = "CPU"
    with pytest.raises(ProfileError, match=r"places 1 tensor\(s\) that .* does not have"):
        plan_from_profile(replace(profile, placement=foreign), layout)
    fewer = dict(profile.placement)
    del fewer["output.weight"]
    with pytest.raises(ProfileError, match=r"gives no device to 1 tensor\(s\)"):
        plan_from_profile(replace(profile, placement=fewer), layout)
    pins = profile.pinned | {(7, TensorGroup.ATTENTION)}
    with pytest.raises(ProfileError, match=r"pins a \w+ cell in layer 7"):
        plan_from_profile(replace(profile, pinned=pins), layout)
    other = catalog.load("catalog:qwen3-30b-a3b")
    with pytest.raises(ProfileError, match="it was made for another model"):
        plan_from_profile(profile, other)


def test_model_ref_of_a_catalog_layout() -> None:
    layout = catalog.load("catalog:deepseek-v3")
    ref = ModelRef.of(layout)
    assert ref.is_catalog and ref.source == "catalog:deepseek-v3@Q4_K_M"
    assert ref.tensor_count == len(layout.tensors) and ref.identity == layout.identity


def test_update_profile_keeps_what_the_user_wrote(
    saved: tuple[Path, Profile], tiny: tuple[Path, ModelLayout]
) -> None:
    path, _ = saved
    doc = _document(path)
    doc["window"] = {"splitter": [1, 2]}
    _write(path, doc)
    opened = load_profile(path)
    layout = tiny[1]
    planner = Planner(layout, _rig().with_devices(_rig().devices[1:]), Settings(ctx=4096))
    plan = assign(layout, planner.initial(), expert_cells(layout), "CPU").after
    updated = plans.update_profile(opened, planner, plan)
    assert updated.settings == Settings(ctx=4096)
    assert [d.name for d in updated.rig.devices] == ["CUDA0"]
    assert dict(updated.placement) == as_mapping(layout, plan)
    assert updated.pinned == plan.pinned
    kept = ("name", "notes", "benchmarks", "created", "modified", "engine", "unknown")
    for attribute in kept:
        assert getattr(updated, attribute) == getattr(opened, attribute), attribute
    assert plans.update_profile(opened, planner, plan, executable="/x").engine == "/x"


# --- plan --save ---------------------------------------------------------------------------------


def test_plan_save_writes_a_profile_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny: tuple[Path, ModelLayout]
) -> None:
    target = tmp_path / "from cli.json"
    args = ["plan", str(tiny[0]), "--gpu", "24GiB", "--ram", "64GiB", "--pin", "E:0-3=CPU"]
    assert main([*args, "--json", "--save", str(target), "--engine", "/x/llama-server"]) == 0
    printed = json.loads(capsys.readouterr().out)
    profile = load_profile(target)
    assert profile.name == "from cli"
    assert profile.engine == "/x/llama-server"
    assert profile.model.source == str(tiny[0])
    assert dict(profile.placement) == printed["placement"]
    assert sorted(f"{layer}:{group.value}" for layer, group in profile.pinned) == printed["pinned"]
    assert profile.settings.to_dict() == printed["settings"]
    assert profile.fits is all(d["fits"] for d in printed["devices"])
    assert [d.name for d in profile.rig.devices] == ["CUDA0"]
    assert f"Saved the profile to {target}." in printed["notes"]


# --- the library ---------------------------------------------------------------------------------


def test_library_lists_summaries_without_opening_models(
    tmp_path: Path, tiny: tuple[Path, ModelLayout]
) -> None:
    library = ProfileLibrary(tmp_path / "lib")
    assert library.entries() == []
    base = _profile(tiny[1])
    path = library.save(replace(base, name="newest", fits=False))
    assert path == tmp_path / "lib" / "newest.json"
    # The model of this one is gone: listing never opens models, so it is listed all the same.
    gone = replace(base.model, source=str(tmp_path / "gone.gguf"))
    older = replace(base, name="older", benchmarks=(), model=gone, modified=MOMENT)
    save_profile(library.path_for("older"), older, stamp=False)
    oldest = replace(base, name="oldest", modified=MOMENT - timedelta(days=1))
    save_profile(library.path_for("oldest"), oldest, stamp=False)
    (tmp_path / "lib" / "broken.json").write_text("{", encoding="utf-8")
    (tmp_path / "lib" / "notes.txt").write_text("not listed", encoding="utf-8")
    entries = library.entries()
    assert [e.title for e in entries] == ["newest", "older", "oldest", "broken"]
    first = entries[0]
    assert first.path == path and first.model_source == str(tiny[0])
    assert first.model_name == tiny[1].name
    assert first.rig_name == "test rig ✓" and first.dialect == "ik"
    assert first.fits is False and first.tokens_per_second == 12.5
    assert first.modified is not None and first.modified > MOMENT
    assert entries[1].modified == MOMENT and entries[1].tokens_per_second is None
    assert entries[1].model_source == str(tmp_path / "gone.gguf")
    assert entries[2].fits is base.fits
    assert entries[3].error.startswith(str(tmp_path / "lib" / "broken.json"))
    assert (tmp_path / "lib" / "broken.json").read_text(encoding="utf-8") == "{"


def test_library_import_and_export_copy_bytes_and_refuse_bad_files(
    tmp_path: Path, saved: tuple[Path, Profile]
) -> None:
    path, _ = saved
    library = ProfileLibrary(tmp_path / "lib")
    first = library.import_file(path)
    second = library.import_file(path)
    assert first.name == "tiny-on-the-4090.json" and second.name == "tiny-on-the-4090-2.json"
    assert first.read_bytes() == path.read_bytes() == second.read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "moe-studio-profile", "schema": 1', encoding="utf-8")
    with pytest.raises(ProfileError, match="not valid JSON"):
        library.import_file(bad)
    assert len(library.paths()) == 2
    out = tmp_path / "shared" / "copy.json"
    out.parent.mkdir()
    library.export_file(first, out)
    assert out.read_bytes() == path.read_bytes()


def test_library_names_are_safe_file_names(tmp_path: Path) -> None:
    library = ProfileLibrary(tmp_path)
    assert library.path_for("DeepSeek / 4090: fast?").name == "DeepSeek-4090-fast.json"
    assert library.path_for("../../etc").parent == tmp_path
    assert library.path_for("  ").name == "profile.json"


def test_library_rename_and_delete(tmp_path: Path, tiny: tuple[Path, ModelLayout]) -> None:
    library = ProfileLibrary(tmp_path / "lib")
    base = _profile(tiny[1])
    first = library.save(replace(base, name="first"))
    second = library.save(replace(base, name="second"))
    second_bytes = second.read_bytes()
    renamed = library.rename(first, "Fast on 2 GPUs")
    assert renamed == library.path_for("Fast on 2 GPUs") and not first.exists()
    assert load_profile(renamed).name == "Fast on 2 GPUs"
    assert sorted(p.name for p in library.folder.iterdir()) == [
        "Fast-on-2-GPUs.json",
        "second.json",
    ]
    # Never over another profile; the refused rename changes nothing.
    with pytest.raises(ProfileError, match=r"already saved as second\.json"):
        library.rename(renamed, "second")
    assert second.read_bytes() == second_bytes and renamed.exists()
    with pytest.raises(ProfileError, match="needs a name"):
        library.rename(renamed, "   ")
    # The same file under a new title (only the name changes).
    assert library.rename(renamed, "Fast on 2 GPUs ") == renamed
    library.delete(renamed)
    assert [e.title for e in library.entries()] == ["second"]
    assert not any(p.name.startswith("Fast") for p in library.folder.iterdir())
    with pytest.raises(ProfileError, match="not a profile in the library"):
        library.delete(tmp_path / "elsewhere.json")


def test_default_folders_are_in_the_user_data_folder() -> None:
    assert library.default_library_folder().parts[-2:] == ("moe-studio", "profiles")
    assert library.default_autosave_folder().parts[-2:] == ("moe-studio", "autosave")


# --- autosave and recovery -----------------------------------------------------------------------


def test_autosave_of_untitled_work_is_offered_back(
    tmp_path: Path, tiny: tuple[Path, ModelLayout]
) -> None:
    folder = tmp_path / "autosave"
    profile = _profile(tiny[1])
    written = autosave(profile, folder, now=MOMENT)
    assert written == autosave_path(folder, None)
    (found,) = pending_recovery(folder)
    assert found.saved_path is None and found.autosaved == MOMENT
    assert found.profile == profile and found.error == ""
    discard_autosave(found.autosave_path)
    assert pending_recovery(folder) == []
    discard_autosave(found.autosave_path)  # already gone: fine


def test_recovery_only_when_the_autosave_is_newer_than_the_saved_file(
    tmp_path: Path, saved: tuple[Path, Profile]
) -> None:
    path, profile = saved
    folder = tmp_path / "autosave"
    edited = replace(profile, notes="unsaved edit")
    auto = autosave(edited, folder, saved_path=path)
    stamp = path.stat().st_mtime_ns
    os.utime(auto, ns=(stamp + 10**9, stamp + 10**9))
    (found,) = pending_recovery(folder)
    assert found.saved_path == path and found.profile == edited
    save_profile(path, edited)  # the user saved after the autosave
    os.utime(path, ns=(stamp + 2 * 10**9, stamp + 2 * 10**9))
    assert pending_recovery(folder) == []
    path.unlink()  # the saved file is gone: the autosave is all there is
    assert len(pending_recovery(folder)) == 1


def test_unreadable_autosaves_are_listed_with_an_error(tmp_path: Path) -> None:
    (tmp_path / "autosave-untitled.json").write_text("{", encoding="utf-8")
    (tmp_path / "autosave-0123456789abcdef.json").write_text(
        json.dumps({"format": "moe-studio-autosave", "profile": {"format": "x"}}),
        encoding="utf-8",
    )
    (tmp_path / "unrelated.json").write_text("{}", encoding="utf-8")
    found = pending_recovery(tmp_path)
    assert len(found) == 2
    assert all(r.profile is None and r.error for r in found)
    assert pending_recovery(tmp_path / "no such folder") == []


def test_autosave_files_are_per_document(tmp_path: Path) -> None:
    a = autosave_path(tmp_path, tmp_path / "a.json")
    b = autosave_path(tmp_path, tmp_path / "b.json")
    assert a != b and a.parent == tmp_path
    assert autosave_path(tmp_path, tmp_path / "x" / ".." / "a.json") == a


def test_from_json_accepts_naive_timestamps_as_utc(saved: tuple[Path, Profile]) -> None:
    path, _ = saved
    doc = _document(path)
    doc["created"] = "2025-05-01T09:30:00"
    loaded = from_json(json.dumps(doc))
    assert loaded.created == MOMENT
    assert loaded.touched(MOMENT + timedelta(days=1)).modified == MOMENT + timedelta(days=1)
