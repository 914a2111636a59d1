#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job on the built-in default data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${FEWSTEP_VENV:-.venv}/bin/fewstep" demo "$@"
