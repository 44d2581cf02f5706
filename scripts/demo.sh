#!/usr/bin/env bash
# Set up (first run) and run the main job on the built-in demo. Opens the app on the demo
# project when a display is available; otherwise labels the demo headless into demo_labels.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ -z "${FEWSHOT_HEADLESS:-}" ]; then
  exec .venv/bin/fewshot-gui --demo "$@"
fi
echo "no display found (DISPLAY/WAYLAND_DISPLAY unset): running the headless demo instead"
exec .venv/bin/fewshot demo "$@"
