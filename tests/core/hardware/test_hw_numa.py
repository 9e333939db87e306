"""NUMA from recorded /sys trees: one node, two nodes, none, odd nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_studio.core.hardware.numa import format_cpulist, parse_cpulist, read_numa
from tests.core.hardware.fake_host import DATA

KiB = 1024


def test_one_node_recorded() -> None:
    nodes, note = read_numa(DATA / "sys-1node")
    assert note == ""
    (node,) = nodes
    assert node.id == 0
    assert node.cpus == (0, 1)
    assert node.memory_total == 6645972 * KiB


def test_two_nodes_recorded() -> None:
    nodes, note = read_numa(DATA / "sys-2node")
    assert note == ""
    assert [n.id for n in nodes] == [0, 1]
    assert nodes[0].cpus == (*range(32), *range(64, 96))
    assert nodes[1].cpus == (*range(32, 64), *range(96, 128))
    assert nodes[0].memory_total == 395875320 * KiB
    assert nodes[1].memory_total == 396335104 * KiB


def test_no_node_tree_is_a_note(tmp_path: Path) -> None:
    nodes, note = read_numa(tmp_path)
    assert nodes == ()
    assert "unknown" in note and "one node" in note


def _node(root: Path, n: int, cpus: str | None, kb: int | None) -> None:
    folder = root / "devices/system/node" / f"node{n}"
    folder.mkdir(parents=True)
    if cpus is not None:
        (folder / "cpulist").write_text(cpus + "\n")
    if kb is not None:
        (folder / "meminfo").write_text(
            f"Node {n} MemTotal:       {kb} kB\nNode {n} MemFree: 1 kB\n"
        )


def test_memory_only_and_cpu_only_nodes_are_kept(tmp_path: Path) -> None:
    _node(tmp_path, 0, "0-7", 1024)
    _node(tmp_path, 1, "", 2048)  # CXL memory expander: memory, no CPUs
    _node(tmp_path, 2, "8-15", None)  # a node whose meminfo is unreadable
    _node(tmp_path, 10, None, None)  # nothing readable: skipped
    (tmp_path / "devices/system/node/power").mkdir()
    nodes, note = read_numa(tmp_path)
    assert note == ""
    assert [(n.id, n.cpus, n.memory_total) for n in nodes] == [
        (0, tuple(range(8)), 1024 * KiB),
        (1, (), 2048 * KiB),
        (2, tuple(range(8, 16)), 0),
    ]


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0-3,8,10-11\n", (0, 1, 2, 3, 8, 10, 11)), ("5", (5,)), ("", ()), ("3,1,2", (1, 2, 3))],
)
def test_cpulist_round_trip(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpulist(text) == cpus
    assert parse_cpulist(format_cpulist(cpus)) == cpus


def test_cpulist_rejects_garbage() -> None:
    for bad in ("a-b", "3-1", "1-"):
        with pytest.raises(ValueError):
            parse_cpulist(bad)
    assert format_cpulist([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"
