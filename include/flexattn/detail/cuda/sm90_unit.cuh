// Whether the translation unit that includes this header can run the Hopper kernels.
//
// wgmma needs sm_90a machine code, which nvcc emits only for `-gencode arch=compute_90a,
// code=sm_90a` (CMake: CMAKE_CUDA_ARCHITECTURES containing 90a; the library builds 80;90a).
// Host code cannot see which device architectures its own file was compiled for, so the answer
// is asked of the device: a variable set by the device compiler, read back once per device.
//
// HAZARD - everything here has internal linkage on purpose. A user's .cu compiled for sm_90
// (without the a) and the library compiled for sm_90a both instantiate the same kernel templates;
// if those merged across translation units, a launcher could test one file's flag and run the
// other file's kernel, whose body is empty without sm_90a. Any kernel template instantiated in two
// files with different architecture lists has the same problem (the linker keeps one host stub,
// the CUDA runtime one file's device code for it), and so has a launcher template with external
// linkage that names this file's internal flag. Therefore EVERY kernel template and every
// launcher (launch_fwd.cuh, launch_bwd.cuh) takes a unit tag as a template argument: ThisUnit in
// a user's .cu, which makes each file's instantiations its own; LibraryUnit (external linkage,
// src/cuda/prebuilt_head_dims.h, not visible to users) in the library's prebuilt files, which
// share their instantiations among themselves (one build, one architecture list).
#pragma once

#include <cuda_runtime.h>

#include <atomic>

#include "check.cuh"
#include "kernel_ref.cuh"

namespace flexattn::detail::cuda {
namespace {

struct ThisUnit {};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ int this_unit_has_sm90a = 1;
#else
__device__ int this_unit_has_sm90a = 0;
#endif

// True on a compute-capability 9.0 GPU when this file carries sm_90a code for it, unless the
// environment variable FLEXATTN_CUDA_SM80 is set to 1 (tests and benchmarks use it to run the
// sm80 kernels on a Hopper GPU too).
bool unit_runs_sm90a() {
  if (sm80_forced()) return false;
  int dev = 0;
  FLEXATTN_CUDA_CHECK(cudaGetDevice(&dev));
  constexpr int kMaxDevices = 64;
  static std::atomic<int> known[kMaxDevices];  // 0 unknown, 1 no, 2 yes
  if (dev < kMaxDevices) {
    if (const int k = known[dev].load(std::memory_order_relaxed); k != 0) return k == 2;
  }
  int major = 0, minor = 0;
  FLEXATTN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  FLEXATTN_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  int flag = 0;
  if (major == 9 && minor == 0) {
    FLEXATTN_CUDA_CHECK(cudaMemcpyFromSymbol(&flag, this_unit_has_sm90a, sizeof flag));
  }
  if (dev < kMaxDevices) known[dev].store(flag == 1 ? 2 : 1, std::memory_order_relaxed);
  return flag == 1;
}

// What the launchers ask: whether Unit's Hopper kernels can run on the current device. A runtime
// unit (kernel_ref.cuh) answers for its own kernels; FLEXATTN_CUDA_SM80=1 turns them off too.
// Here, with internal linkage, for the same reason as unit_runs_sm90a (see the top).
template <class Unit>
bool unit_has_sm90a() {
  if constexpr (RuntimeKernelUnit<Unit>) {
    return !sm80_forced() && Unit::runs_sm90a();
  } else {
    return unit_runs_sm90a();
  }
}

}  // namespace
}  // namespace flexattn::detail::cuda
