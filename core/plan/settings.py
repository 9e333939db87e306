"""Run settings: everything besides the placement that shapes memory and the command line."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, fields, replace
from typing import Literal

from moe_studio.core.errors import CommandError
from moe_studio.core.plan import engine_builds as builds
from moe_studio.core.units import MiB

Dialect = Literal["ik", "mainline"]
DIALECTS: tuple[Dialect, ...] = ("ik", "mainline")
NumaMode = Literal["", "distribute", "isolate", "numactl"]


INT32_MAX = 2**31 - 1
# Every number a user can give, with the flag that sets it and the range the engines accept
# (llama-server's common/arg.cpp; ik_llama.cpp's -amb and -mla). ``None`` (engine default) is
# always accepted.
LIMITS: dict[str, tuple[str, int, int]] = {
    "ctx": ("--ctx", 0, INT32_MAX),  # 0: the model's training context
    "batch": ("--batch", 1, INT32_MAX),
    "ubatch": ("--ubatch", 1, INT32_MAX),
    "parallel": ("--parallel", 1, 4096),
    "threads": ("--threads", 1, 65536),
    "threads_batch": ("--threads-batch", 1, 65536),
    "port": ("--port", 1, 65535),
    "mla": ("-mla", 0, 3),
    "amb": ("--amb", 0, INT32_MAX),
    "engine_build": ("--engine-build", 0, INT32_MAX),
    "gpu_overhead": ("gpu overhead", 0, 2**50),
    "reserve": ("reserve", 0, 2**50),
}
MAX_HOST = 253  # the longest DNS name


def check_number(name: str, value: object) -> None:
    """Refuse ``value`` for the setting ``name`` unless the engine accepts it.

    Raises:
        CommandError: not a whole number in the range (the message names the flag and range).
    """
    flag, low, high = LIMITS[name]
    if value is None:
        return
    shown = repr(value) if not isinstance(value, int) else str(value)
    if len(shown) > 24:
        shown = shown[:21] + "..."
    if isinstance(value, bool) or not isinstance(value, int):
        raise CommandError(f"{flag} {shown}: a whole number is needed ({low}..{high}).")
    if not low <= value <= high:
        raise CommandError(f"{flag} {shown} is out of range: the engine accepts {low}..{high}.")


def check_host(value: object) -> None:
    """Refuse an empty, spaced or absurdly long ``--host``.

    Raises:
        CommandError: the message names ``--host`` and what it needs.
    """
    if not isinstance(value, str) or not value.strip():
        raise CommandError("--host is empty: give an address to listen on, e.g. 127.0.0.1.")
    if len(value) > MAX_HOST or any(c.isspace() for c in value):
        raise CommandError(
            f"--host {value[:40]!r}: an address has no spaces and at most {MAX_HOST} characters."
        )


def check_extra_args(value: object) -> None:
    """Each extra argument must be one string.

    Raises:
        CommandError: something else got in (``--extra=--`` used to put a list there).
    """
    if not isinstance(value, tuple | list) or not all(isinstance(v, str) for v in value):
        raise CommandError(
            "--extra takes one argument per use, e.g. --extra=--mlock or --extra --mlock."
        )


_LOOPBACK = ("127.", "::1", "localhost")
MAX_API_KEY = 256
API_KEY_AUTO = "auto"


def check_api_key(value: object) -> None:
    """Refuse an ``--api-key`` that the engines or an HTTP header would change.

    llama.cpp splits ``--api-key`` at commas (several keys), the key travels in an
    ``Authorization: Bearer`` header (printable ASCII, no blanks), and an argument starting with
    ``-`` reads as an option to tools that parse the command again. Empty means no key.

    Raises:
        CommandError: the message names ``--api-key`` and what it needs.
    """
    if not isinstance(value, str):
        raise CommandError("--api-key must be text.")
    if not value:
        return
    if (
        len(value) > MAX_API_KEY
        or value.startswith("-")
        or not all("!" <= c <= "~" and c != "," for c in value)
    ):
        raise CommandError(
            f"--api-key: use 1..{MAX_API_KEY} printable ASCII characters without blanks or "
            "commas, not starting with '-' (or --api-key auto to generate one)."
        )


def generate_api_key() -> str:
    """A new random API key: 32 URL-safe characters (192 bits), never starting with ``-``."""
    while True:
        key = secrets.token_urlsafe(24)
        if not key.startswith("-"):
            return key


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    return host.startswith(_LOOPBACK) or host == "[::1]"


def exposure_warning(host: str, api_key: str = "") -> str | None:
    """A warning when ``host`` makes llama-server listen beyond this machine without an API key,
    else None."""
    if is_loopback(host) or api_key:
        return None
    everywhere = host in ("0.0.0.0", "::", "[::]", "*")
    where = "on every network interface" if everywhere else f"on {host}"
    return (
        f"--host {host}: llama-server will listen {where} with no authentication; anyone who "
        "can reach this machine can use the model (use 127.0.0.1, or --api-key auto)"
    )


def validate_settings(settings: Settings) -> None:
    """Check every number and the host in ``settings`` (called once, when they are built)."""
    for name in LIMITS:
        check_number(name, getattr(settings, name))
    check_host(settings.host)
    check_api_key(settings.api_key)
    check_extra_args(settings.extra_args)


@dataclass(frozen=True, slots=True)
class Settings:
    """Options of one ``llama-server`` run.

    ``None`` means "the engine's default" and is not written to the command line.
    """

    dialect: Dialect = "ik"
    ctx: int = 32768
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    batch: int = 2048
    ubatch: int = 512
    flash_attn: bool = True
    parallel: int = 1
    threads: int | None = None
    threads_batch: int | None = None
    numa: NumaMode = ""
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str = ""  # --api-key; empty: none (kept in the profile, sent by the health poll)
    no_mmap: bool = False
    metrics: bool = False
    # ik_llama.cpp only
    mla: int | None = None  # -mla 0..3; engine default 3
    amb: int | None = None  # -amb MiB; engine default 256
    rtr: bool = False
    split_mode_graph: bool = False
    merge_qkv: bool = False
    # Estimator knobs (not on the command line)
    # The engine build the plan is for, as its --version prints it (ik: the commit count, e.g.
    # 4840); None: the newest. Old ik builds have other defaults, flag syntax and buffers
    # (core/plan/engine_builds.py).
    engine_build: int | None = None
    gpu_overhead: int = 450 * MiB  # CUDA context, cuBLAS workspace, pool slack per GPU
    reserve: int = 256 * MiB  # memory kept free on every GPU-like device
    extra_args: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        validate_settings(self)

    @property
    def is_ik(self) -> bool:
        return self.dialect == "ik"

    @property
    def effective_mla(self) -> int:
        if self.mla is not None:
            return self.mla
        return 0 if self.is_ik and not self.has(builds.MLA_DEFAULT_3) else 3

    @property
    def effective_amb(self) -> int:
        if self.amb is not None:
            return self.amb
        return 0 if self.is_ik and not self.has(builds.AMB_DEFAULT_256) else 256

    def has(self, change: builds.BuildChange) -> bool:
        """Whether the ik build these settings are for includes ``change`` (mainline: no)."""
        return self.is_ik and builds.has(self.engine_build, change)

    def has_mainline(self, change: builds.BuildChange) -> bool:
        """Whether the mainline build these settings are for includes ``change`` (one of
        :data:`builds.MAINLINE_CHANGES`; ik: no)."""
        return not self.is_ik and builds.has(self.engine_build, change)

    @property
    def kv_padding(self) -> int:
        """Context padding: 256 with flash attention, 32 without (ik, and mainline before
        #16812); mainline from #16812 on did not pad, and pads to 256 again since #17046."""
        if self.has_mainline(builds.ML_CTX_PAD_256):
            return 256
        if self.has_mainline(builds.ML_NO_CTX_PAD):
            return 1
        return 256 if self.flash_attn else 32

    @property
    def kv_size(self) -> int:
        """Cells of the KV cache after the engine pads the context."""
        pad = self.kv_padding
        return -(-self.ctx // pad) * pad

    def for_dialect(self, dialect: Dialect) -> Settings:
        """These settings for ``dialect``: switching to mainline turns the ik-only options off
        (``-mla``, ``-amb``, ``-rtr``, ``-sm graph``, ``--merge-qkv``) and replaces ik-only cache
        types with q8_0, so the command can be built. A build number belongs to one engine's
        history, so switching forgets it (the newest build of the other engine)."""
        build = self.engine_build if dialect == self.dialect else None
        if dialect == "ik":
            return replace(self, dialect=dialect, engine_build=build)
        ik_only_cache = ("q6_0", "q8_kv")
        return replace(
            self,
            dialect=dialect,
            engine_build=build,
            mla=None,
            amb=None,
            rtr=False,
            split_mode_graph=False,
            merge_qkv=False,
            cache_type_k="q8_0"
            if self.cache_type_k.lower() in ik_only_cache
            else self.cache_type_k,
            cache_type_v="q8_0"
            if self.cache_type_v.lower() in ik_only_cache
            else self.cache_type_v,
        )

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}
