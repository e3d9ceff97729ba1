// Exact kept fraction of the score matrix (the "density" FLOP counts are scaled by), from a block
// mask on the CPU: full tiles count whole, skipped tiles not at all, partial tiles element by
// element. Used by the CLI and the benchmarks; O(partial tiles x tile area).
#pragma once

#include <algorithm>
#include <cstdint>

#include "../block_mask.h"

namespace flexattn::detail {

template <class MaskMod>
double kept_fraction(const BlockMaskData& host, const MaskMod& mask, int64_t B, int64_t H) {
  const auto* kv_num = static_cast<const int32_t*>(host.kv_num.data());
  const auto* kv_idx = static_cast<const int32_t*>(host.kv_idx.data());
  const auto* full_num = static_cast<const int32_t*>(host.full_kv_num.data());
  const auto* full_idx = static_cast<const int32_t*>(host.full_kv_idx.data());
  double kept = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t mb = host.B == 1 ? 0 : b, mh = host.H == 1 ? 0 : h;
      for (int64_t qb = 0; qb < host.nqb; ++qb) {
        const int64_t row = (mb * host.H + mh) * host.nqb + qb;
        const int64_t q0 = qb * host.block_q, q1 = std::min(q0 + host.block_q, host.q_len);
        for (int32_t t = 0; t < full_num[row]; ++t) {
          const int64_t k0 = int64_t(full_idx[row * host.nkvb + t]) * host.block_kv;
          kept += double(q1 - q0) * double(std::min(k0 + host.block_kv, host.kv_len) - k0);
        }
        for (int32_t t = 0; t < kv_num[row]; ++t) {
          const int64_t k0 = int64_t(kv_idx[row * host.nkvb + t]) * host.block_kv;
          const int64_t k1 = std::min(k0 + host.block_kv, host.kv_len);
          for (int64_t q = q0; q < q1; ++q) {
            for (int64_t k = k0; k < k1; ++k) kept += mask(int(b), int(h), int(q), int(k)) ? 1 : 0;
          }
        }
      }
    }
  }
  return kept / (double(B) * double(H) * double(host.q_len) * double(host.kv_len));
}

}  // namespace flexattn::detail
