#!/usr/bin/env bash
# Makes the Python environment the package's build and tests use: a venv in build/venv (or $1)
# with PyTorch, NumPy, pytest and the build tools (nanobind, scikit-build-core), from PyPI.
# Prints the venv's python. Idempotent: an existing venv with everything is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-build/venv}
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  if ! "$py" -m venv "$venv" >/dev/null 2>&1; then
    echo "python_env: installing python3-venv" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv python3-dev >&2
    rm -rf "$venv"
    "$py" -m venv "$venv"
  fi
fi
if ! "$venv/bin/python" -c "import torch, numpy, pytest, nanobind, scikit_build_core" 2>/dev/null; then
  echo "python_env: installing torch, numpy, pytest, nanobind, scikit-build-core into $venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q torch numpy pytest "nanobind>=2.0" "scikit-build-core>=0.10" >&2
fi
echo "$venv/bin/python"
