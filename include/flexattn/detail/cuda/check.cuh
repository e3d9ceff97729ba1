// CUDA error handling: every runtime call and every launch is checked and turned into
// flexattn::Error, so a bad launch never passes silently as exit code 0.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "../../tensor.h"
#include "launch_record.h"

namespace flexattn::detail::cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    // A kernel the dQ-order watchdog stopped says why (launch_record.h); "" otherwise.
    throw Error(std::string("flexattn: CUDA error in ") + what + ": " + cudaGetErrorString(e) +
                dq_stall_message());
  }
}

// The kernels move rows in 16-byte chunks (cp.async, bulk copies, vector loads and stores): every
// base pointer 16-byte aligned and the batch, head and row strides multiples of 8 elements (the
// last stride is 1, checked by the argument layer). `fn` names the called function.
inline void check_vector_layout(const TensorView& t, const char* fn, const char* name) {
  bool ok = reinterpret_cast<uintptr_t>(t.data) % 16 == 0;
  for (int d = 0; d < 3; ++d) ok = ok && (t.stride[d] % 8 == 0 || t.shape[d] == 1);
  if (!ok) {
    throw Error(std::string(fn) + " on Device::cuda needs " + name +
                " 16-byte aligned with its batch, head and row strides multiples of 8 elements");
  }
}

// Whether the environment variable FLEXATTN_CUDA_SM80 is 1: tests and benchmarks set it to run
// the sm80 kernels (and the decode kernel's cp.async path) on a Hopper GPU too.
inline bool sm80_forced() {
  const char* e = std::getenv("FLEXATTN_CUDA_SM80");
  return e != nullptr && e[0] == '1';
}

// The attention kernels need sm80 or newer; returns the device's compute capability major. The
// answer is kept per device (a driver query per call would cost a decode step microseconds).
inline int check_device_arch() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices] = {};
  int dev = 0, major = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  if (dev < kMaxDevices) {
    if (const int known = cached[dev].load(std::memory_order_relaxed)) return known;
  }
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
        "cudaDeviceGetAttribute");
  if (major < 8) {
    throw Error("flex_attention on Device::cuda needs an sm80 or newer GPU (Ampere, Ada, Hopper); "
                "this one has compute capability " + std::to_string(major) + ".x");
  }
  if (dev < kMaxDevices) cached[dev].store(major, std::memory_order_relaxed);
  return major;
}

}  // namespace flexattn::detail::cuda

#define FLEXATTN_CUDA_CHECK(expr) ::flexattn::detail::cuda::check((expr), #expr)
// After a <<<...>>> launch: catches bad configurations (too much shared memory, bad grid).
#define FLEXATTN_CUDA_CHECK_LAUNCH(name) ::flexattn::detail::cuda::check(cudaGetLastError(), name)
