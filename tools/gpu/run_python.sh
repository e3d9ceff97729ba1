#!/usr/bin/env bash
# The Python package on the device (issue 12), in ONE device call: builds flexattn._C against
# the CUDA library (sm_90a, prebuilt head dims 64 and 128), runs python/tests (the float64 checks
# on the GPU too, and test_cuda_vs_torch.py against PyTorch's own flex_attention), then
# bench/python_overhead.py: small shapes (the per-call overhead) and the benchmark shape (ours
# through Python vs through C++, issue 12: within 3%). Logs in $OUT (else ./out); table last.
#
#   tools/gpu/run_python.sh prepare   here, before the call: puts the nanobind wheel in .whl/
#                                     (the device has no network); carry [".whl"]
#   tools/gpu/run_python.sh           on the device (or any machine: the CUDA parts skip)
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
if [[ "${1:-}" == "prepare" ]]; then
  python3 -m pip download -q --no-deps nanobind -d .whl && ls .whl
  exit 0
fi
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUILD=${FLEXATTN_PY_BUILD:-$ROOT/build-py}
summary=()
step() { summary+=("$(printf '%-34s %s' "$1" "$2")"); }

if ! "$PY" -c "import nanobind" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --find-links .whl nanobind >"$OUT/py_build.log" 2>&1 ||
    "$PY" -m pip install -q nanobind >>"$OUT/py_build.log" 2>&1
fi
arch=()
command -v nvcc >/dev/null && arch=(-DCMAKE_CUDA_ARCHITECTURES=90a)
if cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLEXATTN_PYTHON=ON \
     -DFLEXATTN_BUILD_TESTS=OFF -DFLEXATTN_BUILD_TOOLS=OFF "${arch[@]}" \
     -DPython_EXECUTABLE="$(command -v "$PY")" >>"$OUT/py_build.log" 2>&1 &&
   cmake --build "$BUILD" --target _C -j "$(nproc)" >>"$OUT/py_build.log" 2>&1; then
  step build ok
else
  step build "FAILED (py_build.log)"
  printf '%s\n' "${summary[@]}"
  exit 1
fi
# The package's sources with the module just built beside them (a link, not an install).
ln -sf "$BUILD"/python/flexattn/_C*.so python/flexattn/
export PYTHONPATH=$ROOT/python FLEXATTN_CACHE_DIR=$BUILD/runtime_cache
(cd python/tests && "$PY" -m pytest -q -p no:cacheprovider) >"$OUT/py_tests.log" 2>&1
step "pytest python/tests" "$(tail -n 1 "$OUT/py_tests.log")"
dev=cpu
"$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null && dev=cuda
"$PY" bench/python_overhead.py --device "$dev" >"$OUT/py_bench.log" 2>&1
[[ $dev == cuda ]] && "$PY" bench/python_overhead.py --device cuda --L 16384 --D 128 \
  --heads 16 --calls 20 >>"$OUT/py_bench.log" 2>&1
step "overhead bench ($dev)" "see py_bench.log"
cat "$OUT/py_bench.log"
printf '%s\n' "${summary[@]}"
