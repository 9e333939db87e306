"""Host probe through a fake psutil, and process trees that change under the sampler."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from moe_studio.core.hardware.host import ProcessTree, probe_host
from tests.core.hardware.fake_host import (
    DATA,
    FakeProcessTable,
    FakePsutil,
    GiB,
    ProcState,
)

MiB = 1024**2


def test_probe_host_from_recorded_sources(cache_dir: Path) -> None:
    host, notes = probe_host(
        ps=FakePsutil(ram=768 * GiB, available=700 * GiB, physical=64, logical=128),
        proc_root=DATA / "proc-xeon-spr",
        sys_root=DATA / "sys-2node",
        cpuinfo_cache=cache_dir,
        cpuinfo_probe=None,
    )
    assert notes == ()
    assert host.ram_total == 768 * GiB and host.ram_available == 700 * GiB
    assert host.swap_total == 8 * GiB
    assert (host.cores_physical, host.cores_logical) == (64, 128)
    assert host.cpu_brand.startswith("Intel(R) Xeon(R)")
    assert "amx_int8" in host.cpu_flags
    assert len(host.numa_nodes) == 2


def test_probe_host_degrades(tmp_path: Path) -> None:
    host, notes = probe_host(
        ps=FakePsutil(broken=True, physical=None),
        proc_root=tmp_path,
        sys_root=tmp_path,
        cpuinfo_cache=tmp_path / "c",
        cpuinfo_probe=None,
    )
    assert host.ram_total == 0 and host.ram_available is None
    assert host.cores_physical is None and host.numa_nodes == ()
    text = " ".join(notes)
    assert "RAM size is unknown" in text
    assert "physical cores is unknown" in text
    assert "CPU flags are not known yet" in text
    assert "NUMA topology is unknown" in text


def _server() -> tuple[ProcState, ProcState, ProcState]:
    worker = ProcState(11, rss=2 * GiB, cpu=[0.0, 100.0, 150.0])
    helper = ProcState(12, rss=10 * MiB, cpu=[0.0, 1.0, 2.0])
    root = ProcState(10, rss=40 * GiB, cpu=[0.0, 300.0, 400.0], kids=[worker, helper])
    return root, worker, helper


def test_tree_sums_rss_and_cpu_and_reuses_process_objects() -> None:
    root, _, _ = _server()
    table = FakeProcessTable(root)
    tree = ProcessTree(10, process_factory=table)
    first = tree.sample()
    assert first.alive and first.processes == 3
    assert first.rss == 40 * GiB + 2 * GiB + 10 * MiB
    assert first.cpu_percent is None  # nothing to compare with yet
    second = tree.sample()
    assert second.cpu_percent == 300.0 + 100.0 + 1.0  # cached objects: their 2nd readings
    third = tree.sample()
    assert third.cpu_percent == 400.0 + 150.0 + 2.0
    assert table.created == [10]  # the root is created once; children objects are kept
    assert tree.pids() == {10, 11, 12}


def test_child_gone_mid_sample_is_skipped() -> None:
    root, _, helper = _server()
    tree = ProcessTree(10, process_factory=FakeProcessTable(root))
    tree.sample()
    helper.vanish_on_read = True  # listed by children(), gone when its RSS is read
    sample = tree.sample()
    assert sample.alive and sample.processes == 2
    assert sample.rss == 42 * GiB
    after = tree.sample()  # no longer listed at all
    assert after.processes == 2 and tree.pids() == {10, 11}


def test_new_child_and_reused_pid() -> None:
    root, worker, _ = _server()
    tree = ProcessTree(10, process_factory=FakeProcessTable(root), rescan_interval=0)
    tree.sample()
    tree.sample()
    worker.gone = True
    root.kids[0] = ProcState(11, rss=GiB, cpu=[0.0, 5.0], created=2000.0)  # pid 11 reused
    sample = tree.sample()
    # The new pid-11 process is read for the first time: it contributes 0 %, not stale values.
    assert sample.cpu_percent == 400.0 + 0.0 + 2.0
    assert sample.rss == 40 * GiB + GiB + 10 * MiB


def test_root_gone_mid_sample() -> None:
    root, _, _ = _server()
    tree = ProcessTree(10, process_factory=FakeProcessTable(root))
    tree.sample()
    root.vanish_on_read = True
    gone = tree.sample()
    assert not gone.alive and gone.rss is None and gone.cpu_percent is None
    assert tree.pids() == frozenset()
    assert not tree.sample().alive  # stays gone without touching psutil again


def test_root_that_never_existed() -> None:
    tree = ProcessTree(999, process_factory=FakeProcessTable())
    assert not tree.sample().alive


def test_root_access_denied_reads_unknown() -> None:
    root, _, _ = _server()
    root.denied = True
    sample = ProcessTree(10, process_factory=FakeProcessTable(root)).sample()
    assert sample.alive and sample.rss is None and sample.cpu_percent is None


def test_real_process_tree_that_exits() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = ProcessTree(child.pid)
        sample = tree.sample()
        assert sample.alive and sample.rss and sample.rss > 0
        assert tree.sample().cpu_percent is not None
    finally:
        child.kill()
        child.wait()
    assert not tree.sample().alive


def test_real_own_process() -> None:
    tree = ProcessTree(os.getpid())
    assert tree.sample().rss


def test_descendants_are_listed_at_most_every_rescan_interval() -> None:
    root, _, helper = _server()
    now = [0.0]
    tree = ProcessTree(
        10, process_factory=FakeProcessTable(root), rescan_interval=5.0, clock=lambda: now[0]
    )
    assert tree.sample().processes == 3
    root.kids.append(ProcState(13, rss=MiB))
    now[0] = 4.0
    assert tree.sample().processes == 3  # not listed yet: the listing is 4 s old
    helper.vanish_on_read = True
    assert tree.sample().processes == 2  # an exit is seen at once
    now[0] = 5.0
    assert tree.sample().processes == 3  # relisted: worker and the new child
    assert tree.pids() == {10, 11, 13}
