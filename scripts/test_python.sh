#!/usr/bin/env bash
# Builds and installs the Python package from this checkout (`pip install .`) into the venv of
# scripts/python_env.sh and runs its tests (python/tests) against the installed copy.
# FLEXATTN_PY_CUDA=OFF builds the package without the CUDA backend (CI: the C++ build has
# already put every CUDA source through nvcc); default AUTO, as a user's `pip install .`.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/python_env.sh)
# --no-build-isolation: the build tools are in the venv already (no second download).
"$py" -m pip install -q --no-build-isolation . \
  -Ccmake.define.FLEXATTN_CUDA="${FLEXATTN_PY_CUDA:-AUTO}" -Cbuild-dir=build/python-wheel
cd python/tests
# From the tests' own directory: `import flexattn` finds the installed package, not python/.
exec "../../$py" -m pytest -q -p no:cacheprovider "$@"
