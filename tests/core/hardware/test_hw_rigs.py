"""Declared rigs: every preset loads; malformed files are refused naming the key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_studio.core.errors import HardwareError
from moe_studio.core.hardware.devices import DeviceKind
from moe_studio.core.hardware.rigs import (
    even_numa,
    list_presets,
    load_preset,
    load_rig_file,
    parse_rig,
)
from moe_studio.core.units import GiB, MiB

PRESETS = {
    "rtx4090-192g",
    "2x3090-256g",
    "4x3090-tr-512g",
    "rtxpro6000-768g",
    "epyc2s-768g-24g",
    "cpu-128g",
    "demo-24g-256g",
}


def test_the_presets_are_shipped() -> None:
    assert set(list_presets()) >= PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_loads(name: str) -> None:
    rig = load_preset(name)
    assert rig.source == f"preset:{name}"
    assert rig.name and rig.name != name  # presets carry a readable title
    assert rig.host.ram_total >= 128 * GiB
    assert rig.host.cores_physical and rig.host.cores_logical
    assert "avx2" in rig.host.cpu_flags
    assert rig.notes == ()
    for i, gpu in enumerate(rig.gpus):
        assert gpu.name == f"CUDA{i}" and gpu.index == i
        assert gpu.memory_total >= 24 * 1000**3
        assert gpu.pcie_bandwidth and gpu.compute_capability


@pytest.mark.parametrize(
    ("name", "gpus", "vram_gib", "ram_gib", "numa"),
    [
        ("rtx4090-192g", 1, 24, 192, 0),
        ("2x3090-256g", 2, 24, 256, 0),
        ("4x3090-tr-512g", 4, 24, 512, 1),
        ("rtxpro6000-768g", 1, 96, 768, 0),
        ("epyc2s-768g-24g", 1, 24, 768, 2),
        ("cpu-128g", 0, 0, 128, 0),
        ("demo-24g-256g", 1, 24, 256, 0),
    ],
)
def test_preset_contents(name: str, gpus: int, vram_gib: int, ram_gib: int, numa: int) -> None:
    rig = load_preset(name)
    assert len(rig.gpus) == gpus
    assert all(round(g.memory_total / GiB) == vram_gib for g in rig.gpus)
    assert rig.host.ram_total == ram_gib * GiB
    assert len(rig.host.numa_nodes) == numa
    if numa:
        assert sum(n.memory_total for n in rig.host.numa_nodes) == rig.host.ram_total
        cpus = [c for n in rig.host.numa_nodes for c in n.cpus]
        assert sorted(cpus) == list(range(rig.host.cores_logical or 0))


def test_special_presets() -> None:
    assert {"amx_tile", "amx_int8"} <= load_preset("rtxpro6000-768g").host.cpu_flags
    assert load_preset("2x3090-256g").gpus[1].pcie_width == 8
    assert load_preset("cpu-128g").all_devices[-1].kind is DeviceKind.CPU


def test_unknown_preset_suggests_a_name() -> None:
    with pytest.raises(HardwareError, match=r"did you mean 'rtx4090-192g'\?.*demo-24g-256g"):
        load_preset("rtx4090")


GOOD = """\
name = "Two boxes"

[host]
ram = "256 GiB"
cores = 16
threads = 32

[[gpu]]
name = "NVIDIA GeForce RTX 3090"
vram = "24 GiB"
pcie = "gen4 x16"
count = 2

[[rpc]]
endpoint = "192.168.1.20:50052"
memory = "24GiB"
label = "the other box"
flavour = "ik"

[[rpc]]
endpoint = "192.168.1.20:50052"
device = 1
memory = "24 GB"
flavour = "ik"
"""


def test_full_file_with_rpc(tmp_path: Path) -> None:
    path = tmp_path / "two-boxes.toml"
    path.write_text(GOOD)
    rig = load_rig_file(path)
    assert rig.source == f"file:{path}"
    assert rig.name == "Two boxes"
    # RPC devices first, as the engines put them (engines.md §8).
    assert [d.name for d in rig.devices] == [
        "RPC0[192.168.1.20:50052]",
        "RPC1[192.168.1.20:50052]",
        "CUDA0",
        "CUDA1",
    ]
    rpc0, rpc1 = rig.rpc_devices
    assert rpc0.kind is DeviceKind.RPC and rpc0.endpoint == "192.168.1.20:50052"
    assert rpc0.memory_total == 24 * GiB and rpc1.memory_total == 24 * 1000**3
    assert rpc1.index == 1 and rpc0.label == "the other box"
    assert rig.gpus[1].pcie_gen == 4 and rig.gpus[1].pcie_width == 16
    assert rig.notes == ()


def test_mixed_rpc_flavours_get_a_note() -> None:
    text = GOOD.replace('flavour = "ik"\n\n[[rpc]]', 'flavour = "ik"\n\n[[rpc]]', 1)
    text = text.replace(
        'endpoint = "192.168.1.20:50052"\ndevice = 1', 'endpoint = "192.168.1.21:50052"\ndevice = 0'
    )
    text = text[: text.rindex('flavour = "ik"')] + 'flavour = "mainline"\n'
    rig = parse_rig(text, source="file:x.toml", default_name="x")
    (note,) = rig.notes
    assert "ik: 192.168.1.20:50052" in note and "mainline: 192.168.1.21:50052" in note
    assert "do not interoperate" in note


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "my-box.toml"
    path.write_text('[host]\nram = "64 GiB"\nnuma_nodes = 2\ncores = 8\nthreads = 16\n')
    rig = load_rig_file(path)
    assert rig.name == "my-box" and rig.devices == ()
    assert [n.cpus for n in rig.host.numa_nodes] == [
        (0, 1, 2, 3, 8, 9, 10, 11),
        (4, 5, 6, 7, 12, 13, 14, 15),
    ]


def test_even_numa_without_core_counts() -> None:
    nodes = even_numa(2, 64 * GiB, None, None)
    assert [(n.cpus, n.memory_total) for n in nodes] == [((), 32 * GiB), ((), 32 * GiB)]


BASE = '[host]\nram = "64 GiB"\n\n[[gpu]]\nname = "RTX"\nvram = "24 GiB"\n'


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        # a bare number: says to add a unit
        (
            BASE.replace('"24 GiB"', "24"),
            ["line 6", "'vram' in [[gpu]] #1", "without a unit", "GiB"],
        ),
        (BASE.replace('"24 GiB"', '"24"'), ["line 6", "without a unit"]),
        # wrong unit
        (BASE.replace('"24 GiB"', '"24 GX"'), ["line 6", "'vram'", "unknown unit", "GiB"]),
        # negative
        (BASE.replace('"24 GiB"', '"-24 GiB"'), ["line 6", "'vram'", "negative"]),
        (BASE.replace('"24 GiB"', "-24"), ["line 6", "negative"]),
        (BASE.replace('"24 GiB"', '"0 GiB"'), ["line 6", "more than zero"]),
        # unknown keys, with a suggestion
        (BASE.replace("vram", "vrma"), ["line 6", "unknown key 'vrma'", "did you mean 'vram'"]),
        (BASE + "colour = 3\n", ["line 7", "unknown key 'colour' in [[gpu]] #1"]),
        ("rams = 1\n" + BASE, ["line 1", "unknown key 'rams' at the top level"]),
        (
            BASE.replace('ram = "64 GiB"', 'ram = "64 GiB"\nswp = "1 GiB"'),
            ["line 3", "'swp' in [host]"],
        ),
        # TOML syntax errors carry the line
        (BASE.replace('vram = "24 GiB"', "vram = 24 GiB"), ["line 6", "not valid TOML"]),
        ("[host\nram = 1\n", ["line 1", "not valid TOML"]),
        # structure
        ('[[gpu]]\nvram = "1 GiB"\n', ["needs a [host]"]),
        ("[host]\ncores = 4\n", ["line 1", "needs ram"]),
        ('[host]\nram = "1 GiB"\n[[gpu]]\nname = "x"\n', ["line 3", "[[gpu]] #1 needs vram"]),
        ('[host]\nram = "1 GiB"\n[gpu]\nvram = "1 GiB"\n', ["line 3", "written [[gpu]]"]),
        # values
        (BASE + 'pcie = "x16"\n', ["line 7", "'pcie'", "4.0 x16"]),
        (BASE + 'pcie = "4.0 x3"\n', ["line 7", "'pcie'"]),
        (BASE + "count = 0\n", ["line 7", "'count'", "from 1 to 64"]),
        (BASE + "count = true\n", ["line 7", "'count'"]),
        (BASE + 'compute_capability = "sm89"\n', ["line 7", "8.9"]),
        (
            BASE.replace('ram = "64 GiB"', 'ram = "64 GiB"\nflags = "avx2"'),
            ["line 3", "list of text"],
        ),
        (
            BASE.replace('ram = "64 GiB"', 'ram = "64 GiB"\ncores = 8\nthreads = 4'),
            ["line 4", "less than cores"],
        ),
        (
            BASE.replace('ram = "64 GiB"', 'ram = "64 GiB"\nnuma_nodes = 2')
            + '[[numa]]\nmemory = "1 GiB"\n',
            ["line 3", "not both"],
        ),
        (BASE + '[[numa]]\ncpus = "7-1"\nmemory = "1 GiB"\n', ["line 8", "CPU list"]),
        (BASE + '[[numa]]\ncpus = "0-7"\n', ["line 7", "needs memory"]),
        (BASE + '[[rpc]]\nendpoint = "box"\nmemory = "8 GiB"\n', ["line 8", "host:port"]),
        (BASE + '[[rpc]]\nendpoint = "box:99999"\nmemory = "8 GiB"\n', ["line 8", "host:port"]),
        (BASE + '[[rpc]]\nendpoint = "box:1"\n', ["line 7", "needs memory"]),
        (
            BASE + '[[rpc]]\nendpoint = "box:1"\nmemory = "8 GiB"\nflavour = "vulkan"\n',
            ["line 10", "flavour 'vulkan'", "mainline"],
        ),
        (
            BASE
            + '[[rpc]]\nendpoint = "box:1"\nmemory = "8 GiB"\n'
            + '[[rpc]]\nendpoint = "box:1"\nmemory = "8 GiB"\n',
            ["line 11", "RPC0[box:1] is declared twice"],
        ),
    ],
)
def test_malformed_rig_is_refused_naming_key_and_line(text: str, fragments: list[str]) -> None:
    with pytest.raises(HardwareError) as info:
        parse_rig(text, source="file:bad.toml", default_name="bad")
    message = str(info.value)
    assert message.startswith("bad.toml")
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(HardwareError, match="no such rig file"):
        load_rig_file(tmp_path / "missing.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(HardwareError, match="cannot read"):
        load_rig_file(binary)


def test_sizes_accept_units() -> None:
    for text, size in (("24GiB", 24 * GiB), ("24 GB", 24 * 1000**3), ("24576 MiB", 24 * GiB)):
        rig = parse_rig(f'[host]\nram = "{text}"\n', source="file:x", default_name="x")
        assert rig.host.ram_total == size
    assert MiB == 1024**2
