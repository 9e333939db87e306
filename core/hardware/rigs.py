"""Declared rigs: TOML files describing a machine you have, or one you are thinking of buying.

A rig file gives the same :class:`~moe_studio.core.hardware.devices.Rig` detection gives, so a plan
for "a second 3090" or a box of RPC servers is made exactly like a plan for this machine. Presets
ship in ``resources/rigs/*.toml`` and are named by their file stem (``rtx4090-192g``). Format::

    name = "2× RTX 3090 + 256 GB"      # optional; defaults to the file name

    [host]                             # required
    ram = "256 GiB"                    # required; every size needs a unit (GiB, GB, MiB …)
    swap = "16 GiB"
    cores = 16                         # physical cores
    threads = 32                       # logical CPUs
    cpu = "AMD Ryzen 9 9950X"
    flags = ["avx2", "avx512f", "avx512_vnni"]
    numa_nodes = 2                     # shorthand: RAM and cores split evenly; or [[numa]] below

    [[gpu]]                            # one table per GPU model, in CUDA order
    name = "NVIDIA GeForce RTX 3090"
    vram = "24576 MiB"                 # required
    pcie = "4.0 x8"                    # generation × lanes: "4.0 x16", "gen5 x16", "3x8"
    compute_capability = "8.6"
    count = 2                          # this many identical GPUs (default 1)

    [[numa]]                           # one table per node, instead of numa_nodes
    cpus = "0-31,64-95"                # Linux cpulist, or a list of numbers
    memory = "384 GiB"

    [[rpc]]                            # one table per device of an rpc-server
    endpoint = "192.168.1.20:50052"    # required
    memory = "24 GiB"                  # required: the server's device memory
    device = 0                         # device index on that server (default 0)
    label = "RTX 3090 in the other box"
    flavour = "ik"                     # "ik" or "mainline": they do not interoperate

RPC devices come first in the rig's device list, as both engines put them first by default
(engines.md §8). Anything else — an unknown key, a size without a unit, a negative size — is a
:class:`~moe_studio.core.errors.HardwareError` naming the key and its line.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from moe_studio.core.errors import HardwareError, MoeStudioError
from moe_studio.core.fsutil import NotARegularFileError, read_regular_file
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, NumaNode, Rig
from moe_studio.core.hardware.numa import parse_cpulist
from moe_studio.core.hardware.rpc import FLAVOURS, flavour_note, parse_endpoint, rpc_device
from moe_studio.core.units import parse_size

TOP_KEYS = ("name", "host", "gpu", "numa", "rpc")
HOST_KEYS = ("ram", "swap", "cores", "threads", "cpu", "flags", "numa_nodes")
GPU_KEYS = ("name", "vram", "pcie", "compute_capability", "count")
NUMA_KEYS = ("id", "cpus", "memory")
RPC_KEYS = ("endpoint", "memory", "device", "label", "flavour")

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?")
_KEY = re.compile(r"""^\s*([A-Za-z0-9_\-]+|"[^"]*"|'[^']*')\s*[=.]""")
_BARE_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)\s*$")
_PCIE = re.compile(r"^\s*(?:gen\s*)?([1-6])(?:\.0)?\s*[x×]\s*(\d+)\s*$", re.IGNORECASE)
_CAPABILITY = re.compile(r"^\d+\.\d+$")
_WIDTHS = (1, 2, 4, 8, 12, 16, 32)
# A rig file is a few kilobytes; anything past this is not one (or is /dev/zero).
_MAX_RIG_FILE = 4 * 1024 * 1024


class _Locator:
    """Finds the line of a key in the TOML text (tomllib reports no positions for values)."""

    def __init__(self, text: str) -> None:
        self._keys: dict[tuple[str, int, str], int] = {}
        self._headers: dict[tuple[str, int], int] = {}
        counts: dict[str, int] = {}
        table, index = "", 0
        for lineno, line in enumerate(text.splitlines(), 1):
            header = _HEADER.match(line)
            if header:
                table = header.group(2)
                if header.group(1) == "[[":
                    counts[table] = counts.get(table, 0) + 1
                index = counts.get(table, 1) - 1
                self._headers.setdefault((table, index), lineno)
                continue
            key = _KEY.match(line)
            if key:
                self._keys.setdefault((table, index, key.group(1).strip("\"'")), lineno)

    def line(self, table: str, index: int, key: str | None) -> int | None:
        if key is not None:
            if (table, index, key) in self._keys:
                return self._keys[(table, index, key)]
            if not table and (key, 0) in self._headers:
                return self._headers[(key, 0)]  # a top-level key written as a [table]
        if not table:
            return None
        if (table, index) in self._headers:
            return self._headers[(table, index)]
        return self._keys.get(("", 0, table))  # a dotted key or an inline table at the top


class _Reader:
    """Validates one parsed rig file, raising errors that name the key and line."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.locator = _Locator(text)

    def fail(self, table: str, index: int, key: str | None, message: str) -> HardwareError:
        line = self.locator.line(table, index, key)
        where = f"{self.source}, line {line}" if line else self.source
        return HardwareError(f"{where}: {message}")

    @staticmethod
    def where(table: str, index: int) -> str:
        if not table:
            return "at the top level"
        return "in [host]" if table == "host" else f"in [[{table}]] #{index + 1}"

    def label(self, table: str, index: int, key: str) -> str:
        return f"{key!r}" if not table else f"{key!r} {self.where(table, index)}"

    def check_keys(
        self, data: Mapping[str, object], table: str, index: int, allowed: tuple[str, ...]
    ) -> None:
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else "."
                raise self.fail(
                    table,
                    index,
                    key,
                    f"unknown key {key!r} {self.where(table, index)}{hint} The keys there are: "
                    f"{', '.join(allowed)}.",
                )

    def size(
        self, value: object, table: str, index: int, key: str, *, allow_zero: bool = False
    ) -> int:
        what = self.label(table, index, key)
        example = f'{key} = "24 GiB"'
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.fail(table, index, key, f"{what} must be a size in quotes, like {example}.")
        text = str(value)
        if isinstance(value, (int, float)) or _BARE_NUMBER.match(text):
            if text.strip().startswith("-"):
                raise self.fail(
                    table, index, key, f"{what} is negative ({text}); sizes are positive."
                )
            raise self.fail(
                table,
                index,
                key,
                f"{what} is {text} without a unit; add one, for example {example} (or GB, MiB).",
            )
        if text.strip().startswith("-"):
            raise self.fail(table, index, key, f"{what} is negative ({text}); sizes are positive.")
        try:
            size = parse_size(text)
        except MoeStudioError as exc:
            raise self.fail(table, index, key, f"{what}: {exc}") from None
        if size <= 0 and not allow_zero:
            raise self.fail(table, index, key, f"{what} is {text}; it must be more than zero.")
        return size

    def integer(
        self, value: object, table: str, index: int, key: str, *, low: int, high: int
    ) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(
                table,
                index,
                key,
                f"{self.label(table, index, key)} must be a whole number from {low} to {high}, "
                f"not {value!r}.",
            )
        return value

    def text(self, value: object, table: str, index: int, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(
                table, index, key, f"{self.label(table, index, key)} must be text in quotes."
            )
        return value.strip()

    def table(self, value: object, table: str) -> Mapping[str, object]:
        if not isinstance(value, dict):
            raise self.fail("", 0, table, f"[{table}] must be a table.")
        return value

    def tables(self, value: object, table: str) -> list[Mapping[str, object]]:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(
                "", 0, table, f"{table!r} must be a list of tables, written [[{table}]]."
            )
        return value

    def pcie(self, value: object, index: int) -> tuple[int, int]:
        match = _PCIE.match(value) if isinstance(value, str) else None
        if not match or int(match.group(2)) not in _WIDTHS:
            raise self.fail(
                "gpu",
                index,
                "pcie",
                f"{self.label('gpu', index, 'pcie')} is {value!r}; write generation × lanes, for "
                'example pcie = "4.0 x16" (generations 1–6, lanes 1–32).',
            )
        return int(match.group(1)), int(match.group(2))

    def host(self, data: Mapping[str, object]) -> tuple[HostInfo, int | None]:
        self.check_keys(data, "host", 0, HOST_KEYS)
        if "ram" not in data:
            raise self.fail("host", 0, None, '[host] needs ram, for example ram = "256 GiB".')
        flags_value = data.get("flags", [])
        if not isinstance(flags_value, list) or not all(isinstance(f, str) for f in flags_value):
            raise self.fail(
                "host", 0, "flags", 'flags in [host] must be a list of text, like ["avx2"].'
            )
        cores = (
            self.integer(data["cores"], "host", 0, "cores", low=1, high=4096)
            if "cores" in data
            else None
        )
        threads = (
            self.integer(data["threads"], "host", 0, "threads", low=1, high=8192)
            if "threads" in data
            else None
        )
        if cores and threads and threads < cores:
            raise self.fail(
                "host", 0, "threads", f"threads ({threads}) in [host] is less than cores ({cores})."
            )
        numa_nodes = (
            self.integer(data["numa_nodes"], "host", 0, "numa_nodes", low=1, high=64)
            if "numa_nodes" in data
            else None
        )
        host = HostInfo(
            ram_total=self.size(data["ram"], "host", 0, "ram"),
            ram_available=None,
            swap_total=self.size(data["swap"], "host", 0, "swap", allow_zero=True)
            if "swap" in data
            else None,
            cores_physical=cores,
            cores_logical=threads,
            cpu_brand=self.text(data["cpu"], "host", 0, "cpu") if "cpu" in data else "",
            cpu_flags=frozenset(f.strip().lower() for f in flags_value),
        )
        return host, numa_nodes

    def gpus(self, entries: list[Mapping[str, object]]) -> list[Device]:
        devices: list[Device] = []
        for i, entry in enumerate(entries):
            self.check_keys(entry, "gpu", i, GPU_KEYS)
            if "vram" not in entry:
                raise self.fail(
                    "gpu", i, None, f'[[gpu]] #{i + 1} needs vram, like vram = "24 GiB".'
                )
            vram = self.size(entry["vram"], "gpu", i, "vram")
            name = self.text(entry.get("name", "GPU"), "gpu", i, "name")
            gen, width = self.pcie(entry["pcie"], i) if "pcie" in entry else (None, None)
            capability = entry.get("compute_capability", "")
            if isinstance(capability, float):
                capability = f"{capability:.1f}"
            if not isinstance(capability, str) or (
                capability and not _CAPABILITY.match(capability)
            ):
                raise self.fail(
                    "gpu",
                    i,
                    "compute_capability",
                    f'{self.label("gpu", i, "compute_capability")} must look like "8.9".',
                )
            count = self.integer(entry.get("count", 1), "gpu", i, "count", low=1, high=64)
            for _ in range(count):
                n = len(devices)
                devices.append(
                    Device(
                        name=f"CUDA{n}",
                        kind=DeviceKind.CUDA,
                        memory_total=vram,
                        label=name,
                        index=n,
                        pcie_gen=gen,
                        pcie_width=width,
                        compute_capability=capability,
                    )
                )
        return devices

    def numa(
        self, entries: list[Mapping[str, object]], host: HostInfo, shorthand: int | None
    ) -> tuple[NumaNode, ...]:
        if entries and shorthand is not None:
            raise self.fail(
                "host",
                0,
                "numa_nodes",
                "give either numa_nodes in [host] or [[numa]] tables, not both.",
            )
        if shorthand is not None:
            return even_numa(shorthand, host.ram_total, host.cores_physical, host.cores_logical)
        nodes: list[NumaNode] = []
        for i, entry in enumerate(entries):
            self.check_keys(entry, "numa", i, NUMA_KEYS)
            node_id = self.integer(entry.get("id", i), "numa", i, "id", low=0, high=1023)
            if any(n.id == node_id for n in nodes):
                raise self.fail("numa", i, "id", f"NUMA node id {node_id} is given twice.")
            if "memory" not in entry:
                raise self.fail(
                    "numa", i, None, f'[[numa]] #{i + 1} needs memory, like memory = "384 GiB".'
                )
            nodes.append(
                NumaNode(
                    id=node_id,
                    cpus=self.cpus(entry.get("cpus", ""), i),
                    memory_total=self.size(entry["memory"], "numa", i, "memory", allow_zero=True),
                )
            )
        return tuple(nodes)

    def cpus(self, value: object, index: int) -> tuple[int, ...]:
        try:
            if isinstance(value, str):
                return parse_cpulist(value)
            if isinstance(value, list) and all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in value
            ):
                return tuple(sorted(set(value)))
        except ValueError:
            pass
        raise self.fail(
            "numa",
            index,
            "cpus",
            f'{self.label("numa", index, "cpus")} must be a CPU list like "0-31,64-95".',
        )

    def rpcs(self, entries: list[Mapping[str, object]]) -> tuple[list[Device], str]:
        devices: list[Device] = []
        flavours: list[tuple[str, str]] = []
        for i, entry in enumerate(entries):
            self.check_keys(entry, "rpc", i, RPC_KEYS)
            for required, example in (("endpoint", '"192.168.1.20:50052"'), ("memory", '"24 GiB"')):
                if required not in entry:
                    raise self.fail(
                        "rpc",
                        i,
                        None,
                        f"[[rpc]] #{i + 1} needs {required}, like {required} = {example}.",
                    )
            endpoint = self.text(entry["endpoint"], "rpc", i, "endpoint")
            try:
                parse_endpoint(endpoint)
            except HardwareError as exc:
                raise self.fail("rpc", i, "endpoint", str(exc)) from None
            device_index = self.integer(entry.get("device", 0), "rpc", i, "device", low=0, high=255)
            flavour = self.text(entry.get("flavour", ""), "rpc", i, "flavour").lower()
            if flavour and flavour not in FLAVOURS:
                raise self.fail(
                    "rpc",
                    i,
                    "flavour",
                    f'flavour {flavour!r} in [[rpc]] #{i + 1} is unknown; use "ik" (ik_llama.cpp) '
                    'or "mainline" (llama.cpp).',
                )
            device = rpc_device(
                endpoint,
                self.size(entry["memory"], "rpc", i, "memory"),
                index=device_index,
                label=self.text(entry.get("label", ""), "rpc", i, "label"),
            )
            if any(d.name == device.name for d in devices):
                raise self.fail(
                    "rpc",
                    i,
                    "endpoint",
                    f"{device.name} is declared twice; give each device its own index.",
                )
            devices.append(device)
            flavours.append((endpoint, flavour))
        return devices, flavour_note(flavours)


def even_numa(
    nodes: int, ram_total: int, cores: int | None, threads: int | None
) -> tuple[NumaNode, ...]:
    """``nodes`` equal NUMA nodes, numbered as Linux does on a multi-socket x86 machine.

    Node ``k`` gets physical cores ``k·c … (k+1)·c-1`` and their SMT siblings (which Linux
    numbers after all physical cores), and ``1/nodes`` of the RAM.
    """
    per_node = (cores or 0) // nodes
    siblings = (threads or 0) // cores if cores and threads and threads % cores == 0 else 1
    result = []
    for k in range(nodes):
        cpus = [
            s * (cores or 0) + c
            for s in range(siblings)
            for c in range(k * per_node, (k + 1) * per_node)
        ]
        result.append(NumaNode(id=k, cpus=tuple(sorted(cpus)), memory_total=ram_total // nodes))
    return tuple(result)


def parse_rig(text: str, *, source: str, default_name: str, location: str = "") -> Rig:
    """Read a rig from TOML text (see the module docstring for the format).

    Args:
        text: The TOML.
        source: The rig's ``source``: ``file:<path>`` or ``preset:<name>``.
        default_name: The rig's name when the file gives none.
        location: What error messages call the text (default: the part of ``source`` after ``:``).

    Raises:
        HardwareError: a syntax error, an unknown key, or a value that cannot be used.
    """
    where = location or source.partition(":")[2] or source
    reader = _Reader(where, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HardwareError(f"{where}: not valid TOML: {exc}; fix that line.") from None
    except (ValueError, RecursionError) as exc:  # a number of 4,300+ digits, deep nesting
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise HardwareError(f"{where}: not a rig file MoE Studio can read: {reason}.") from None
    reader.check_keys(data, "", 0, TOP_KEYS)
    if "host" not in data:
        raise HardwareError(
            f'{where}: a rig file needs a [host] table with at least ram = "… GiB".'
        )
    host, numa_nodes = reader.host(reader.table(data["host"], "host"))
    gpus = reader.gpus(reader.tables(data.get("gpu", []), "gpu"))
    rpcs, note = reader.rpcs(reader.tables(data.get("rpc", []), "rpc"))
    nodes = reader.numa(reader.tables(data.get("numa", []), "numa"), host, numa_nodes)
    host = replace(host, numa_nodes=nodes)
    name = reader.text(data["name"], "", 0, "name") if "name" in data else default_name
    return Rig(
        name=name or default_name,
        host=host,
        devices=(*rpcs, *gpus),  # RPC devices first, as the engines order them (engines.md §8)
        source=source,
        notes=(note,) if note else (),
    )


def load_rig_file(path: str | Path) -> Rig:
    """Read a rig file.

    Raises:
        HardwareError: the file cannot be read, or is not a valid rig.
    """
    file = Path(path)
    try:
        text = read_regular_file(file, limit=_MAX_RIG_FILE).decode("utf-8")
    except FileNotFoundError:
        raise HardwareError(f"{file}: no such rig file.") from None
    except NotARegularFileError as exc:
        raise HardwareError(f"{file} is {exc.strerror}; choose a rig .toml file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HardwareError(f"{file}: cannot read this rig file ({exc}).") from None
    return parse_rig(text, source=f"file:{file}", default_name=file.stem)


def presets_dir() -> Path:
    """The folder of the shipped presets, ``resources/rigs``."""
    from moe_studio.resources import path

    return path("rigs")


def list_presets(folder: Path | None = None) -> list[str]:
    """Names of the shipped presets (file stems), sorted."""
    root = presets_dir() if folder is None else folder
    try:
        return sorted(p.stem for p in root.glob("*.toml") if p.is_file())
    except OSError:
        return []


def load_preset(name: str, *, folder: Path | None = None) -> Rig:
    """The preset ``name`` (a file stem from :func:`list_presets`).

    Raises:
        HardwareError: no such preset, or a broken one.
    """
    root = presets_dir() if folder is None else folder
    names = list_presets(root)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise HardwareError(
            f"There is no rig preset named {name!r}{hint} The presets are: {', '.join(names)}."
        )
    file = root / f"{name}.toml"
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HardwareError(f"{file}: cannot read this preset ({exc}).") from None
    return parse_rig(text, source=f"preset:{name}", default_name=name, location=str(file))
