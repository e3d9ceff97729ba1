// AVX-512 kernels (F, BW, VL, DQ; FMA and F16C for the conversions). Compiled with those flags
// (sources.cmake) and only reached when the CPU reports them (kernels.cpp).
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "isa.h"

namespace flexattn::detail::cpu::isa {
namespace {

struct V {
  using reg = __m512;
  static constexpr int kWidth = 16;
  // 6 x 64 micro-tile: 24 of the 32 registers hold C, 4 hold a row of B, one the broadcast of A.
  static constexpr int kMR = 6;
  static constexpr int kNV = 4;
  static constexpr int kSoftmaxStrips = 4;  // vectors per row in online_softmax_t
  static constexpr int kPeakChains = 16;

  static __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static reg load_n(const float* p, int n, float fill) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), mask(n), p);
  }
  static void store_n(float* p, reg v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  // NaN in `b` comes out as NaN (max/min return their second operand when either is NaN).
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static float hsum(reg v) { return _mm512_reduce_add_ps(v); }
  static float hmax(reg v) { return _mm512_reduce_max_ps(v); }
  // where x == -inf: a, else b
  static reg blend_neg_inf(reg x, reg a, reg b) {
    const __mmask16 m =
        _mm512_cmp_ps_mask(x, _mm512_set1_ps(-std::numeric_limits<float>::infinity()), _CMP_EQ_OQ);
    return _mm512_mask_blend_ps(m, b, a);
  }
  // where x == 0 (either sign): a, else b (NaN x gives b)
  static reg blend_zero(reg x, reg a, reg b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_EQ_OQ), b, a);
  }

  // 2^x: x = n + f with |f| <= 1/2, 2^f by its degree-7 Taylor polynomial (truncation < 1e-8
  // relative), times 2^n by vscalefps, which also gives exact subnormals, 0 below and inf above.
  // -inf is clamped to -160 first so f stays finite (-inf - -inf would be NaN); NaN stays NaN.
  // No upper clamp: the softmax only passes x <= 0, and vscalefps overflows finite x to inf.
  static reg exp2(reg x) {
    x = _mm512_max_ps(_mm512_set1_ps(-160.0f), x);
    const reg n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const reg f = _mm512_sub_ps(x, n);
    reg p = _mm512_set1_ps(1.525273380405984e-05f);
    p = fma(p, f, _mm512_set1_ps(1.5403530393381608e-04f));
    p = fma(p, f, _mm512_set1_ps(1.3333558146428443e-03f));
    p = fma(p, f, _mm512_set1_ps(9.618129107628477e-03f));
    p = fma(p, f, _mm512_set1_ps(5.550410866482158e-02f));
    p = fma(p, f, _mm512_set1_ps(2.402265069591007e-01f));
    p = fma(p, f, _mm512_set1_ps(6.931471805599453e-01f));
    p = fma(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
  }
  // e^x: n = round(x log2 e), r = x - n ln2 in two FMA steps (Cody-Waite: ln2 split so n * ln2_hi
  // is exact), e^r by its degree-7 Taylor polynomial on |r| <= 0.35, times 2^n.
  static reg exp(reg x) {
    x = _mm512_max_ps(_mm512_set1_ps(-110.0f), x);
    x = _mm512_min_ps(_mm512_set1_ps(110.0f), x);
    const reg n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f)),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    reg r = fma(n, _mm512_set1_ps(-0.693145751953125f), x);
    r = fma(n, _mm512_set1_ps(-1.428606765330187e-06f), r);
    reg p = _mm512_set1_ps(1.0f / 5040.0f);
    p = fma(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = fma(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = fma(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = fma(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = fma(p, r, _mm512_set1_ps(0.5f));
    p = fma(p, r, _mm512_set1_ps(1.0f));
    p = fma(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
  }

  static reg load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static void store_f16(uint16_t* p, reg v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static reg load_bf16(const uint16_t* p) {
    const __m512i w =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  // Integer rounding rather than vcvtneps2bf16, which flushes subnormal inputs to zero.
  static void store_bf16(uint16_t* p, reg v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i hi = _mm512_srli_epi32(u, 16);
    const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  }

  // dst[c * ldd + r] = src[r * lds + c] for a 16 x 16 block.
  static void transpose_block(const float* src, int64_t lds, float* dst, int64_t ldd) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
    for (int i = 0; i < 16; i += 2) {  // 32-bit interleave of row pairs
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // 64-bit interleave: lane j of r[i + c] holds column 4j + c
      r[i] =
          _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
      r[i + 1] =
          _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
      r[i + 2] = _mm512_castpd_ps(
          _mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
      r[i + 3] = _mm512_castpd_ps(
          _mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    // Gather 128-bit lanes: column 4j + c takes lane j of r[c], r[4 + c], r[8 + c], r[12 + c].
    for (int c = 0; c < 4; ++c) {
      const __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);  // lanes 0, 2 of each
      const __m512 v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);  // lanes 1, 3
      const __m512 w0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
      const __m512 w1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
      _mm512_storeu_ps(dst + (0 + c) * ldd, _mm512_shuffle_f32x4(v0, w0, 0x88));
      _mm512_storeu_ps(dst + (8 + c) * ldd, _mm512_shuffle_f32x4(v0, w0, 0xDD));
      _mm512_storeu_ps(dst + (4 + c) * ldd, _mm512_shuffle_f32x4(v1, w1, 0x88));
      _mm512_storeu_ps(dst + (12 + c) * ldd, _mm512_shuffle_f32x4(v1, w1, 0xDD));
    }
  }
};

#include "simd_body.inc"

}  // namespace

const KernelTable& avx512_table() { return simd_table("avx512"); }

}  // namespace flexattn::detail::cpu::isa
