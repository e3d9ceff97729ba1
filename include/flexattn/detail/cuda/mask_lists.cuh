// The block mask's device lists as the kernels read them: one struct shared by the forward and
// backward parameter blocks (both derive from it), filled in one place.
#pragma once

#include "../device_std.h"

namespace flexattn::detail::cuda {

// int32 on the device; layout as BlockMaskData (block_mask.h) documents it.
struct MaskLists {
  const int32_t* kv_num;       // kv-blocks per q-block: the forward walks these
  const int32_t* kv_idx;
  const int32_t* full_kv_num;
  const int32_t* full_kv_idx;
  const int32_t* q_num;        // q-blocks per kv-block: the backward walks these
  const int32_t* q_idx;
  const int32_t* full_q_num;
  const int32_t* full_q_idx;
  int mask_b, mask_h;          // 1 broadcasts
  int nqb, nkvb, block_q, block_kv;
};

#if !defined(__CUDACC_RTC__)  // host side
// MaskData is BlockMaskData, a template parameter only so that this header needs no complete type
// (block_mask.h includes dispatch.h, which includes the launchers).
template <class MaskData>
MaskLists mask_lists(const MaskData& m) {
  auto list = [](const auto& buffer) { return static_cast<const int32_t*>(buffer.data()); };
  return MaskLists{list(m.kv_num),      list(m.kv_idx),    list(m.full_kv_num),
                   list(m.full_kv_idx), list(m.q_num),     list(m.q_idx),
                   list(m.full_q_num),  list(m.full_q_idx), static_cast<int>(m.B),
                   static_cast<int>(m.H), static_cast<int>(m.nqb), static_cast<int>(m.nkvb),
                   m.block_q,           m.block_kv};
}
#endif

}  // namespace flexattn::detail::cuda
