// The head dims the CUDA kernels are written for, and the one switch that turns a run-time head
// dim into a template argument (shared by the forward and backward launchers).
#pragma once

namespace flexattn::detail::cuda {

inline constexpr int kHeadDims[] = {32, 64, 96, 128, 192, 256};
// A set of head dims is a bit mask over kHeadDims (bit i: kHeadDims[i]); the library's prebuilt
// kernels cover a subset (src/cuda/prebuilt_head_dims.h), a user's .cu all of them.
inline constexpr unsigned kAllHeadDims = 0x3f;
constexpr unsigned head_dim_bit(int D) {
  for (int i = 0; i < 6; ++i) {
    if (kHeadDims[i] == D) return 1u << i;
  }
  return 0u;
}

// Calls f.template operator()<D>() when D is in kDims and equals `head_dim`; returns whether it
// did. Only the head dims in kDims are instantiated.
template <unsigned kDims, class F>
bool with_head_dim(int head_dim, F&& f) {
  bool called = false;
  auto one = [&]<int D>() {
    if constexpr ((kDims & head_dim_bit(D)) != 0) {
      if (head_dim == D) {
        f.template operator()<D>();
        called = true;
      }
    }
  };
  one.template operator()<32>();
  one.template operator()<64>();
  one.template operator()<96>();
  one.template operator()<128>();
  one.template operator()<192>();
  one.template operator()<256>();
  return called;
}

}  // namespace flexattn::detail::cuda
