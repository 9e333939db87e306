"""The CPU's brand and the instruction-set flags the engines care about (AVX2, AVX-512, AMX …).

``/proc/cpuinfo`` answers at once where it exists (Linux). Elsewhere py-cpuinfo does, but its
``get_cpu_info()`` takes over a second on every call (it starts a subprocess and sleeps to measure
the clock), so it runs at most once per CPU model: the answer is cached on disk, keyed by the
model, and a caller on a GUI thread can forbid the slow path altogether (``probe=None``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Flags kept from the ~150 a CPU lists: the ones that select ggml/iqk kernels.
RELEVANT_FLAG_PREFIXES = ("avx", "amx")  # avx2, avx512f/bw/vl/_vnni/_bf16…, avx_vnni, amx_int8…
RELEVANT_FLAGS = frozenset(
    {
        *("fma", "f16c", "ssse3", "sse4_1", "sse4_2", "bmi2"),  # x86
        *("asimd", "asimddp", "asimdhp", "fphp", "dotprod", "i8mm", "bf16"),  # arm64 NEON
        *("sve", "sve2", "svei8mm", "svebf16", "sme", "sme2"),  # arm64 SVE/SME
    }
)

# py-cpuinfo spells some CPUID flags without Linux's underscore; use Linux's spelling throughout.
_LINUX_SPELLING = {
    "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
    "avx512bitalg": "avx512_bitalg",
    "avx512vbmi2": "avx512_vbmi2",
    "avx512vpopcntdq": "avx512_vpopcntdq",
    "avx512vp2intersect": "avx512_vp2intersect",
    "avxvnni": "avx_vnni",
    "amxtile": "amx_tile",
    "amxbf16": "amx_bf16",
    "amxint8": "amx_int8",
}

CACHE_VERSION = 1

CpuinfoProbe = Callable[[], Mapping[str, object]]


@dataclass(frozen=True, slots=True)
class CpuInfo:
    """Brand string and relevant flags of the host CPU.

    Attributes:
        source: ``/proc/cpuinfo``, ``cache``, ``py-cpuinfo`` or ``none``.
    """

    brand: str
    flags: frozenset[str]
    source: str


def relevant_flags(flags: Iterable[str]) -> frozenset[str]:
    """Keep only the flags that matter for choosing CPU kernels, lower-case, Linux spelling."""
    names = (x.strip().lower() for x in flags)
    return frozenset(
        f
        for f in (_LINUX_SPELLING.get(n, n) for n in names)
        if f in RELEVANT_FLAGS or f.startswith(RELEVANT_FLAG_PREFIXES)
    )


def default_cache_dir() -> Path:
    """``platformdirs.user_cache_dir("moe-studio")``."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("moe-studio"))


def _read_cpuinfo_fields(proc_root: Path) -> dict[str, str]:
    """The first processor block of ``/proc/cpuinfo`` (every block repeats the same model)."""
    fields: dict[str, str] = {}
    try:
        with (proc_root / "cpuinfo").open(errors="replace") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip().lower(), value.strip())
                elif not line.strip() and fields:
                    break  # a 256-thread host lists 256 blocks; the first one says it all
    except OSError:
        return {}
    return fields


def read_proc_cpuinfo(proc_root: Path = Path("/proc")) -> CpuInfo | None:
    """Brand and flags from ``<proc_root>/cpuinfo``, or ``None`` when it lacks either."""
    fields = _read_cpuinfo_fields(proc_root)
    brand = fields.get("model name", "")
    flags = fields.get("flags") or fields.get("features")  # x86 says flags, arm64 Features
    if not brand or flags is None:
        return None
    return CpuInfo(brand=brand, flags=relevant_flags(flags.split()), source="/proc/cpuinfo")


def cpu_key(proc_root: Path = Path("/proc")) -> str:
    """The cache key: the CPU model, as cheaply as it can be known."""
    fields = _read_cpuinfo_fields(proc_root)
    parts = [
        fields.get("model name", ""),
        fields.get("cpu implementer", ""),
        fields.get("cpu part", ""),
        platform.system(),
        platform.machine(),
        # Windows: "Intel64 Family 6 Model 183 Stepping 1, GenuineIntel"; macOS: "arm"/"i386".
        os.environ.get("PROCESSOR_IDENTIFIER", "") or platform.processor(),
    ]
    return " | ".join(p for p in parts if p)


def _cache_file(cache_dir: Path, key: str) -> Path:
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"cpuinfo-{digest}.json"


def read_cache(cache_dir: Path, key: str) -> CpuInfo | None:
    """The cached answer for ``key``, or ``None`` when absent, stale or unreadable."""
    path = _cache_file(cache_dir, key)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.debug("no usable cpuinfo cache at %s: %s", path, exc)
        return None
    if (
        not isinstance(data, dict)
        or data.get("version") != CACHE_VERSION
        or data.get("key") != key
        or not isinstance(data.get("brand"), str)
        or not isinstance(data.get("flags"), list)
    ):
        return None
    return CpuInfo(
        brand=data["brand"], flags=relevant_flags(map(str, data["flags"])), source="cache"
    )


def write_cache(cache_dir: Path, key: str, info: CpuInfo) -> None:
    """Store ``info`` for ``key`` atomically; a failure only logs (the cache is an optimisation)."""
    path = _cache_file(cache_dir, key)
    data = {"version": CACHE_VERSION, "key": key, "brand": info.brand, "flags": sorted(info.flags)}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".cpuinfo-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.debug("cannot write the cpuinfo cache %s: %s", path, exc)


def run_py_cpuinfo() -> Mapping[str, object]:
    """``cpuinfo.get_cpu_info()`` (slow: over a second; never call it on a GUI thread)."""
    import cpuinfo

    result: Mapping[str, object] = cpuinfo.get_cpu_info()
    return result


def _from_py_cpuinfo(data: Mapping[str, object]) -> CpuInfo:
    brand = data.get("brand_raw") or data.get("brand") or ""
    flags = data.get("flags") or []
    return CpuInfo(
        brand=str(brand),
        flags=relevant_flags(str(f) for f in flags) if isinstance(flags, list) else frozenset(),
        source="py-cpuinfo",
    )


def detect_cpu(
    *,
    proc_root: Path = Path("/proc"),
    cache_dir: Path | None = None,
    probe: CpuinfoProbe | None = run_py_cpuinfo,
) -> tuple[CpuInfo, str]:
    """Brand and flags of this CPU, and a note when they are unknown.

    Order: ``/proc/cpuinfo``; else the disk cache; else ``probe`` (py-cpuinfo), whose answer is
    cached. Pass ``probe=None`` where the slow path must not run (a GUI thread).

    Args:
        proc_root: Where ``/proc`` is (tests pass a recorded tree).
        cache_dir: Cache folder; ``None`` means :func:`default_cache_dir`.
        probe: The slow probe, or ``None`` to skip it.
    """
    info = read_proc_cpuinfo(proc_root)
    if info is not None:
        return info, ""
    key = cpu_key(proc_root)
    folder = default_cache_dir() if cache_dir is None else cache_dir
    cached = read_cache(folder, key)
    if cached is not None:
        return cached, ""
    if probe is None:
        return CpuInfo("", frozenset(), "none"), "CPU flags are not known yet (not probed)."
    try:
        info = _from_py_cpuinfo(probe())
    except Exception as exc:  # py-cpuinfo runs a subprocess and parses its output: anything goes
        log.debug("py-cpuinfo failed: %s", exc)
        return CpuInfo(
            "", frozenset(), "none"
        ), f"CPU flags are unknown: py-cpuinfo failed ({exc})."
    write_cache(folder, key, info)
    return info, ""
