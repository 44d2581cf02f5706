#!/usr/bin/env bash
# Create .venv (when missing) and install fewshot_gui with its test extra. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv ..."
  "$PY" -m venv .venv
fi
stamp=.venv/.fewshot_installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch/torchvision first, pinned to the builds this machine has on disk (pip picks them up
  # without downloading); pyproject.toml itself only asks for torch>=2.4 / torchvision>=0.19.
  if [ "$(uname -m)" = "x86_64" ]; then
    .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" \
      || .venv/bin/python -m pip install -q "torch>=2.4" "torchvision>=0.19"
  fi
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
# The window (Qt's xcb platform plugin) needs one system library beyond a bare Linux desktop;
# the command line and the tests (offscreen) work without it.
if [ "$(uname -s)" = "Linux" ] && command -v ldconfig >/dev/null 2>&1 \
    && ! ldconfig -p 2>/dev/null | grep -q "libxcb-cursor\.so\.0"; then
  echo "note: the app window needs the system package libxcb-cursor0 (Debian/Ubuntu: sudo apt-get install libxcb-cursor0);" >&2
  echo "      the fewshot command line and the tests run without it" >&2
fi
