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
# The window (Qt's xcb platform plugin) needs a few X11 libraries that a bare Linux desktop may
# lack; the command line and the tests (offscreen) work without them.
if [ "$(uname -s)" = "Linux" ] && command -v ldconfig >/dev/null 2>&1; then
  libs=$(ldconfig -p 2>/dev/null || true)
  missing=""
  for pkg in libxcb-cursor0:libxcb-cursor.so.0 libxcb-icccm4:libxcb-icccm.so.4 libxcb-keysyms1:libxcb-keysyms.so.1; do
    grep -qF "${pkg#*:}" <<<"$libs" || missing="$missing ${pkg%%:*}"
  done
  if [ -n "$missing" ]; then
    echo "note: the app window needs the system packages$missing (Debian/Ubuntu: sudo apt-get install$missing);" >&2
    echo "      the fewshot command line and the tests run without them" >&2
  fi
fi
