"""Profiles: a plan saved with everything needed to reopen, re-check and launch it.

A :class:`Profile` is a value: the model it was made for (path or catalog spec plus an identity,
so a changed or re-quantized file is noticed), the device of every loaded tensor and the pinned
cells, the run settings, the rig it was planned for, the engine and its dialect, free notes,
benchmark results, timestamps and the MoE Studio version that wrote it.

On disk it is versioned JSON (schema 1, see ``migrations``)::

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

A profile planned from a remote model (``moe-studio plan hf://…``) has that URL as ``model.path``
and also under ``model.url``, which stays when the profile is bound to the downloaded file
(``launch PROFILE --gguf FILE``, same identity); profiles of local models have no ``url``.

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
(:mod:`moe_studio.core.fsutil`). Plans become profiles and back in ``plans``; the folder of saved
profiles and the autosave are in ``library``; older schemas are upgraded by ``migrations``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from moe_studio.core import __version__
from moe_studio.core.errors import ProfileError
from moe_studio.core.fsutil import (
    NotARegularFileError,
    atomic_write_text,
    backup_path,
    read_regular_file,
)
from moe_studio.core.gguf.model import Cell, ModelLayout
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, TensorGroup
from moe_studio.core.hardware.devices import Rig
from moe_studio.core.plan.settings import Dialect, Settings
from moe_studio.core.profiles import migrations
from moe_studio.core.profiles.migrations import Json

log = logging.getLogger(__name__)

FORMAT = "moe-studio-profile"
AUTOSAVE_FORMAT = "moe-studio-autosave"
PROFILE_SUFFIX = ".json"
APP_NAME = "moe-studio"
# Keys of a benchmark entry the library reads as the generation speed (tokens/s), in order.
BENCH_SPEED_KEYS = ("tg_tokens_per_second", "tokens_per_second")

KeyPath = tuple[str | int, ...]
# A profile is a few kilobytes; anything past this is not one (or is /dev/zero).
_MAX_PROFILE_FILE = 16 * 1024 * 1024


def is_remote_source(source: str) -> bool:
    """Whether a model source is remote (``hf://…``, ``https://…``), not a path or catalog."""
    return source.startswith(("hf://", "https://", "http://"))


def now_utc() -> datetime:
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
        url: Where the model was planned from when that was a remote model (``hf://…`` or an
            https URL); kept when the profile is bound to the downloaded file.
    """

    source: str
    architecture: str
    tensor_count: int
    total_bytes: int
    identity: str
    name: str = ""
    url: str = ""

    @classmethod
    def of(cls, layout: ModelLayout) -> ModelRef:
        return cls(
            source=layout.source,
            architecture=layout.architecture,
            tensor_count=len(layout.tensors),
            total_bytes=layout.total_bytes,
            identity=layout.identity,
            name=layout.name,
            url=layout.source if is_remote_source(layout.source) else "",
        )

    @property
    def is_remote(self) -> bool:
        """Whether the profile still names a remote model (no local file bound yet)."""
        return is_remote_source(self.source)

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
    created: datetime = field(default_factory=now_utc)
    modified: datetime = field(default_factory=now_utc)
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
        return replace(self, modified=now or now_utc())


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


class Mismatch(Exception):  # noqa: N818 - internal signal, always turned into a ProfileError
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
            raise Mismatch(path, "an object", value)
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
        """``raw`` as the Python value of type ``hint``; raises :class:`Mismatch`."""
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
                except Mismatch as exc:
                    if exc.path != path:
                        raise
            else:
                for arm in arms:
                    try:
                        return self.value(raw, arm, path)
                    except Mismatch:
                        continue
            raise Mismatch(path, _expected(hint), raw)
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
        raise Mismatch(path, _expected(hint), raw)

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


def timestamp_text(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def read_timestamp(raw: Json, path: KeyPath) -> datetime:
    if not isinstance(raw, str):
        raise Mismatch(path, "a date and time as text (2025-05-01T09:30:00Z)", raw)
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise Mismatch(path, "a date and time as text (2025-05-01T09:30:00Z)", raw) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


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
    except ValueError as exc:  # a number of over 4,300 digits
        raise ProfileError(f"{source} is not a profile: {exc}.") from None
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
    if schema > migrations.SCHEMA_VERSION:
        writer = raw.get("written_by")
        by = f"MoE Studio {writer}" if isinstance(writer, str) and writer else "a newer MoE Studio"
        raise ProfileError(
            f"{source} was written by {by} in profile format {schema}; this MoE Studio "
            f"({__version__}) reads format {migrations.SCHEMA_VERSION} and older. Update MoE "
            "Studio to open it; the file was not changed."
        )
    try:
        document, notes = migrations.migrate(raw)
    except ProfileError as exc:
        raise ProfileError(f"{source}: {exc}", details=exc.details) from None
    try:
        profile = _read_document(document, source)
    except Mismatch as exc:
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
    "url": "url",
}
# Written only when set: a profile of a local model looks as it always did.
_OPTIONAL_MODEL_KEYS = ("name", "url")
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
    created = read_timestamp(r.require(doc, "created", ()), ("created",))
    modified = read_timestamp(r.require(doc, "modified", ()), ("modified",))

    model_raw = r.obj(r.require(doc, "model", ()), ("model",))
    r.keep_unknown(model_raw, ("model",), _MODEL_KEYS)
    hints = _hints(ModelRef)
    model_values: dict[str, Any] = {}
    for key, attr in _MODEL_KEYS.items():
        if key in _OPTIONAL_MODEL_KEYS and key not in model_raw:
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
        raise Mismatch(("benchmarks",), "a list of objects", bench_raw)
    benchmarks = tuple(r.obj(b, ("benchmarks", i)) for i, b in enumerate(bench_raw))

    pinned_raw = doc.get("pinned", [])
    if not isinstance(pinned_raw, list):
        raise Mismatch(("pinned",), "a list of [layer, group] pairs", pinned_raw)
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
            raise Mismatch(
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
            raise Mismatch(("placement", tensor), 'a device name such as "CUDA0"', device)
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
        data = read_regular_file(p, limit=_MAX_PROFILE_FILE)
    except FileNotFoundError:
        raise ProfileError(f"{p} does not exist.") from None
    except IsADirectoryError:
        raise ProfileError(f"{p} is a folder, not a profile.") from None
    except NotARegularFileError as exc:
        raise ProfileError(f"{p} is {exc.strerror}; choose a profile file.") from None
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


def to_document(profile: Profile) -> dict[str, Json]:
    settings = _json_value(profile.settings)
    del settings["dialect"]
    doc: dict[str, Json] = {
        "format": FORMAT,
        "schema": migrations.SCHEMA_VERSION,
        "written_by": __version__,
        "name": profile.name,
        "created": timestamp_text(profile.created),
        "modified": timestamp_text(profile.modified),
        "model": {
            key: getattr(profile.model, attr)
            for key, attr in _MODEL_KEYS.items()
            if key != "url" or profile.model.url
        },
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


def dumps(value: Json, indent: int = 0) -> str:
    """Indented JSON with every list of plain values on one line (cpus, flags, pinned pairs).

    Raises:
        ValueError: NaN or infinity (not JSON).
    """
    if isinstance(value, dict) and value:
        pad = " " * (indent + 1)
        items = [
            f"{pad}{json.dumps(str(k), ensure_ascii=False)}: {dumps(v, indent + 1)}"
            for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and any(isinstance(v, dict | list) and v for v in value):
        pad = " " * (indent + 1)
        items = [pad + dumps(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def to_json(profile: Profile) -> str:
    """The profile as JSON text of the current schema (keys it did not know written back).

    Raises:
        ValueError: a benchmark entry holds NaN or infinity.
    """
    return dumps(to_document(profile)) + "\n"


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
