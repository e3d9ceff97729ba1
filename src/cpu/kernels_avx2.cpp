// AVX2 kernels (with FMA and F16C). Compiled with those flags (sources.cmake) and only reached
// when the CPU reports them (kernels.cpp).
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
  using reg = __m256;
  static constexpr int kWidth = 8;
  // 6 x 16 micro-tile: 12 of the 16 registers hold C, 2 a row of B, one the broadcast of A.
  static constexpr int kMR = 6;
  static constexpr int kNV = 2;
  static constexpr int kSoftmaxStrips = 2;  // vectors per row in online_softmax_t
  static constexpr int kPeakChains = 12;

  // Lane mask with the first n of 8 lanes set.
  static __m256i mask(int n) {
    alignas(32) static constexpr int32_t kTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                       0,  0,  0,  0,  0,  0,  0,  0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTable + 8 - n));
  }
  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static reg load_n(const float* p, int n, float fill) {
    const __m256i m = mask(n);
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  static void store_n(float* p, reg v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static float hsum(reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float hmax(reg v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static reg blend_neg_inf(reg x, reg a, reg b) {
    const reg m =
        _mm256_cmp_ps(x, _mm256_set1_ps(-std::numeric_limits<float>::infinity()), _CMP_EQ_OQ);
    return _mm256_blendv_ps(b, a, m);
  }
  static reg blend_zero(reg x, reg a, reg b) {
    return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_EQ_OQ));
  }

  // p * 2^n for integral n in [-160, 160]: two exponent-field factors 2^(n/2) and 2^(n - n/2) so
  // subnormal results come out right and the largest finite ones do not overflow early.
  static reg scale_pow2(reg p, reg n) {
    n = _mm256_max_ps(_mm256_set1_ps(-252.0f), _mm256_min_ps(_mm256_set1_ps(254.0f), n));
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i h = _mm256_srai_epi32(ni, 1);
    const __m256i bias = _mm256_set1_epi32(127);
    const reg f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, bias), 23));
    const reg f2 =
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
  }
  // Same method as the AVX-512 table: degree-7 Taylor polynomials after range reduction; -inf
  // clamped so the reduction stays finite; NaN stays NaN.
  static reg exp2(reg x) {
    x = _mm256_max_ps(_mm256_set1_ps(-160.0f), x);
    x = _mm256_min_ps(_mm256_set1_ps(160.0f), x);
    const reg n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const reg f = _mm256_sub_ps(x, n);
    reg p = _mm256_set1_ps(1.525273380405984e-05f);
    p = fma(p, f, _mm256_set1_ps(1.5403530393381608e-04f));
    p = fma(p, f, _mm256_set1_ps(1.3333558146428443e-03f));
    p = fma(p, f, _mm256_set1_ps(9.618129107628477e-03f));
    p = fma(p, f, _mm256_set1_ps(5.550410866482158e-02f));
    p = fma(p, f, _mm256_set1_ps(2.402265069591007e-01f));
    p = fma(p, f, _mm256_set1_ps(6.931471805599453e-01f));
    p = fma(p, f, _mm256_set1_ps(1.0f));
    return scale_pow2(p, n);
  }
  static reg exp(reg x) {
    x = _mm256_max_ps(_mm256_set1_ps(-110.0f), x);
    x = _mm256_min_ps(_mm256_set1_ps(110.0f), x);
    const reg n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.4426950408889634f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    reg r = fma(n, _mm256_set1_ps(-0.693145751953125f), x);
    r = fma(n, _mm256_set1_ps(-1.428606765330187e-06f), r);
    reg p = _mm256_set1_ps(1.0f / 5040.0f);
    p = fma(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = fma(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = fma(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = fma(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = fma(p, r, _mm256_set1_ps(0.5f));
    p = fma(p, r, _mm256_set1_ps(1.0f));
    p = fma(p, r, _mm256_set1_ps(1.0f));
    return scale_pow2(p, n);
  }

  static reg load_f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static void store_f16(uint16_t* p, reg v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static reg load_bf16(const uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static void store_bf16(uint16_t* p, reg v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i hi = _mm256_srli_epi32(u, 16);
    const __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
    // Values fit in 16 bits, so the saturating pack is exact; it packs within 128-bit lanes, so
    // fix the qword order before taking the low half.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }

  // dst[c * ldd + r] = src[r * lds + c] for an 8 x 8 block.
  static void transpose_block(const float* src, int64_t lds, float* dst, int64_t ldd) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {  // lane j of r[i + c] holds column 4j + c of rows i..i+3
      r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int c = 0; c < 4; ++c) {
      _mm256_storeu_ps(dst + c * ldd, _mm256_permute2f128_ps(r[c], r[4 + c], 0x20));
      _mm256_storeu_ps(dst + (4 + c) * ldd, _mm256_permute2f128_ps(r[c], r[4 + c], 0x31));
    }
  }
};

#include "simd_body.inc"

}  // namespace

const KernelTable& avx2_table() { return simd_table("avx2"); }

}  // namespace flexattn::detail::cpu::isa
