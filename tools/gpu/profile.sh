#!/usr/bin/env bash
# Nsight Compute profile of one flexattn kernel in the GPU benchmark, in ONE device call:
# builds flexattn_bench_gpu for one head dim and sm_90a, profiles the fourth matching launch (after
# the warm-up), and writes the details page and the per-instruction (SASS) page to
# $OUT/profile.tar.gz (with the build log); tools/gpu/stall_summary.py reads it back here.
# The build goes to build-prof/.
#
#   tools/gpu/profile.sh KERNEL_REGEX [bench args...]
#   e.g. run(command="tools/gpu/profile.sh bwd_kernel_sm90 --variants noop --dims 128 --lens 16384
#                  --bwd-modes nd")
#
# --clock-control none: the card's clocks are left as they are (they are not ours to change).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
KERNEL=${1:?kernel name regex}
shift
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
BUILD=${FLEXATTN_GPU_BUILD:-$ROOT/build-prof}
D=${FLEXATTN_PROFILE_HEAD_DIM:-128}
WORK=$(mktemp -d /tmp/flexattn_prof.XXXXXX)
# An existing build tree (FLEXATTN_GPU_BUILD=build-gpu after run_all.sh) is reused as configured.
{ [[ -f $BUILD/CMakeCache.txt ]] ||
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLEXATTN_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90a -DFLEXATTN_CUDA_HEAD_DIMS="$D" -DFLEXATTN_BUILD_TESTS=OFF \
    > "$WORK/build.log" 2>&1; } &&
  cmake --build "$BUILD" --target flexattn_bench_gpu -j "$(nproc)" >> "$WORK/build.log" 2>&1 ||
  { grep -m 20 -E "error" "$WORK/build.log"; exit 1; }
BENCH=$BUILD/gpu/flexattn_bench_gpu
"$BENCH" --no-mask-build "$@" 2>&1 | tail -4
ncu --clock-control none --kernel-name "regex:$KERNEL" --launch-skip 3 --launch-count 1 \
  --set full --import-source no -f -o "$WORK/profile" "$BENCH" --no-mask-build --budget-s 5 "$@" \
  > "$WORK/ncu.log" 2>&1
tail -3 "$WORK/ncu.log"
ncu -i "$WORK/profile.ncu-rep" --page details > "$WORK/details.txt" 2>&1
ncu -i "$WORK/profile.ncu-rep" --page source --csv --print-source sass > "$WORK/sass.csv" 2>&1
grep -E "Duration|Registers Per|Compute \(SM\) Throughput|Issue Slots Busy|Local Memory Spilling Requests  " "$WORK/details.txt" | head -8
# One file back (the device returns few): the details page and the per-instruction table.
tar -czf "$OUT/profile.tar.gz" -C "$WORK" details.txt sass.csv ncu.log build.log
