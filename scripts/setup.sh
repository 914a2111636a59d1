#!/usr/bin/env bash
# Create .venv (or $FEWSTEP_VENV) and install fewstep with its extras.
# On a machine without an NVIDIA GPU the CPU build of torch is installed first, so pip never pulls
# the CUDA wheels; a Python that already has torch is reused (the venv sees its site-packages).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FEWSTEP_VENV:-.venv}"
PY="${PYTHON:-python3}"
TORCH_CPU="${FEWSTEP_TORCH_CPU:-torch==2.13.0}"
if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] reusing the torch of $PY"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] GPU found: installing the default (CUDA) torch"
    "$VPY" -m pip install -q torch
  else
    echo "[setup] no GPU: installing the CPU build $TORCH_CPU"
    "$VPY" -m pip install -q "$TORCH_CPU"
  fi
fi
"$VPY" -m pip install -q -e ".[${FEWSTEP_EXTRAS:-test,all}]" 2>&1 | grep -v "^WARNING: Location" || true
"$VPY" -c "import fewstep, torch; print('[setup] fewstep', fewstep.__version__, 'torch', torch.__version__)"
