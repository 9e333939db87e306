"""CPU brand and flags: /proc/cpuinfo first, py-cpuinfo at most once per model, cached on disk."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from moe_studio.core.hardware.cpu import cpu_key, detect_cpu, read_proc_cpuinfo, relevant_flags
from tests.core.hardware.fake_host import DATA


def _never() -> Mapping[str, object]:
    raise AssertionError("py-cpuinfo must not run")


class _Probe:
    def __init__(self, result: Mapping[str, object]) -> None:
        self.result = result
        self.calls = 0

    def __call__(self) -> Mapping[str, object]:
        self.calls += 1
        return self.result


def test_proc_cpuinfo_x86_with_avx512() -> None:
    info, note = detect_cpu(proc_root=DATA / "proc-epyc-vm", cache_dir=None, probe=_never)
    assert note == "" and info.source == "/proc/cpuinfo"
    assert info.brand == "AMD EPYC"
    assert {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "fma"} <= info.flags
    assert not any(f.startswith("amx") for f in info.flags)
    assert "smep" not in info.flags and "sse4a" not in info.flags  # only kernel-relevant flags


def test_proc_cpuinfo_xeon_with_amx() -> None:
    info = read_proc_cpuinfo(DATA / "proc-xeon-spr")
    assert info is not None
    assert info.brand == "Intel(R) Xeon(R) w9-3495X"
    assert {"amx_tile", "amx_bf16", "amx_int8", "avx512_fp16", "avx_vnni"} <= info.flags


def test_arm64_without_model_name_uses_the_cache_then_py_cpuinfo(cache_dir: Path) -> None:
    root = DATA / "proc-arm64"
    assert read_proc_cpuinfo(root) is None  # arm64 lists Features but no model name
    probe = _Probe({"brand_raw": "Neoverse-V2", "flags": ["asimd", "sve", "sve2", "i8mm", "aes"]})
    info, note = detect_cpu(proc_root=root, cache_dir=cache_dir, probe=probe)
    assert note == "" and info.source == "py-cpuinfo"
    assert info.brand == "Neoverse-V2"
    assert info.flags == {"asimd", "sve", "sve2", "i8mm"}
    again, _ = detect_cpu(proc_root=root, cache_dir=cache_dir, probe=_never)
    assert again.source == "cache"
    assert (again.brand, again.flags) == (info.brand, info.flags)
    assert probe.calls == 1
    assert "0xd4f" in cpu_key(root)  # the key names the CPU part


def test_no_proc_no_cache_and_no_probe_allowed_is_a_note(tmp_path: Path) -> None:
    info, note = detect_cpu(proc_root=tmp_path, cache_dir=tmp_path / "c", probe=None)
    assert info.brand == "" and info.flags == frozenset()
    assert "not known yet" in note


def test_failing_py_cpuinfo_is_a_note(tmp_path: Path) -> None:
    def broken() -> Mapping[str, object]:
        raise RuntimeError("subprocess died")

    info, note = detect_cpu(proc_root=tmp_path, cache_dir=tmp_path / "c", probe=broken)
    assert info.source == "none"
    assert "py-cpuinfo failed" in note and "subprocess died" in note
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())


def test_corrupt_or_foreign_cache_is_ignored(tmp_path: Path) -> None:
    cache = tmp_path / "c"
    probe = _Probe({"brand_raw": "Some CPU", "flags": ["avx2"]})
    detect_cpu(proc_root=tmp_path, cache_dir=cache, probe=probe)
    (file,) = cache.glob("cpuinfo-*.json")
    file.write_text("{not json")
    info, _ = detect_cpu(proc_root=tmp_path, cache_dir=cache, probe=probe)
    assert probe.calls == 2 and info.source == "py-cpuinfo"
    file.write_text('{"version": 1, "key": "another CPU", "brand": "x", "flags": []}')
    detect_cpu(proc_root=tmp_path, cache_dir=cache, probe=probe)
    assert probe.calls == 3


def test_unwritable_cache_still_answers(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    probe = _Probe({"brand_raw": "Some CPU", "flags": ["avx2"]})
    info, note = detect_cpu(proc_root=tmp_path, cache_dir=blocker / "sub", probe=probe)
    assert note == "" and info.flags == {"avx2"}


def test_relevant_flags() -> None:
    flags = relevant_flags(["AVX2", "avx512f", "amx_int8", "sse2", "smep", "sme", "fma", "pni"])
    assert flags == {"avx2", "avx512f", "amx_int8", "sme", "fma"}


def test_py_cpuinfo_spellings_become_linux_spellings() -> None:
    assert relevant_flags(["avx512vnni", "avx512_vnni", "amxbf16", "avxvnni"]) == {
        "avx512_vnni",
        "amx_bf16",
        "avx_vnni",
    }
