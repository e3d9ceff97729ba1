#!/usr/bin/env bash
# Installs what building and testing flexattn needs on a Debian/Ubuntu machine: a C++20 compiler,
# CMake, Ninja and GoogleTest. The CUDA toolkit is optional (the CUDA backend is built when nvcc
# is found) and is not installed here: it comes with the machine or from NVIDIA.
set -euo pipefail
need=()
command -v g++ >/dev/null || need+=(g++)
command -v cmake >/dev/null || need+=(cmake)
command -v ninja >/dev/null || need+=(ninja-build)
[ -e /usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake ] || \
  [ -e /usr/lib/cmake/GTest/GTestConfig.cmake ] || \
  [ -n "$(find /usr -name GTestConfig.cmake -print -quit 2>/dev/null)" ] || need+=(libgtest-dev libgmock-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "install_deps: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
