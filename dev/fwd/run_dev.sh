#!/bin/bash
# One device call: build the checks (one binary per head dim, in parallel) and the bench, run them,
# then (SDPA=1) time SDPA on the same shapes. Usage: bash dev/fwd/run_dev.sh [check|bench|all]
set -u
MODE=${1:-all}
OUTDIR=${OUT:-/tmp/out}; mkdir -p $OUTDIR /tmp/fb
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
NV="nvcc -std=c++20 -O3 -arch=sm_90 --expt-relaxed-constexpr -Iinclude"
t0=$(date +%s)
pids=()
if [ "$MODE" != bench ]; then
  for dt in 32:__nv_bfloat16 64:__half 96:__nv_bfloat16 128:__nv_bfloat16 128h:__half 192:__half 256:__nv_bfloat16; do
    d=${dt%%:*}; t=${dt#*:}; dn=${d%h}
    $NV -DDEV_CHECK_D=$dn -DDEV_T=$t dev/fwd/fwd_dev.cu -o /tmp/fb/check$d > /tmp/fb/build$d.log 2>&1 &
    pids+=($!)
  done
fi
if [ "$MODE" != check ]; then
  $NV -DDEV_BENCH dev/fwd/fwd_dev.cu -o /tmp/fb/bench > /tmp/fb/buildb.log 2>&1 & pids+=($!)
fi
for p in "${pids[@]}"; do wait $p || echo "BUILD FAILED (pid $p)"; done
cat /tmp/fb/build*.log | grep -E "error" | head -20
echo "build $(( $(date +%s) - t0 )) s"
if [ "$MODE" != bench ]; then
  for d in 32 64 96 128 128h 192 256; do
    timeout 120 /tmp/fb/check$d > /tmp/fb/check$d.txt 2>&1; echo "rc=$?" >> /tmp/fb/check$d.txt
    grep -E "FAIL|ALL OK|SOME|error|rc=[1-9]" /tmp/fb/check$d.txt | head -8
  done
  cat /tmp/fb/check*.txt > $OUTDIR/checks.txt
fi
if [ "$MODE" != check ]; then
  /tmp/fb/bench 128 16384 1 16 2>&1 | tee $OUTDIR/bench.txt
  /tmp/fb/bench 64 16384 1 16 2>&1 | tee -a $OUTDIR/bench.txt
  /tmp/fb/bench 128 8192 2 16 2>&1 | tee -a $OUTDIR/bench.txt
  /tmp/fb/bench 128 2048 8 16 2>&1 | tee -a $OUTDIR/bench.txt
  if [ "${SDPA:-0}" = 1 ]; then
    python3 dev/fwd/sdpa_ref.py 128 16384 2>&1 | tee -a $OUTDIR/bench.txt
    python3 dev/fwd/sdpa_ref.py 64 16384 2>&1 | tee -a $OUTDIR/bench.txt
    python3 dev/fwd/sdpa_ref.py 128 2048 8 2>&1 | tee -a $OUTDIR/bench.txt
  fi
fi
