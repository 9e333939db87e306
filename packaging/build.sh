#!/usr/bin/env bash
# Build the one-folder bundle of MoE Studio with PyInstaller, then check that it runs.
#
#   packaging/build.sh          (or: make package)
#
# Needs PyInstaller in the virtual environment: .venv/bin/python -m pip install -e '.[package]'
# Environment: PYTHON (default .venv/bin/python), DIST (default dist/), WORK (build/pyinstaller/).
# The bundle is DIST/moe-studio/; copy or archive that whole folder. A build takes one to two
# minutes and the folder is a few hundred MB (Qt).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
DIST="${DIST:-$ROOT/dist}"
WORK="${WORK:-$ROOT/build/pyinstaller}"

if ! "$PYTHON" -c "import PyInstaller" 2>/dev/null; then
    echo "build.sh: PyInstaller is not installed for $PYTHON;" \
        "run: $PYTHON -m pip install -e '$ROOT[package]'" >&2
    exit 1
fi

start=$(date +%s)
"$PYTHON" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" "$ROOT/packaging/moe-studio.spec"
seconds=$(($(date +%s) - start))

BUNDLE="$DIST/moe-studio"
APP="$BUNDLE/moe-studio"
[ -x "$APP.exe" ] && APP="$APP.exe"
size="$(du -sh "$BUNDLE" | cut -f1)"
echo "Built $BUNDLE ($size) in ${seconds} s; the program is $APP"

echo "Checking the bundle:"
"$APP" --version
# The CLI with a catalog model and a rig preset (the shipped resources are found), a profile
# saved and exported.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
"$APP" plan catalog:qwen3-30b-a3b --rig demo-24g-256g --save "$scratch/p.json" >/dev/null
"$APP" export "$scratch/p.json" --to llama-swap >/dev/null
echo "  plan --save with a rig preset, export to llama-swap: ok"
# The window, offscreen, with the demo model.
QT_QPA_PLATFORM=offscreen "$APP" --self-test
echo "The bundle works: $BUNDLE"
