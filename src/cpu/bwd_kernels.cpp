// Elementwise primitives of the CPU backward pass: a portable version and an AVX-512 version.
//
// The AVX-512 functions carry a target attribute instead of living in a translation unit built
// with -mavx512f, so this file needs no per-file flags; they run only when the tile-product table
// (isa::active(), kernels.cpp) picked AVX-512, which already checked the CPU and honours
// FLEXATTN_CPU_ISA. Both variants are deterministic; they need not agree bit for bit.
#include "flexattn/detail/cpu/bwd_kernels.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string_view>

#include "isa.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FLEXATTN_BWD_AVX512 1
#include <immintrin.h>
#endif

namespace flexattn::detail::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---- portable -----------------------------------------------------------------------------------
void probs_portable(float* s, int64_t lds, int M, int N, const float* lse, float scale) {
  for (int m = 0; m < M; ++m) {
    float* row = s + m * lds;
    const float c = lse[m];
    if (c == kNegInf) {
      std::memset(row, 0, sizeof(float) * N);
      continue;
    }
    for (int n = 0; n < N; ++n) row[n] = std::exp(scale * row[n] - c);
  }
}

void dscores_portable(float* p, int64_t ldp, const float* dp, int64_t lddp, const float* g,
                      int64_t ldg, int M, int N, const float* delta, float scale) {
  for (int m = 0; m < M; ++m) {
    float* pr = p + m * ldp;
    const float* dpr = dp + m * lddp;
    const float dm = delta[m];
    if (g == nullptr) {
      for (int n = 0; n < N; ++n) pr[n] = pr[n] * (dpr[n] - dm) * scale;
    } else {
      const float* gr = g + m * ldg;
      for (int n = 0; n < N; ++n) pr[n] = pr[n] != 0.0f ? pr[n] * (dpr[n] - dm) * scale * gr[n] : 0.0f;
    }
  }
}

void add_portable(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

// ---- AVX-512 ------------------------------------------------------------------------------------
#if defined(FLEXATTN_BWD_AVX512)
#define FLEXATTN_AVX512_FN __attribute__((target("avx512f,avx512dq,fma")))

// exp(x) for 16 lanes, ~1 ulp (Cephes' expf polynomial on |r| <= ln2/2, then 2^n by scalef).
// Inputs below -104 (including -inf) give exactly 0: 2^-150 rounds to zero.
FLEXATTN_AVX512_FN inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
  x = _mm512_min_ps(x, _mm512_set1_ps(88.72283935546875f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

FLEXATTN_AVX512_FN inline __mmask16 tail_mask(int left) {
  return static_cast<__mmask16>((1u << left) - 1u);
}

FLEXATTN_AVX512_FN void probs_avx512(float* s, int64_t lds, int M, int N, const float* lse,
                                     float scale) {
  const __m512 sc = _mm512_set1_ps(scale);
  for (int m = 0; m < M; ++m) {
    float* row = s + m * lds;
    if (lse[m] == kNegInf) {
      std::memset(row, 0, sizeof(float) * N);
      continue;
    }
    const __m512 c = _mm512_set1_ps(lse[m]);
    int n = 0;
    for (; n + 16 <= N; n += 16)
      _mm512_storeu_ps(row + n, exp16(_mm512_fmsub_ps(_mm512_loadu_ps(row + n), sc, c)));
    if (n < N) {
      const __mmask16 k = tail_mask(N - n);
      const __m512 x = _mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, row + n), sc, c);
      _mm512_mask_storeu_ps(row + n, k, exp16(x));
    }
  }
}

FLEXATTN_AVX512_FN void dscores_avx512(float* p, int64_t ldp, const float* dp, int64_t lddp,
                                       const float* g, int64_t ldg, int M, int N,
                                       const float* delta, float scale) {
  const __m512 sc = _mm512_set1_ps(scale);
  const __m512 zero = _mm512_setzero_ps();
  for (int m = 0; m < M; ++m) {
    float* pr = p + m * ldp;
    const float* dpr = dp + m * lddp;
    const float* gr = g ? g + m * ldg : nullptr;
    const __m512 d = _mm512_set1_ps(delta[m]);
    for (int n = 0; n < N; n += 16) {
      const __mmask16 k = N - n >= 16 ? __mmask16(0xffff) : tail_mask(N - n);
      const __m512 pv = _mm512_maskz_loadu_ps(k, pr + n);
      __m512 x = _mm512_mul_ps(_mm512_mul_ps(pv, _mm512_sub_ps(_mm512_maskz_loadu_ps(k, dpr + n), d)), sc);
      if (gr) {
        const __mmask16 live = _mm512_mask_cmp_ps_mask(k, pv, zero, _CMP_NEQ_UQ);
        x = _mm512_maskz_mul_ps(live, x, _mm512_maskz_loadu_ps(k, gr + n));
      }
      _mm512_mask_storeu_ps(pr + n, k, x);
    }
  }
}

FLEXATTN_AVX512_FN void add_avx512(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? __mmask16(0xffff) : tail_mask(int(n - i));
    _mm512_mask_storeu_ps(y + i, k,
                          _mm512_add_ps(_mm512_maskz_loadu_ps(k, y + i), _mm512_maskz_loadu_ps(k, x + i)));
  }
}
#endif

bool use_avx512() {
#if defined(FLEXATTN_BWD_AVX512)
  static const bool yes = std::string_view(isa::active().name).starts_with("avx512");
  return yes;
#else
  return false;
#endif
}

}  // namespace

void bwd_probs(float* s, int64_t lds, int M, int N, const float* lse, float scale) {
#if defined(FLEXATTN_BWD_AVX512)
  if (use_avx512()) return probs_avx512(s, lds, M, N, lse, scale);
#endif
  probs_portable(s, lds, M, N, lse, scale);
}

void bwd_dscores(float* p, int64_t ldp, const float* dp, int64_t lddp, const float* g, int64_t ldg,
                 int M, int N, const float* delta, float scale) {
#if defined(FLEXATTN_BWD_AVX512)
  if (use_avx512()) return dscores_avx512(p, ldp, dp, lddp, g, ldg, M, N, delta, scale);
#endif
  dscores_portable(p, ldp, dp, lddp, g, ldg, M, N, delta, scale);
}

void bwd_add(float* y, const float* x, int64_t n) {
#if defined(FLEXATTN_BWD_AVX512)
  if (use_avx512()) return add_avx512(y, x, n);
#endif
  add_portable(y, x, n);
}

}  // namespace flexattn::detail::cpu
