#!/usr/bin/env bash
# Builds the flexattn CLI and runs its demo (CPU; the GPU too when one is present).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target flexattn_cli
exec build/flexattn demo
