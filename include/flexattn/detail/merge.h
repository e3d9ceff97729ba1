// The LSE-weighted merge of partial attention results: ONE definition for every place that
// combines parts of one row computed over disjoint key sets - the CPU's and the GPU's split-KV
// decoding, and (later) context parallelism across GPUs.
//
// Part i of a row has (out_i, lse_i) over its keys. The whole row's
//   lse = log sum_i exp(lse_i)            out = sum_i exp(lse_i - lse) * out_i
// Rules, matching the single-pass kernels: a part with lse_i = -inf (no kept key) weighs 0, so all
// parts -inf give lse -inf and out 0 (the fully masked row); a part with lse_i NaN (it kept a NaN /
// +inf score) makes lse and every weight NaN, so the row is NaN. Host and device code (no host-only
// headers: the GPU combine kernel includes this file).
#pragma once

#include "../config.h"
#include "../math.h"
#include "device_std.h"

#if !defined(__CUDACC_RTC__)  // NVRTC has expf / logf built in
#include <math.h>
#endif

namespace flexattn::detail {

// lse of the merged row from the parts' lse values, lse_at(i) for i in [0, n).
template <class LseAt>
FLEXATTN_HD inline float merge_lse(int n, const LseAt& lse_at) {
  float m = -math_detail::inf();
  bool nan = false;
  for (int i = 0; i < n; ++i) {
    const float l = lse_at(i);
    nan = nan || l != l;
    m = l > m ? l : m;
  }
  if (nan) return fstd::numeric_limits<float>::quiet_NaN();
  if (m == -math_detail::inf()) return m;
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) sum += expf(lse_at(i) - m);  // exp(-inf) = 0; the max part adds 1
  return m + logf(sum);
}

// Weight of a part with lse `part` in a row whose merged lse is `total`: 0 for an empty part
// (never exp(-inf - -inf) = NaN), NaN when the row is NaN.
FLEXATTN_HD inline float merge_weight(float part, float total) {
  if (total != total) return fstd::numeric_limits<float>::quiet_NaN();
  return part == -math_detail::inf() ? 0.0f : expf(part - total);
}

}  // namespace flexattn::detail
