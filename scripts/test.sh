#!/usr/bin/env bash
# Builds flexattn (the CUDA sources too when nvcc is present) and runs the test suite.
#   scripts/test.sh              Release build in build/, every CTest test, then the Python
#                                package's tests (scripts/test_python.sh: pip install . into
#                                build/venv, pytest python/tests)
#   scripts/test.sh --sanitize   ASan+UBSan build of the core tests and a short fuzz run
#                                (label fuzz, tests/fuzz/) in build-asan/ (CPU only)
# FLEXATTN_CUDA_ARCHS (e.g. "90a", or "80;90a"): the CUDA architectures of the Release build,
# when set; else the library's default (CMakeLists.txt). CI sets it (.ci/run says why).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
jobs=$(nproc)
if [ "${1:-}" = "--sanitize" ]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLEXATTN_CUDA=OFF \
        -DFLEXATTN_SANITIZE=ON -DFLEXATTN_BUILD_TOOLS=OFF >/dev/null
  cmake --build build-asan --target flexattn_tests fuzz_attention -j "$jobs"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  exec ctest --test-dir build-asan -L 'core|fuzz' --output-on-failure -j "$jobs"
fi
arch_args=()
[[ -n "${FLEXATTN_CUDA_ARCHS:-}" ]] && arch_args=("-DCMAKE_CUDA_ARCHITECTURES=$FLEXATTN_CUDA_ARCHS")
# The Python module is built here too, against this build's library (with its CUDA backend when
# nvcc is found), so CI compiles the binding in both configurations.
py=$(scripts/python_env.sh)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${arch_args[@]}" -DFLEXATTN_PYTHON=ON \
      -DPython_EXECUTABLE="$PWD/$py" >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"
exec scripts/test_python.sh
