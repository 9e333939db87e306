"""Profiles: a plan saved with everything needed to reopen, re-check and launch it.

A :class:`Profile` is a value: the model it was made for (path or catalog spec plus an identity,
so a changed or re-quantized file is noticed), the device of every loaded tensor and the pinned
cells, the run settings, the rig it was planned for, the engine and its dialect, free notes,
benchmark results, timestamps and the MoE Studio version that wrote it.

On disk it is versioned JSON (:data:`SCHEMA_VERSION` is 1)::

    {
      "format": "moe-studio-profile",
      "schema": 1,
      "written_by": "0.1.0",
      "name": "deepseek on the 4090",
      "created": "2025-05-01T09:30:00Z",
      "modified": "2025-05-02T18:02:11Z",
      "model": {"path": "/models/DeepSeek-V3-Q4_K_M-00001-of-00009.gguf",
                "name": "DeepSeek V3", "architecture": "deepseek2", "tensor_count": 1086,
                "total_bytes": 404620771328, "identity": "edaa7bf2b02ab584"},
      "engine": {"path": "/opt/ik_llama.cpp/build/bin/llama-server", "dialect": "ik"},
      "settings": {"ctx": 32768, "cache_type_k": "q8_0", …every Settings field but dialect},
      "rig": {"name": …, "source": "detected", "notes": [], "host": {…, "numa_nodes": [{…}]},
              "devices": [{"name": "CUDA0", "kind": "cuda", "memory_total": …, …}]},
      "fits": true,
      "notes": "free text",
      "benchmarks": [{…kept as given…}],
      "pinned": [[-1, "token_embd"], [3, "attn"]],
      "placement": {"token_embd.weight": "CUDA0", "blk.0.attn_q_a.weight": "CUDA0", …}
    }

``pinned`` holds ``[layer, group]`` pairs (layer -1 is the global row, group a
:class:`~moe_studio.core.gguf.tensors.TensorGroup` value); ``placement`` maps every loaded tensor
to its device. ``fits`` is the memory estimate's verdict when the profile was saved, so that a list
of profiles can show it without opening models. Benchmark entries are objects kept as given; lists
show the number under ``tg_tokens_per_second`` (else ``tokens_per_second``) of the newest entry
having one.

Reading follows these rules:

- the file is never changed by reading it, whatever is wrong with it;
- a JSON syntax error names the line and column, a value of the wrong type names its key path
  (``settings.ctx must be a whole number, not the text "big"``);
- a profile of a newer schema is refused with the MoE Studio version that wrote it;
- an older schema is converted step by step by :data:`MIGRATIONS` (schema ``n`` → ``n + 1``);
- keys this version does not know are reported in :attr:`Profile.warnings` and kept in
  :attr:`Profile.unknown`, and written back on save: a profile edited by a newer MoE Studio loses
  nothing when an older one saves it;
- a settings key that is missing takes the default of
:class:`~moe_studio.core.plan.settings.Settings`.

Writing (:func:`save_profile`) is atomic, with the previous version kept as ``<name>.bak``
(:mod:`moe_studio.core.fsutil`). :class:`ProfileLibrary` is the folder of saved profiles;
:func:`autosave`, :func:`pending_recovery` and :func:`discard_autosave` keep unsaved work across
a crash.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from moe_studio.core import __version__
from moe_studio.core.errors import ProfileError
from moe_studio.core.fsutil import atomic_write_bytes, atomic_write_text, backup_path
from moe_studio.core.gguf.model import Cell, ModelLayout
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, TensorGroup
from moe_studio.core.hardware.devices import Rig
from moe_studio.core.plan.placement import Plan, as_mapping, plan_from_mapping
from moe_studio.core.plan.settings import Dialect, Settings
from moe_studio.core.units import format_bytes

if typing.TYPE_CHECKING:
    from moe_studio.core.plan.planning import Planner

log = logging.getLogger(__name__)

__all__ = [
    "AUTOSAVE_FORMAT",
    "FORMAT",
    "MIGRATIONS",
    "PROFILE_SUFFIX",
    "SCHEMA_VERSION",
    "ModelRef",
    "Profile",
    "ProfileLibrary",
    "ProfileSummary",
    "Recovery",
    "UnknownKey",
    "autosave",
    "autosave_path",
    "check_model",
    "default_autosave_folder",
    "default_library_folder",
    "discard_autosave",
    "from_json",
    "load_profile",
    "migrate",
    "pending_recovery",
    "plan_from_profile",
    "planner_from_profile",
    "profile_from_plan",
    "require_model",
    "save_profile",
    "save_profile_from_plan",
    "summarize",
    "to_json",
    "update_profile",
]

FORMAT = "moe-studio-profile"
AUTOSAVE_FORMAT = "moe-studio-autosave"
SCHEMA_VERSION = 1
PROFILE_SUFFIX = ".json"
APP_NAME = "moe-studio"
# Keys of a benchmark entry the library reads as the generation speed (tokens/s), in order.
BENCH_SPEED_KEYS = ("tg_tokens_per_second", "tokens_per_second")

Json = Any
KeyPath = tuple[str | int, ...]
Migration = Callable[[dict[str, Json]], dict[str, Json]]

# Schema n → n + 1. Each function takes the whole document of schema n (a fresh copy it may
# change) and returns the document of schema n + 1; ``migrate`` updates "schema" itself.
# Schema 1 is the first; there is nothing to migrate yet.
MIGRATIONS: dict[int, Migration] = {}


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --- the value -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelRef:
    """Which model a profile was made for, and how to tell that the file changed since.

    Attributes:
        source: Path of the first shard, or ``catalog:NAME@RECIPE`` (as ``ModelLayout.source``).
        name: The model's display name (``general.name``), for lists.
        architecture: ``general.architecture``.
        tensor_count: Tensors in the file (all shards), loaded or not.
        total_bytes: Bytes of the tensors the engine loads.
        identity: :attr:`ModelLayout.identity`, a hash of tensor names, types and shapes.
    """

    source: str
    architecture: str
    tensor_count: int
    total_bytes: int
    identity: str
    name: str = ""

    @classmethod
    def of(cls, layout: ModelLayout) -> ModelRef:
        return cls(
            source=layout.source,
            architecture=layout.architecture,
            tensor_count=len(layout.tensors),
            total_bytes=layout.total_bytes,
            identity=layout.identity,
            name=layout.name,
        )

    @property
    def is_catalog(self) -> bool:
        return self.source.startswith("catalog:")


@dataclass(frozen=True, slots=True)
class UnknownKey:
    """A key of a profile file this version does not know, kept to be written back on save.

    Attributes:
        path: Key path from the top of the document (``("rig", "devices", 0, "vendor")``).
        value: Its JSON value, unchanged.
    """

    path: KeyPath
    value: Json

    @property
    def dotted(self) -> str:
        return _dotted(self.path)


@dataclass(frozen=True)
class Profile:
    """A saved plan: model, placement, settings, rig, engine, notes and benchmark results.

    ``settings.dialect`` is the engine's dialect (the file stores it under ``engine``).
    ``warnings`` (what loading noticed) and ``written_by`` (the version that wrote the file
    read) do not take part in equality.
    """

    model: ModelRef
    placement: Mapping[str, str]  # tensor name → device, every loaded tensor
    settings: Settings
    rig: Rig
    pinned: frozenset[Cell] = frozenset()
    engine: str = "llama-server"
    name: str = ""
    notes: str = ""
    benchmarks: tuple[Mapping[str, Json], ...] = ()
    fits: bool | None = None  # the estimate's verdict when saved (lists show it without a model)
    created: datetime = field(default_factory=_now)
    modified: datetime = field(default_factory=_now)
    unknown: tuple[UnknownKey, ...] = ()
    written_by: str = field(default=__version__, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def dialect(self) -> Dialect:
        return self.settings.dialect

    @property
    def title(self) -> str:
        """What a list shows: the profile's name, else the model's."""
        return self.name or self.model.name or Path(self.model.source).stem

    @property
    def tokens_per_second(self) -> float | None:
        """Generation speed of the newest benchmark entry that records one."""
        for entry in reversed(self.benchmarks):
            for key in BENCH_SPEED_KEYS:
                value = entry.get(key)
                if (
                    isinstance(value, int | float)
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                ):
                    return float(value)
        return None

    def touched(self, now: datetime | None = None) -> Profile:
        """This profile with ``modified`` set to ``now``."""
        return replace(self, modified=now or _now())


# --- reading -------------------------------------------------------------------------------------


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "the document"


def _describe(value: Json) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "…"
        return f"the text {json.dumps(text, ensure_ascii=False)}"
    if isinstance(value, list):
        return "a list"
    return "an object"


class _Mismatch(Exception):  # noqa: N818 - internal signal, always turned into a ProfileError
    def __init__(self, path: KeyPath, expected: str, value: Json) -> None:
        super().__init__(path, expected, value)
        self.path = path
        self.expected = expected
        self.value = value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _expected(hint: Any) -> str:
    """How a message names the JSON a type hint wants."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "a whole number"
    if hint is float:
        return "a number"
    if hint is str:
        return "text"
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(json.dumps(m.value) for m in hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in args)
    if origin in (tuple, frozenset, list):
        return f"a list of {_plural(args[0])}"
    if is_dataclass(hint):
        return "an object"
    return str(hint)


def _plural(hint: Any) -> str:
    if hint is int:
        return "whole numbers"
    if hint is str:
        return "texts"
    if is_dataclass(hint):
        return "objects"
    return _expected(hint)


class _Reader:
    """Checks a parsed document against the types it should have, collecting unknown keys."""

    def __init__(self) -> None:
        self.unknown: list[UnknownKey] = []

    def obj(self, value: Json, path: KeyPath) -> dict[str, Json]:
        if not isinstance(value, dict):
            raise _Mismatch(path, "an object", value)
        return value

    def keep_unknown(self, data: Mapping[str, Json], path: KeyPath, known: Iterable[str]) -> None:
        names = set(known)
        for key, value in data.items():
            if key not in names:
                self.unknown.append(UnknownKey((*path, key), value))

    def require(self, data: Mapping[str, Json], key: str, path: KeyPath) -> Json:
        if key not in data:
            where = "the profile" if not path else _dotted(path)
            raise ProfileError(f"{where} has no {key!r}.")
        return data[key]

    def value(self, raw: Json, hint: Any, path: KeyPath) -> Any:
        """``raw`` as the Python value of type ``hint``; raises :class:`_Mismatch`."""
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if hint is Any:
            return raw
        if hint is bool:
            if isinstance(raw, bool):
                return raw
        elif hint is int:
            if isinstance(raw, int) and not isinstance(raw, bool):
                return raw
        elif hint is float:
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                return float(raw)
        elif hint is str:
            if isinstance(raw, str):
                return raw
        elif hint is type(None):
            if raw is None:
                return None
        elif origin is Literal:
            for option in args:
                if raw == option and type(raw) is type(option):
                    return option
        elif isinstance(hint, type) and issubclass(hint, enum.Enum):
            for member in hint:
                if raw == member.value and type(raw) is type(member.value):
                    return member
        elif origin in (typing.Union, types.UnionType):
            if raw is None and type(None) in args:
                return None
            arms = [a for a in args if a is not type(None)]
            if len(arms) == 1:
                try:
                    return self.value(raw, arms[0], path)
                except _Mismatch as exc:
                    if exc.path != path:
                        raise
            else:
                for arm in arms:
                    try:
                        return self.value(raw, arm, path)
                    except _Mismatch:
                        continue
            raise _Mismatch(path, _expected(hint), raw)
        elif origin in (tuple, frozenset):
            if (len(args) == 2 and args[1] is Ellipsis) or origin is frozenset:
                if isinstance(raw, list):
                    items = [self.value(v, args[0], (*path, i)) for i, v in enumerate(raw)]
                    return tuple(items) if origin is tuple else frozenset(items)
            else:
                raise TypeError(f"profiles cannot store values of type {hint}")
        elif isinstance(hint, type) and is_dataclass(hint):
            return self.dataclass(hint, raw, path)
        else:
            raise TypeError(f"profiles cannot store values of type {hint}")
        raise _Mismatch(path, _expected(hint), raw)

    def dataclass(
        self, cls: type[Any], raw: Json, path: KeyPath, fixed: Mapping[str, Any] | None = None
    ) -> Any:
        """An instance of dataclass ``cls`` from an object; ``fixed`` values are not read."""
        data = self.obj(raw, path)
        fixed = fixed or {}
        hints = _hints(cls)
        kwargs: dict[str, Any] = dict(fixed)
        for f in fields(cls):
            if f.name in fixed:
                continue
            if f.name in data:
                kwargs[f.name] = self.value(data[f.name], hints[f.name], (*path, f.name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProfileError(f"{_dotted(path)} has no {f.name!r}.")
        self.keep_unknown(data, path, (f.name for f in fields(cls)))
        return cls(**kwargs)


def _json_value(value: Any) -> Json:
    """A Python value of a profile as JSON (dataclasses by field, enums by value, sets sorted)."""
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json_value(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, frozenset | set):
        return sorted(_json_value(v) for v in value)
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    raise TypeError(f"profiles cannot store {type(value).__name__} values")


def _timestamp_text(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _timestamp(raw: Json, path: KeyPath) -> datetime:
    if not isinstance(raw, str):
        raise _Mismatch(path, "a date and time as text (2025-05-01T09:30:00Z)", raw)
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise _Mismatch(path, "a date and time as text (2025-05-01T09:30:00Z)", raw) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def migrate(
    document: dict[str, Json],
    *,
    target: int | None = None,
    migrations: Mapping[int, Migration] | None = None,
) -> tuple[dict[str, Json], list[str]]:
    """Convert a profile document of an older schema to ``target`` (default: the current one).

    Args:
        document: A parsed profile whose ``schema`` is a whole number no greater than ``target``.
        target: The schema to reach; :data:`SCHEMA_VERSION` by default.
        migrations: Schema ``n`` → ``n + 1`` steps; :data:`MIGRATIONS` by default.

    Returns:
        The converted document (``document`` itself when it needed nothing) and notes saying
        what was converted.

    Raises:
        ProfileError: a step is missing or fails.
    """
    goal = SCHEMA_VERSION if target is None else target
    steps = MIGRATIONS if migrations is None else migrations
    start = document["schema"]
    version = start
    notes: list[str] = []
    while version < goal:
        step = steps.get(version)
        if step is None:
            raise ProfileError(
                f"Profiles of format {version} can no longer be read by this MoE Studio "
                f"({__version__}); open and save it with an earlier version first."
            )
        try:
            document = step(json.loads(json.dumps(document)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProfileError(
                f"The profile could not be converted from format {version} to {version + 1} "
                f"({type(exc).__name__}: {exc}); the file was not changed."
            ) from exc
        version += 1
        document["schema"] = version
    if version != start:
        notes.append(
            f"The profile was converted from format {start} to format {version}; saving it "
            f"writes format {version}, which MoE Studio before this version cannot read."
        )
    return document, notes


def from_json(text: str, *, source: str = "the profile") -> Profile:
    """Read a profile from JSON text; ``source`` names it in messages (usually its path).

    Raises:
        ProfileError: invalid JSON, not a profile, a newer schema, or a value of the wrong type.
    """
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        # A JSON string cannot hold a raw line break, so an unterminated one ran into the end.
        ends_early = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        truncated = " (the file looks truncated)" if ends_early else ""
        raise ProfileError(
            f"{source} is not valid JSON{truncated}: {exc.msg} (line {exc.lineno}, "
            f"column {exc.colno}).",
            details=str(exc),
        ) from None
    except RecursionError:
        raise ProfileError(f"{source} is not a profile: its JSON is nested too deeply.") from None
    if not isinstance(raw, dict):
        raise ProfileError(
            f"{source} is not a MoE Studio profile: its JSON is {_describe(raw)}, not an object."
        )
    if raw.get("format") != FORMAT:
        raise ProfileError(f'{source} is not a MoE Studio profile (it lacks "format": "{FORMAT}").')
    schema = raw.get("schema")
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        raise ProfileError(
            f"{source}: schema must be a whole number from 1, not {_describe(schema)}."
        )
    if schema > SCHEMA_VERSION:
        writer = raw.get("written_by")
        by = f"MoE Studio {writer}" if isinstance(writer, str) and writer else "a newer MoE Studio"
        raise ProfileError(
            f"{source} was written by {by} in profile format {schema}; this MoE Studio "
            f"({__version__}) reads format {SCHEMA_VERSION} and older. Update MoE Studio to open "
            "it; the file was not changed."
        )
    try:
        document, notes = migrate(raw)
    except ProfileError as exc:
        raise ProfileError(f"{source}: {exc}", details=exc.details) from None
    try:
        profile = _read_document(document, source)
    except _Mismatch as exc:
        raise ProfileError(
            f"{source}: {_dotted(exc.path)} must be {exc.expected}, not {_describe(exc.value)}."
        ) from None
    except ProfileError as exc:
        raise ProfileError(f"{source}: {exc}", details=exc.details) from None
    warnings = [*notes]
    warnings += [
        f"{source}: unknown key {u.dotted!r} (kept, and written back when the profile is saved; "
        "a newer MoE Studio may use it)."
        for u in profile.unknown
    ]
    return replace(profile, warnings=tuple(warnings))


_TOP_KEYS = (
    "format",
    "schema",
    "written_by",
    "name",
    "created",
    "modified",
    "model",
    "engine",
    "settings",
    "rig",
    "fits",
    "notes",
    "benchmarks",
    "pinned",
    "placement",
)
_MODEL_KEYS = {
    "path": "source",
    "name": "name",
    "architecture": "architecture",
    "tensor_count": "tensor_count",
    "total_bytes": "total_bytes",
    "identity": "identity",
}
_GROUPS = {g.value: g for g in TensorGroup}


def _read_document(doc: dict[str, Json], source: str) -> Profile:
    r = _Reader()
    r.keep_unknown(doc, (), _TOP_KEYS)

    def text(data: Mapping[str, Json], key: str, path: KeyPath, default: str | None) -> str:
        if key not in data and default is not None:
            return default
        value = r.require(data, key, path)
        return str(r.value(value, str, (*path, key)))

    written_by = text(doc, "written_by", (), "")
    name = text(doc, "name", (), "")
    notes = text(doc, "notes", (), "")
    created = _timestamp(r.require(doc, "created", ()), ("created",))
    modified = _timestamp(r.require(doc, "modified", ()), ("modified",))

    model_raw = r.obj(r.require(doc, "model", ()), ("model",))
    r.keep_unknown(model_raw, ("model",), _MODEL_KEYS)
    hints = _hints(ModelRef)
    model_values: dict[str, Any] = {}
    for key, attr in _MODEL_KEYS.items():
        if key == "name" and key not in model_raw:
            continue
        value = r.value(r.require(model_raw, key, ("model",)), hints[attr], ("model", key))
        model_values[attr] = value
    model = ModelRef(**model_values)

    engine_raw = r.obj(r.require(doc, "engine", ()), ("engine",))
    r.keep_unknown(engine_raw, ("engine",), ("path", "dialect"))
    engine = text(engine_raw, "path", ("engine",), None)
    dialect: Dialect = r.value(
        r.require(engine_raw, "dialect", ("engine",)), Dialect, ("engine", "dialect")
    )

    settings_raw = r.obj(doc.get("settings", {}), ("settings",))
    if "dialect" in settings_raw and settings_raw["dialect"] != dialect:
        raise ProfileError(
            f"settings.dialect ({_describe(settings_raw['dialect'])}) contradicts engine.dialect "
            f"({json.dumps(dialect)}); remove one of them."
        )
    settings_known = {k: v for k, v in settings_raw.items() if k != "dialect"}
    settings: Settings = r.dataclass(
        Settings, settings_known, ("settings",), fixed={"dialect": dialect}
    )

    rig: Rig = r.dataclass(Rig, r.require(doc, "rig", ()), ("rig",))

    fits_raw = doc.get("fits")
    fits: bool | None = r.value(fits_raw, bool | None, ("fits",))

    bench_raw = doc.get("benchmarks", [])
    if not isinstance(bench_raw, list):
        raise _Mismatch(("benchmarks",), "a list of objects", bench_raw)
    benchmarks = tuple(r.obj(b, ("benchmarks", i)) for i, b in enumerate(bench_raw))

    pinned_raw = doc.get("pinned", [])
    if not isinstance(pinned_raw, list):
        raise _Mismatch(("pinned",), "a list of [layer, group] pairs", pinned_raw)
    pinned: set[Cell] = set()
    for i, pair in enumerate(pinned_raw):
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or isinstance(pair[0], bool)
            or not isinstance(pair[0], int)
            or pair[0] < GLOBAL_LAYER
            or pair[1] not in _GROUPS
        ):
            raise _Mismatch(
                ("pinned", i),
                'a [layer, group] pair such as [3, "attn"] (layer -1 is the global row, group '
                f"one of {', '.join(_GROUPS)})",
                pair,
            )
        pinned.add((pair[0], _GROUPS[pair[1]]))

    placement_raw = r.obj(r.require(doc, "placement", ()), ("placement",))
    placement: dict[str, str] = {}
    for tensor, device in placement_raw.items():
        if not isinstance(device, str) or not device:
            raise _Mismatch(("placement", tensor), 'a device name such as "CUDA0"', device)
        placement[tensor] = device

    return Profile(
        model=model,
        placement=placement,
        settings=settings,
        rig=rig,
        pinned=frozenset(pinned),
        engine=engine,
        name=name,
        notes=notes,
        benchmarks=benchmarks,
        fits=fits,
        created=created,
        modified=modified,
        unknown=tuple(r.unknown),
        written_by=written_by,
    )


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read the profile at ``path``; the file is never changed.

    Raises:
        ProfileError: the file cannot be read or is not a usable profile (the message says why
            and where, and points at the backup when there is one).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ProfileError(f"{p} does not exist.") from None
    except IsADirectoryError:
        raise ProfileError(f"{p} is a folder, not a profile.") from None
    except OSError as exc:
        raise ProfileError(f"Could not read {p}: {exc.strerror or exc}.") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProfileError(
            f"{p} is not a MoE Studio profile: byte {exc.start} is not UTF-8 text."
        ) from None
    try:
        return from_json(text, source=str(p))
    except ProfileError as exc:
        bak = backup_path(p)
        hint = f" The previous version is kept in {bak}." if bak.is_file() else ""
        raise ProfileError(f"{exc.message}{hint}", details=exc.details) from None


# --- writing -------------------------------------------------------------------------------------


def _document(profile: Profile) -> dict[str, Json]:
    settings = _json_value(profile.settings)
    del settings["dialect"]
    doc: dict[str, Json] = {
        "format": FORMAT,
        "schema": SCHEMA_VERSION,
        "written_by": __version__,
        "name": profile.name,
        "created": _timestamp_text(profile.created),
        "modified": _timestamp_text(profile.modified),
        "model": {key: getattr(profile.model, attr) for key, attr in _MODEL_KEYS.items()},
        "engine": {"path": profile.engine, "dialect": profile.settings.dialect},
        "settings": settings,
        "rig": _json_value(profile.rig),
        "fits": profile.fits,
        "notes": profile.notes,
        "benchmarks": [dict(b) for b in profile.benchmarks],
        "pinned": sorted([layer, TensorGroup(group).value] for layer, group in profile.pinned),
        "placement": dict(profile.placement),
    }
    for unknown in profile.unknown:
        _put_back(doc, unknown)
    return doc


def _put_back(doc: dict[str, Json], unknown: UnknownKey) -> None:
    """Write an unknown key back where it was read, if its parent still exists."""
    parent: Json = doc
    *head, last = unknown.path
    for part in head:
        if isinstance(part, int):
            ok = isinstance(parent, list) and 0 <= part < len(parent)
        else:
            ok = isinstance(parent, dict) and part in parent
        if not ok:
            log.warning(
                "unknown profile key %s dropped: %s no longer exists",
                unknown.dotted,
                _dotted(tuple(head)),
            )
            return
        parent = parent[part]
    if isinstance(parent, dict) and isinstance(last, str) and last not in parent:
        parent[last] = unknown.value


def _dumps(value: Json, indent: int = 0) -> str:
    """Indented JSON with every list of plain values on one line (cpus, flags, pinned pairs).

    Raises:
        ValueError: NaN or infinity (not JSON).
    """
    if isinstance(value, dict) and value:
        pad = " " * (indent + 1)
        items = [
            f"{pad}{json.dumps(str(k), ensure_ascii=False)}: {_dumps(v, indent + 1)}"
            for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and any(isinstance(v, dict | list) and v for v in value):
        pad = " " * (indent + 1)
        items = [pad + _dumps(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def to_json(profile: Profile) -> str:
    """The profile as JSON text of the current schema (keys it did not know written back).

    Raises:
        ValueError: a benchmark entry holds NaN or infinity.
    """
    return _dumps(_document(profile)) + "\n"


def save_profile(path: str | os.PathLike[str], profile: Profile, *, stamp: bool = True) -> Profile:
    """Write ``profile`` to ``path`` atomically, keeping the previous file as ``<name>.bak``.

    Args:
        path: The file to write (its folder must exist).
        profile: What to write.
        stamp: Set ``modified`` to now first.

    Returns:
        The profile as written (new ``modified``, this version in ``written_by``).

    Raises:
        ProfileError: the file cannot be written; it is left as it was.
    """
    written = replace(profile.touched() if stamp else profile, written_by=__version__, warnings=())
    try:
        text = to_json(written)
    except ValueError as exc:  # NaN or infinity in a benchmark entry
        raise ProfileError(f"Could not save {os.fspath(path)}: {exc}.") from None
    atomic_write_text(path, text, error=ProfileError)
    return written


# --- to and from plans ---------------------------------------------------------------------------


def profile_from_plan(
    planner: Planner,
    plan: Plan,
    *,
    executable: str = "llama-server",
    name: str = "",
    notes: str = "",
    benchmarks: Sequence[Mapping[str, Json]] = (),
    now: datetime | None = None,
) -> Profile:
    """A new profile of ``plan`` as ``planner`` sees it (model, rig, settings, estimate)."""
    moment = now or _now()
    _, estimate = planner.estimate(plan)
    return Profile(
        model=ModelRef.of(planner.layout),
        placement=as_mapping(planner.layout, plan),
        settings=planner.settings,
        rig=planner.rig,
        pinned=plan.pinned,
        engine=executable,
        name=name,
        notes=notes,
        benchmarks=tuple(benchmarks),
        fits=estimate.fits,
        created=moment,
        modified=moment,
    )


def update_profile(
    profile: Profile, planner: Planner, plan: Plan, *, executable: str | None = None
) -> Profile:
    """``profile`` with the model, plan, settings, rig and verdict of ``planner`` and ``plan``.

    Name, notes, benchmark results, the creation time and keys this version does not know are
    kept (saving an opened profile); ``executable`` replaces the engine when given.
    """
    fresh = profile_from_plan(
        planner, plan, executable=executable or profile.engine, now=profile.modified
    )
    return replace(
        profile,
        model=fresh.model,
        placement=fresh.placement,
        settings=fresh.settings,
        rig=fresh.rig,
        pinned=fresh.pinned,
        engine=fresh.engine,
        fits=fresh.fits,
    )


def check_model(profile: Profile, layout: ModelLayout) -> str | None:
    """``None`` when ``layout`` is the model the profile was made for, else a sentence saying
    what differs (architecture, tensor count, bytes, tensor table)."""
    want = profile.model
    have = ModelRef.of(layout)
    differences: list[str] = []
    if have.architecture != want.architecture:
        differences.append(f"its architecture is {have.architecture}, not {want.architecture}")
    if have.tensor_count != want.tensor_count:
        differences.append(f"it has {have.tensor_count} tensors, not {want.tensor_count}")
    if have.total_bytes != want.total_bytes:
        now_text, then_text = format_bytes(have.total_bytes), format_bytes(want.total_bytes)
        if now_text == then_text:
            now_text, then_text = f"{have.total_bytes:,} bytes", f"{want.total_bytes:,} bytes"
        differences.append(f"its tensors take {now_text}, not {then_text}")
    if have.identity != want.identity and not differences:
        differences.append(
            "the type or shape of some tensors changed (it was re-quantized or converted again)"
        )
    elif have.identity != want.identity:
        differences.append("its tensor table differs")
    if not differences:
        return None
    return (
        f"The model {layout.source} is not the one this profile was made for: "
        f"{'; '.join(differences)}. Plan it again, or point the profile at the original file."
    )


def require_model(profile: Profile, layout: ModelLayout) -> None:
    """Raise :class:`ProfileError` with :func:`check_model`'s sentence when the model changed."""
    problem = check_model(profile, layout)
    if problem:
        raise ProfileError(problem)


def plan_from_profile(profile: Profile, layout: ModelLayout) -> Plan:
    """The profile's placement and pins as a :class:`Plan` of ``layout``.

    Raises:
        ProfileError: the profile names tensors or cells the model lacks, or leaves loaded
            tensors of the model without a device.
    """
    loaded = {t.name for t in layout.tensors if t.loaded}
    known = {t.name for t in layout.tensors}
    unknown = sorted(set(profile.placement) - known)
    if unknown:
        raise ProfileError(
            f"The profile places {len(unknown)} tensor(s) that {layout.name} does not have "
            f"({_some(unknown)}); it was made for another model.",
            details="\n".join(unknown),
        )
    missing = sorted(loaded - set(profile.placement))
    if missing:
        raise ProfileError(
            f"The profile gives no device to {len(missing)} tensor(s) of {layout.name} "
            f"({_some(missing)}); it was made for another model.",
            details="\n".join(missing),
        )
    bad_cells = sorted(c for c in profile.pinned if c not in layout.cells)
    if bad_cells:
        layer, group = bad_cells[0]
        where = "the global row" if layer == GLOBAL_LAYER else f"layer {layer}"
        raise ProfileError(
            f"The profile pins a {group.label} cell in {where}, which {layout.name} does not "
            "have; it was made for another model."
        )
    return plan_from_mapping(layout, dict(profile.placement), profile.pinned)


def planner_from_profile(profile: Profile, layout: ModelLayout) -> tuple[Planner, Plan]:
    """A :class:`~moe_studio.core.plan.planning.Planner` (profile's rig and settings) and the
    profile's plan.

    Raises:
        ProfileError: see :func:`plan_from_profile`.
    """
    from moe_studio.core.plan.planning import Planner

    return Planner(layout, profile.rig, profile.settings), plan_from_profile(profile, layout)


def _some(names: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def save_profile_from_plan(
    path: str | os.PathLike[str], planner: Planner, plan: Plan, *, executable: str
) -> Profile:
    """Write ``plan`` as a new profile named after the file (``plan --save FILE``).

    Raises:
        ProfileError: the file cannot be written.
    """
    name = Path(path).name.removesuffix(PROFILE_SUFFIX)
    return save_profile(path, profile_from_plan(planner, plan, executable=executable, name=name))


# --- the library ---------------------------------------------------------------------------------


def default_library_folder() -> Path:
    """``<user data folder>/moe-studio/profiles`` (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "profiles"


def default_autosave_folder() -> Path:
    """``<user data folder>/moe-studio/autosave`` (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "autosave"


@dataclass(frozen=True, slots=True)
class ProfileSummary:
    """One line of the library: read from the profile file alone, no model opened.

    ``error`` is set (and the rest mostly empty) for a file that cannot be read as a profile.
    """

    path: Path
    title: str
    model_name: str = ""
    model_source: str = ""
    rig_name: str = ""
    dialect: str = ""
    modified: datetime | None = None
    fits: bool | None = None
    tokens_per_second: float | None = None
    error: str = ""


def summarize(path: str | os.PathLike[str]) -> ProfileSummary:
    """The library line of the profile at ``path`` (errors become :attr:`ProfileSummary.error`)."""
    p = Path(path)
    try:
        profile = load_profile(p)
    except ProfileError as exc:
        return ProfileSummary(p, p.name.removesuffix(PROFILE_SUFFIX), error=str(exc))
    return ProfileSummary(
        path=p,
        title=profile.title,
        model_name=profile.model.name,
        model_source=profile.model.source,
        rig_name=profile.rig.name,
        dialect=profile.dialect,
        modified=profile.modified,
        fits=profile.fits,
        tokens_per_second=profile.tokens_per_second,
    )


_UNSAFE_NAME = re.compile(r"[^\w.+-]+")


def _file_stem(name: str) -> str:
    stem = _UNSAFE_NAME.sub("-", name.strip()).strip("-.")
    return stem[:80] or "profile"


class ProfileLibrary:
    """The folder of saved profiles (``*.json``), by default :func:`default_library_folder`."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_library_folder()

    def paths(self) -> list[Path]:
        """Profile files in the folder (backups and temporaries left out), by name."""
        try:
            return sorted(
                p
                for p in self.folder.iterdir()
                if p.name.endswith(PROFILE_SUFFIX) and not p.name.startswith(".") and p.is_file()
            )
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ProfileError(f"Could not list the profiles in {self.folder}: {exc}.") from None

    def entries(self) -> list[ProfileSummary]:
        """A summary of every profile, most recently modified first (unreadable ones last)."""
        summaries = [summarize(p) for p in self.paths()]
        return sorted(
            summaries,
            key=lambda s: (
                s.modified is None,
                -s.modified.timestamp() if s.modified else 0.0,
                s.title.casefold(),
            ),
        )

    def path_for(self, name: str) -> Path:
        """Where a profile called ``name`` is saved (the name made safe as a file name)."""
        return self.folder / (_file_stem(name) + PROFILE_SUFFIX)

    def _free_path(self, name: str) -> Path:
        candidate = self.path_for(name)
        n = 2
        while candidate.exists():
            candidate = self.path_for(f"{name}-{n}")
            n += 1
        return candidate

    def _ensure_folder(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProfileError(
                f"Could not create the profile folder {self.folder}: {exc.strerror or exc}."
            ) from None

    def save(self, profile: Profile, path: str | os.PathLike[str] | None = None) -> Path:
        """Save into the library (at ``path``, else under the profile's title); the path used."""
        self._ensure_folder()
        target = Path(path) if path is not None else self.path_for(profile.title)
        save_profile(target, profile)
        return target

    def import_file(self, source: str | os.PathLike[str]) -> Path:
        """Copy a profile file into the library under a free name, after checking that it reads.

        The bytes are copied unchanged (an older schema stays as it is until saved).

        Raises:
            ProfileError: the file is not a usable profile, or cannot be copied.
        """
        src = Path(source)
        profile = load_profile(src)
        self._ensure_folder()
        target = self._free_path(profile.name or src.name.removesuffix(PROFILE_SUFFIX))
        atomic_write_bytes(target, src.read_bytes(), backup=False, error=ProfileError)
        return target

    def export_file(self, path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
        """Copy the library profile at ``path`` to ``dest`` (atomically, keeping a backup).

        Raises:
            ProfileError: the profile is unreadable or ``dest`` cannot be written.
        """
        src = Path(path)
        load_profile(src)
        try:
            data = src.read_bytes()
        except OSError as exc:
            raise ProfileError(f"Could not read {src}: {exc.strerror or exc}.") from None
        atomic_write_bytes(dest, data, error=ProfileError)


# --- autosave and recovery -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recovery:
    """Unsaved work found at start-up.

    Attributes:
        autosave_path: The autosave file (pass it to :func:`discard_autosave`).
        saved_path: The profile file the work belongs to; ``None`` for work never saved.
        autosaved: When it was autosaved.
        profile: The work, or ``None`` when the autosave cannot be read (see ``error``).
    """

    autosave_path: Path
    saved_path: Path | None
    autosaved: datetime | None
    profile: Profile | None
    error: str = ""


def autosave_path(
    folder: str | os.PathLike[str], saved_path: str | os.PathLike[str] | None
) -> Path:
    """The autosave file for the document saved at ``saved_path`` (``None``: untitled)."""
    if saved_path is None:
        key = "untitled"
    else:
        resolved = os.path.abspath(os.fspath(saved_path))
        key = hashlib.sha256(resolved.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return Path(folder) / f"autosave-{key}{PROFILE_SUFFIX}"


def autosave(
    profile: Profile,
    folder: str | os.PathLike[str],
    *,
    saved_path: str | os.PathLike[str] | None = None,
    now: datetime | None = None,
) -> Path:
    """Write unsaved work atomically to the autosave file of its document; returns that file.

    Raises:
        ProfileError: the autosave cannot be written.
    """
    target = autosave_path(folder, saved_path)
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProfileError(f"Could not create the autosave folder {folder}: {exc}.") from None
    document = {
        "format": AUTOSAVE_FORMAT,
        "saved_path": None if saved_path is None else os.path.abspath(os.fspath(saved_path)),
        "autosaved": _timestamp_text(now or _now()),
        "profile": _document(profile),
    }
    try:
        text = _dumps(document) + "\n"
    except ValueError as exc:
        raise ProfileError(f"Could not autosave to {target}: {exc}.") from None
    atomic_write_text(target, text, backup=False, error=ProfileError)
    return target


def _read_autosave(path: Path) -> Recovery:
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return Recovery(path, None, None, None, f"{path}: the autosave cannot be read ({exc}).")
    if not isinstance(raw, dict) or raw.get("format") != AUTOSAVE_FORMAT:
        return Recovery(path, None, None, None, f"{path} is not a MoE Studio autosave.")
    saved = raw.get("saved_path")
    saved_path = Path(saved) if isinstance(saved, str) and saved else None
    try:
        moment: datetime | None = _timestamp(raw.get("autosaved"), ("autosaved",))
    except _Mismatch:
        moment = None
    try:
        profile = from_json(json.dumps(raw.get("profile")), source=f"{path} (autosave)")
    except ProfileError as exc:
        return Recovery(path, saved_path, moment, None, str(exc))
    return Recovery(path, saved_path, moment, profile)


def pending_recovery(folder: str | os.PathLike[str]) -> list[Recovery]:
    """Autosaves newer than the file they belong to (or whose file is gone), newest first."""
    root = Path(folder)
    try:
        candidates = sorted(
            p
            for p in root.iterdir()
            if p.name.startswith("autosave-") and p.name.endswith(PROFILE_SUFFIX)
        )
    except OSError:
        return []
    out: list[Recovery] = []
    for path in candidates:
        recovery = _read_autosave(path)
        if recovery.saved_path is not None:
            try:
                if recovery.saved_path.stat().st_mtime_ns >= path.stat().st_mtime_ns:
                    continue  # saved after the autosave: nothing to recover
            except FileNotFoundError:
                pass
            except OSError:
                continue
        out.append(recovery)
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(out, key=lambda r: r.autosaved or oldest, reverse=True)


def discard_autosave(path: str | os.PathLike[str]) -> None:
    """Delete an autosave file (after a save, or when the user declines the recovery)."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove the autosave %s: %s", path, exc)
