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

// The units the raw S = Q K^T leaves the mask in, and the factor the softmax's exp2 FFMA applies.
// Without a score_mod the scale rides in that FFMA (the row max is then taken on raw q.k, which
// needs scale > 0; a scale <= 0 is applied up front instead); with one, the score_mod sees natural
// units and log2(e) rides. `natural` turns a score in these units into the natural score the
// backward recomputes (lse = natural * max + log(sum), OnlineSoftmax::finalize): bit for bit the
// backward's fl(scale * q.k) for a raw max, so that exp(s - lse) is exact near the max at any size.
template <bool kNoopScore>
struct ScoreUnits {
  bool prescale;  // multiply S by scale * log2(e) before the mask
  float mult;     // softmax factor to log2 units
  float natural;  // factor to natural units
  FLEXATTN_DEV ScoreUnits(float scale, float scale_log2)
      : prescale(kNoopScore && !(scale_log2 > 0.0f)),
        mult(kNoopScore ? (scale_log2 > 0.0f ? scale_log2 : 1.0f) : kLog2e),
        natural(kNoopScore ? (scale_log2 > 0.0f ? scale : 0.6931471805599453f) : 1.0f) {}
};

// Multiplies every score by `f` (used only when the softmax cannot fold the scale, scale < 0).
template <int MT, int NT>
FLEXATTN_DEV void scale_scores(float (&s)[MT][NT][4], float f) {
#pragma unroll
  for (int mi = 0; mi < MT; ++mi)
#pragma unroll
    for (int ni = 0; ni < NT; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) s[mi][ni][r] *= f;
}

// A query row of a thread's score fragment (rows g and g + 8 of each m16 slice, g = lane / 4):
// head h and query index q as the functors see them, ok false for a row that does not exist
// (past Lq, padding); such a row's h and q are stand-ins of a real row (no functor sees an index
// outside the sequence) and its scores become -inf.
struct ScoreRow {
  int h, q;
  bool ok;
};
// Where a fragment's rows come from, asked as rows.at<kBounds>(mi, half) (mi: the m16 slice,
// half: row g or g + 8); without kBounds every row exists and nothing is clamped.
//   ConsecutiveRows  the prefill kernels' tiles: rows row0, row0 + 1, ... of one head
//   PackedRows       the decode kernel's tile (mainloop_decode.cuh): its own head and q per row
struct ConsecutiveRows {
  int h, row0, Lq;
  template <bool kBounds>
  FLEXATTN_DEV ScoreRow at(int mi, int half) const {
    const int q = row0 + mi * 16 + static_cast<int>(threadIdx.x % 32) / 4 + 8 * half;
    if constexpr (!kBounds) return {h, q, true};
    return {h, q < Lq ? q : Lq - 1, q < Lq};
  }
};
struct PackedRows {
  ScoreRow rows[2];  // this thread's rows g and g + 8 of the one m16 slice
  template <bool kBounds>
  FLEXATTN_DEV ScoreRow at(int, int half) const {
    return rows[half];
  }
};

// The per-element path. Output units (what the softmax multiplies by its `mult` to get log2 units):
//   kNoopScore: s is left as it is (raw q.k, or already scaled), only dropped scores become -inf;
//   otherwise:  s = score_mod(scale * s, b, h, q_idx, kv_idx) in natural units (mult = log2 e).
// kPartial evaluates mask_mod where `partial` (a run-time flag, for the one shared copy of the
// ragged-tile path); kBounds drops rows that do not exist and keys past Lkv (clamping their
// indices first). Each tile kind compiles to its own straight-line code: a full tile inside the
// sequence pays for score_mod alone.
template <bool kNoopScore, bool kPartial, bool kBounds, int MT, int NT, class ScoreMod,
          class MaskMod, class Rows>
FLEXATTN_DEV void score_and_mask(float (&s)[MT][NT][4], const ScoreMod& score_mod,
                                 const MaskMod& mask_mod, int b, const Rows& rows, int n0, int Lkv,
                                 float scale, bool partial) {
  const int t = static_cast<int>(threadIdx.x % 4);
#pragma unroll
  for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const ScoreRow row = rows.template at<kBounds>(mi, half);
#pragma unroll
      for (int ni = 0; ni < NT; ++ni) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int kv = n0 + ni * 8 + 2 * t + c;
          const bool kv_in = !kBounds || kv < Lkv;
          const int kc = kv_in ? kv : Lkv - 1;
          float& x = s[mi][ni][2 * half + c];
          bool keep = !kBounds || (row.ok && kv_in);
          if constexpr (kPartial) {
            keep = keep && (!partial || static_cast<bool>(mask_mod(b, row.h, row.q, kc)));
          }
          float y = x;
          if constexpr (!kNoopScore) {
            y = static_cast<float>(score_mod(x * scale, b, row.h, row.q, kc));
          }
          x = keep ? y : thread::neg_inf();
        }
      }
    }
  }
}

// One tile of scores through the path its kind needs. The rare ragged tile (end of the sequence)
// shares one copy with a run-time partial flag: each extra inlined copy costs registers
// everywhere (measured on the sm80 kernel: dropping the ragged copies alone sped document masks up
// by 11% at D = 128). A full tile inside the sequence with no score_mod is left untouched.
template <bool kNoopScore, int MT, int NT, class ScoreMod, class MaskMod, class Rows>
FLEXATTN_DEV void score_and_mask_tile(float (&s)[MT][NT][4], const ScoreMod& score_mod,
                                      const MaskMod& mask_mod, int b, const Rows& rows, int n0,
                                      bool partial, bool ragged, int Lkv, float scale) {
  if (ragged) {
    score_and_mask<kNoopScore, true, true>(s, score_mod, mask_mod, b, rows, n0, Lkv, scale,
                                           partial);
  } else if (partial) {
    score_and_mask<kNoopScore, true, false>(s, score_mod, mask_mod, b, rows, n0, Lkv, scale, true);
  } else if constexpr (!kNoopScore) {
    score_and_mask<kNoopScore, false, false>(s, score_mod, mask_mod, b, rows, n0, Lkv, scale,
                                             false);
  }
}

}  // namespace flexattn::detail::cuda
