// score_mod and mask_mod, applied where the scores live: in the mma accumulator registers.
//
// Turns a warp's raw S = Q K^T fragments (float s[MT][NT][4], layout of utils.cuh's C fragment)
// into scores in log2 units, ready for the exp2 softmax:
//   s <- log2(e) * score_mod(scale * s, b, h, q_idx, kv_idx),   or -inf where the score is dropped.
// Register (mi, ni, r) of lane (g = lane / 4, t = lane % 4) holds
//   q_idx  = row0 + mi * 16 + g + 8 * (r / 2)        kv_idx = n0 + ni * 8 + 2 * t + (r % 2).
//
// HAZARD - lanes past the sequence end: the last q tile and the last kv tile may run past Lq /
// Lkv. Their indices are clamped into range before any functor sees them (a DocumentMask would
// otherwise read doc_ids out of bounds) and the score is then forced to -inf, so the clamped
// result is never used. Rows past Lq are also never stored.
#pragma once

#include "../../mods.h"
#include "utils.cuh"

namespace flexattn::detail::cuda {

inline constexpr float kLog2e = 1.4426950408889634f;

template <class ScoreMod>
inline constexpr bool is_noop_score = false;
template <>
inline constexpr bool is_noop_score<NoopScore> = true;

// Per-tile work of the fast path: no functor, no bounds - only the scale into log2 units.
template <int MT, int NT>
FLEXATTN_DEV void scale_scores(float (&s)[MT][NT][4], float scale_log2) {
#pragma unroll
  for (int mi = 0; mi < MT; ++mi)
#pragma unroll
    for (int ni = 0; ni < NT; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) s[mi][ni][r] *= scale_log2;
}

// Elementwise path: score_mod on every element (unless it is the no-op), mask_mod where `partial`,
// bounds where the tile crosses Lq or Lkv. `row0` is the warp's first q row, `n0` the tile's first
// kv row.
template <bool kNoopScore, int MT, int NT, class ScoreMod, class MaskMod>
FLEXATTN_DEV void score_and_mask(float (&s)[MT][NT][4], const ScoreMod& score_mod,
                                 const MaskMod& mask_mod, bool partial, int b, int h, int row0,
                                 int n0, int Lq, int Lkv, float scale, float scale_log2) {
  const int lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int q = row0 + mi * 16 + g + 8 * half;
      const bool q_in = q < Lq;
      const int qc = q_in ? q : Lq - 1;
#pragma unroll
      for (int ni = 0; ni < NT; ++ni) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int kv = n0 + ni * 8 + 2 * t + c;
          const bool kv_in = kv < Lkv;
          const int kc = kv_in ? kv : Lkv - 1;
          float& x = s[mi][ni][2 * half + c];
          bool keep = q_in && kv_in;
          if (partial) keep = keep && static_cast<bool>(mask_mod(b, h, qc, kc));
          float y;
          if constexpr (kNoopScore) {
            y = x * scale_log2;
          } else {
            y = static_cast<float>(score_mod(x * scale, b, h, qc, kc)) * kLog2e;
          }
          x = keep ? y : thread::neg_inf();
        }
      }
    }
  }
}

}  // namespace flexattn::detail::cuda
