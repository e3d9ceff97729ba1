// Online softmax over kv tiles, in registers, in log2 units (exp2 on the special-function unit).
//
// Each thread holds 2 * MT rows of a warp's tile (rows g and g + 8 of each m16 tile); the 4 lanes
// of a quad share a row, so the row max is a quad reduction. The row sum stays a per-lane partial
// sum until finalize() (one reduction per row instead of one per tile).
//
// HAZARD - the -inf - -inf NaN trap: a row whose scores so far are all -inf (masked) has max -inf;
// exp2(s - max) would be exp2(-inf + inf) = NaN. The exponent is taken against 0 instead while the
// max is -inf: every p is exp2(-inf) = 0, and the rescale factor exp2(old_max - 0) is 0 or 1 on
// zero accumulators. A row masked to the end finishes with sum 0: out 0, lse -inf.
//
// Non-finite scores: fmaxf drops NaN from the max, but the exponent still sees it (exp2(NaN) is
// NaN, against 0 when the max is -inf), and a +inf score gives exp2(inf - inf) = NaN: a row that
// keeps a NaN / +inf score ends with sum NaN (NaN survives every rescale). finalize() tells the
// three cases apart: sum > 0 normal, sum == 0 fully masked, NaN -> out NaN, lse NaN.
#pragma once

#include "utils.cuh"

namespace flexattn::detail::cuda {

inline constexpr float kLn2 = 0.6931471805599453f;

template <int MT>
struct OnlineSoftmax {
  static constexpr int kRows = 2 * MT;  // row index rr = 2 * mi + half
  float row_max[kRows];                 // log2 units; -inf until a kept score is seen
  float row_sum[kRows];                 // this lane's partial sum of exp2(s - row_max)

  FLEXATTN_DEV OnlineSoftmax() {
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      row_max[i] = thread::neg_inf();
      row_sum[i] = 0.0f;
    }
  }

  // s: this tile's scores, -inf where dropped; in log2 units they are s * mult (mult > 0: the
  // max is taken on s, and the scale rides in the FFMA feeding exp2 - no separate multiply).
  // On return s holds p = exp2(s * mult - new max) and o is rescaled by exp2(old max - new max).
  template <int NT, int NTO>
  FLEXATTN_DEV void update(float (&s)[MT][NT][4], float (&o)[MT][NTO][4], float mult) {
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int rr = 2 * mi + half;
        float mx = s[mi][0][2 * half];
#pragma unroll
        for (int ni = 0; ni < NT; ++ni) {
          mx = fmaxf(mx, fmaxf(s[mi][ni][2 * half], s[mi][ni][2 * half + 1]));
        }
        mx = fmaxf(warp::quad_max(mx) * mult, row_max[rr]);  // -inf * mult stays -inf
        const float base = mx == thread::neg_inf() ? 0.0f : mx;  // see HAZARD above
        const float alpha = thread::exp2_approx(row_max[rr] - base);
        row_max[rr] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int ni = 0; ni < NT; ++ni) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const float p = thread::exp2_approx(fmaf(s[mi][ni][2 * half + c], mult, -base));
            s[mi][ni][2 * half + c] = p;
            sum += p;
          }
        }
        row_sum[rr] = row_sum[rr] * alpha + sum;
#pragma unroll
        for (int nd = 0; nd < NTO; ++nd) {
          o[mi][nd][2 * half] *= alpha;
          o[mi][nd][2 * half + 1] *= alpha;
        }
      }
    }
  }

  // Normalises o by the row sums (rows with sum 0 -> 0) and returns each row's lse in natural log
  // (-inf for a row with no kept score, NaN for a row that kept a NaN / +inf score: 1 / NaN and
  // log2f(NaN) carry it). Call once, after the last tile.
  template <int NTO>
  FLEXATTN_DEV void finalize(float (&o)[MT][NTO][4], float (&lse)[kRows]) {
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int rr = 2 * mi + half;
        const float sum = warp::quad_sum(row_sum[rr]);
        const bool empty = sum == 0.0f;  // not !(sum > 0): a NaN sum must not pass as masked
        const float inv = empty ? 0.0f : 1.0f / sum;
        lse[rr] = empty ? thread::neg_inf() : (row_max[rr] + log2f(sum)) * kLn2;
#pragma unroll
        for (int nd = 0; nd < NTO; ++nd) {
          o[mi][nd][2 * half] *= inv;
          o[mi][nd][2 * half + 1] *= inv;
        }
      }
    }
  }
};

}  // namespace flexattn::detail::cuda
