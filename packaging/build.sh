#!/usr/bin/env bash
# Build the one-folder bundle dist/lora-studio/ with PyInstaller, then smoke-test it.
#
#   packaging/build.sh            # uses .venv (created by `make run`)
#   VENV=/path/to/env packaging/build.sh
#
# The bundle contains the torch build installed in that environment: build in an environment with
# a CUDA torch to get a bundle that trains on NVIDIA GPUs (see packaging/README.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
cd "$ROOT"

if [ ! -x "$PY" ]; then
    echo "error: no Python environment at $VENV; run \`make run\` first (or set VENV=...)" >&2
    exit 1
fi
if ! "$PY" -c "import PyInstaller" 2>/dev/null; then
    echo "== installing PyInstaller into $VENV"
    "$PY" -m pip install --quiet "pyinstaller>=6.22.3"
fi
if [ ! -f resources/icons/png/lora-studio-256.png ]; then
    echo "== rendering the icons"
    QT_QPA_PLATFORM=offscreen "$PY" packaging/render_icons.py
fi

echo "== building dist/lora-studio/ (several minutes)"
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$ROOT/dist" --workpath "$ROOT/build/pyinstaller" \
    packaging/pyinstaller/lora-studio.spec

APP="$ROOT/dist/lora-studio/lora-studio"
echo "== smoke test: $APP --version"
"$APP" --version
echo "== smoke test: $APP doctor"
# Exit code 1 means "training cannot work on this machine", which is a finding, not a broken
# bundle; anything else (a crash, a missing module) fails the build.
set +e
QT_QPA_PLATFORM=offscreen "$APP" doctor
code=$?
set -e
if [ "$code" -ne 0 ] && [ "$code" -ne 1 ]; then
    echo "error: the bundled doctor failed with exit code $code" >&2
    exit "$code"
fi
echo "== bundle size"
du -sh "$ROOT/dist/lora-studio"
