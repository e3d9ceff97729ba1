// What a runtime variant's generated functor reads its captured tensors through (runtime.h):
// the same code on the CPU (the host compiler's shared object) and the GPU (NVRTC).
//
// A functor holds kMaxCaptures Slots, filled per call by the library from the bound tensors, so
// one compiled kernel serves every binding: only the dtype and the rank of each capture are part
// of the code (they pick the accessor type below). The host proxies that the launchers pass by
// value (detail/runtime/proxies.h) have exactly this layout.
#pragma once

#include "../../config.h"
#include "../device_std.h"

namespace flexattn::detail::runtime {

inline constexpr int kMaxCaptures = 8;
inline constexpr int kMaxCaptureRank = 4;

struct Slot {
  const void* data;
  int64_t stride[kMaxCaptureRank];  // elements
  int32_t size[kMaxCaptureRank];
  float* grad;  // a learnable capture's f32 gradient (contiguous, same shape); else null
};

// A runtime functor's state: the generated Score / Mask types derive from it and add only member
// functions, so a ModState filled by the library is their whole value.
struct ModState {
  Slot slot[kMaxCaptures];
};

// Storage tags: how an element is stored, and what a read returns (float for the float dtypes,
// int for i32).
struct F32 {};
struct F16 {};
struct Bf16 {};
struct I32 {};

FLEXATTN_HD inline float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// IEEE half -> float, exact (subnormals, inf and NaN included).
FLEXATTN_HD inline float half_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    exp = 113;  // 127 - 15 + 1: normalise the subnormal
    while ((man & 0x400u) == 0) man <<= 1, --exp;
    man &= 0x3ffu;
    return bits_to_float(sign | (exp << 23) | (man << 13));
  }
  return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
#endif
}

template <class Tag>
FLEXATTN_HD inline auto load_element(const void* base, int64_t off) {
  if constexpr (fstd::is_same_v<Tag, F32>) {
    return static_cast<const float*>(base)[off];
  } else if constexpr (fstd::is_same_v<Tag, I32>) {
    return static_cast<int>(static_cast<const int32_t*>(base)[off]);
  } else if constexpr (fstd::is_same_v<Tag, Bf16>) {
    return bits_to_float(static_cast<uint32_t>(static_cast<const uint16_t*>(base)[off]) << 16);
  } else {
    return half_to_float(static_cast<const uint16_t*>(base)[off]);
  }
}

// A read-only view of one captured tensor of rank kRank: t[i] (rank 1), t(i, j, ...) (any rank,
// one index per dimension), t.size(d). No bounds checks: an index outside the tensor reads
// outside it, as an out-of-range index into a captured tensor does in any kernel.
template <class Tag, int kRank>
struct CaptureView {
  const Slot& s;
  template <class... I>
  FLEXATTN_HD auto operator()(I... idx) const {
    static_assert(sizeof...(I) == kRank, "flexattn: index a captured tensor with one index per dimension");
    int64_t off = 0;
    int d = 0;
    ((off += static_cast<int64_t>(idx) * s.stride[d++]), ...);
    return load_element<Tag>(s.data, off);
  }
  template <class I>
  FLEXATTN_HD auto operator[](I i) const {
    static_assert(kRank == 1, "flexattn: t[i] reads a rank-1 captured tensor; use t(i, j, ...)");
    return load_element<Tag>(s.data, static_cast<int64_t>(i) * s.stride[0]);
  }
  FLEXATTN_HD int size(int d) const { return s.size[d]; }
};

}  // namespace flexattn::detail::runtime
