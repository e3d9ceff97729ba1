// Online softmax over kv tiles, in registers, exp2 on the special-function unit.
//
// Each thread holds 2 * MT rows of a warp's tile (rows g and g + 8 of each m16 tile); the 4 lanes
// of a quad share a row, so the row max is a quad reduction. The row sum stays a per-lane partial
// sum until finalize() (one reduction per row instead of one per tile).
//
// Units: the row max m is kept in the scores' own units (ScoreUnits: raw q.k, natural, or log2),
// and p = exp2((s - m) * mult). The usual path folds that into one FFMA, exp2(fma(s, mult, -M))
// with M = fl(m * mult); its error is the rounding of M, ulp(M) / 2, which is below 2^-14 while
// |M| < kFastExponentLimit. Past it (scores of thousands, or |q|, |k| ~ 1e15 giving 1e30) the
// rounding of M alone would make p of the max key 0 or inf, so a warp whose rows reach that size
// takes the exact form, a FADD and a FMUL: the max key's p is exactly 1 at any magnitude.
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

// |M| (log2 units) up to which the folded FFMA's exponent error stays below 2^-14 (see above).
inline constexpr float kFastExponentLimit = 1024.0f;

template <int MT>
struct OnlineSoftmax {
  static constexpr int kRows = 2 * MT;  // row index rr = 2 * mi + half
  float row_max[kRows];                 // the scores' units; -inf until a kept score is seen
  float row_sum[kRows];                 // this lane's partial sum of exp2((s - row_max) * mult)

  FLEXATTN_DEV OnlineSoftmax() {
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      row_max[i] = thread::neg_inf();
      row_sum[i] = 0.0f;
    }
  }

  // s: this tile's scores, -inf where dropped, in units whose log2 form is s * mult (mult > 0).
  // On return s holds p = exp2((s - new max) * mult) and o is rescaled by
  // exp2((old max - new max) * mult).
  //
  // kLazyRescale (the decode kernel, whose tiles are a few keys per warp): o is rescaled only
  // when some row's max moved, a warp-uniform test; multiplying by exactly 1 would change no bit.
  template <bool kLazyRescale = false, int NT, int NTO>
  FLEXATTN_DEV void update(float (&s)[MT][NT][4], float (&o)[MT][NTO][4], float mult) {
    float base[kRows], alphas[kRows];
    bool exact = false;
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
        mx = fmaxf(warp::quad_max(mx), row_max[rr]);
        base[rr] = mx == thread::neg_inf() ? 0.0f : mx;  // see HAZARD above
        const float alpha = thread::exp2_approx((row_max[rr] - base[rr]) * mult);
        row_max[rr] = mx;
        exact = exact || !(fabsf(base[rr] * mult) < kFastExponentLimit);
        row_sum[rr] *= alpha;
        alphas[rr] = alpha;
      }
    }
    bool rescale = true;
    if constexpr (kLazyRescale) {
      bool moved = false;
#pragma unroll
      for (int rr = 0; rr < kRows; ++rr) moved = moved || alphas[rr] != 1.0f;
      rescale = __any_sync(0xffffffffu, moved);
    }
    if (rescale) {
#pragma unroll
      for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
#pragma unroll
          for (int nd = 0; nd < NTO; ++nd) {
            o[mi][nd][2 * half] *= alphas[2 * mi + half];
            o[mi][nd][2 * half + 1] *= alphas[2 * mi + half];
          }
        }
      }
    }
    // Warp-uniform, so each form is straight-line code. A NaN / inf max takes the exact form,
    // which gives NaN as the folded one would.
    if (__any_sync(0xffffffffu, exact)) {
      exponentiate<true>(s, base, mult);
    } else {
      exponentiate<false>(s, base, mult);
    }
  }

  // Normalises o by the row sums (rows with sum 0 -> 0) and returns each row's lse in natural log:
  // natural * max + log(sum), with `natural` the units' factor (ScoreUnits::natural); -inf for a
  // row with no kept score, NaN for a row that kept a NaN / +inf score (1 / NaN and log2f(NaN)
  // carry it). Call once, after the last tile.
  template <int NTO>
  FLEXATTN_DEV void finalize(float (&o)[MT][NTO][4], float (&lse)[kRows], float natural) {
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int rr = 2 * mi + half;
        const float sum = warp::quad_sum(row_sum[rr]);
        const bool empty = sum == 0.0f;  // not !(sum > 0): a NaN sum must not pass as masked
        const float inv = empty ? 0.0f : 1.0f / sum;
        lse[rr] = empty ? thread::neg_inf() : fmaf(log2f(sum), kLn2, __fmul_rn(row_max[rr], natural));
#pragma unroll
        for (int nd = 0; nd < NTO; ++nd) {
          o[mi][nd][2 * half] *= inv;
          o[mi][nd][2 * half + 1] *= inv;
        }
      }
    }
  }

 private:
  template <bool kExact, int NT>
  FLEXATTN_DEV void exponentiate(float (&s)[MT][NT][4], const float (&base)[kRows], float mult) {
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int rr = 2 * mi + half;
        const float folded = base[rr] * mult;
        float sum = 0.0f;
#pragma unroll
        for (int ni = 0; ni < NT; ++ni) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            float& x = s[mi][ni][2 * half + c];
            x = thread::exp2_approx(kExact ? (x - base[rr]) * mult : fmaf(x, mult, -folded));
            sum += x;
          }
        }
        row_sum[rr] += sum;
      }
    }
  }
};

}  // namespace flexattn::detail::cuda
