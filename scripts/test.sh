#!/usr/bin/env bash
# Set up (first run) and run the test suite: scripts/test.sh [PYTEST ARGS...]
# What the tests cache goes into a temporary folder removed at the end, never into the user's own
# cache folders: the embedding cache and ONNX exports (FEWSHOT_CACHE_DIR), the torch hub
# (TORCH_HOME), ONNX (ONNX_HOME) and every other per-user cache (XDG_CACHE_HOME). A variable that
# is already set is kept. ONNX Runtime telemetry is off.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-offscreen}
scratch=$(mktemp -d "${TMPDIR:-/tmp}/fewshot-tests.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export FEWSHOT_CACHE_DIR=${FEWSHOT_CACHE_DIR:-$scratch/fewshot_gui}
export TORCH_HOME=${TORCH_HOME:-$scratch/torch}
export ONNX_HOME=${ONNX_HOME:-$scratch/onnx}
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-$scratch/cache}
export ORT_DISABLE_TELEMETRY=${ORT_DISABLE_TELEMETRY:-1}
.venv/bin/python -m pytest -q "$@"
