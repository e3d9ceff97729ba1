// The public entry points of kernels.h: each forwards to the table of the instruction set chosen
// once at run time (isa.h), plus the scalar dtype conversions every table shares.
#include <cstdlib>
#include <cstring>
#include <new>
#include <string_view>

#include "isa.h"

namespace flexattn::detail::cpu {
namespace isa {
namespace {

const KernelTable& select() {
  const char* env = std::getenv("FLEXATTN_CPU_ISA");
  const std::string_view want = env ? env : "";
  if (want == "portable") return portable_table();
#if defined(FLEXATTN_CPU_X86)
  __builtin_cpu_init();
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                        __builtin_cpu_supports("f16c");
  const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (has_avx512 && want != "avx2") return avx512_table();
  if (has_avx2) return avx2_table();
#endif
  return portable_table();
}

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

const KernelTable& active() {
  static const KernelTable& table = select();
  return table;
}

float* pack_buffer(size_t floats) {
  struct Block {
    float* p = nullptr;
    size_t n = 0;
    ~Block() { ::operator delete[](p, std::align_val_t{64}); }
  };
  thread_local Block block;
  if (block.n < floats) {
    ::operator delete[](block.p, std::align_val_t{64});
    block.p = nullptr;
    block.n = 0;
    block.p = static_cast<float*>(::operator new[](floats * sizeof(float), std::align_val_t{64}));
    block.n = floats;
  }
  return block.p;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {  // zero or subnormal: m units of 2^-24, exact in float
    const float v = static_cast<float>(m) * 0x1p-24f;
    return float_of(bits_of(v) | sign);
  }
  if (e == 31) return float_of(sign | 0x7f800000u | (m << 13));  // inf / NaN (payload kept)
  return float_of(sign | ((e + 112u) << 23) | (m << 13));
}

uint16_t f32_to_f16(float f) {
  uint32_t x = bits_of(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) {  // inf, or NaN kept quiet
    return sign | (x > 0x7f800000u ? uint16_t(0x7e00u | ((x >> 13) & 0x3ffu)) : uint16_t(0x7c00u));
  }
  // 65520 is the tie between the largest half (65504, odd mantissa) and 2^16: it rounds to inf.
  if (x >= 0x477ff000u) return sign | 0x7c00u;
  if (x < 0x38800000u) {  // below 2^-14: a half subnormal, units of 2^-24
    const uint32_t e = x >> 23;
    if (e < 102) return sign;  // below 2^-25: rounds to zero (2^-25 itself ties to even zero)
    const uint32_t mant = (x & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t r = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;  // may carry into the smallest normal: right
    return sign | static_cast<uint16_t>(r);
  }
  uint32_t r = (x >> 13) - (112u << 10);
  const uint32_t rem = x & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // a carry bumps the exponent: right
  return sign | static_cast<uint16_t>(r);
}

float bf16_to_f32(uint16_t h) { return float_of(static_cast<uint32_t>(h) << 16); }

uint16_t f32_to_bf16(float f) {
  const uint32_t x = bits_of(f);
  if ((x & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

}  // namespace isa

void gemm(Trans ta, Trans tb, int M, int N, int K, const float* A, int64_t lda, const float* B,
          int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  isa::active().gemm(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, accumulate, nullptr);
}
void gemm_rescale(Trans ta, Trans tb, int M, int N, int K, const float* A, int64_t lda,
                  const float* B, int64_t ldb, float* C, int64_t ldc, const float* row_scale) {
  if (M <= 0 || N <= 0) return;
  isa::active().gemm(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, true, row_scale);
}
// n == 0 returns at once: an empty tensor's pointers may be null, and the SIMD paths end in a
// memcpy that must never see a null pointer, even for zero bytes.
void load_row(const void* src, DType dtype, float* dst, int64_t n) {
  if (n <= 0) return;
  isa::active().load_row(src, dtype, dst, n);
}
void store_row(const float* src, void* dst, DType dtype, int64_t n) {
  if (n <= 0) return;
  isa::active().store_row(src, dst, dtype, n);
}
float exp_sub_sum(float* x, int64_t n, float c) { return isa::active().exp_sub_sum(x, n, c); }
float max_of(const float* x, int64_t n) { return isa::active().max_of(x, n); }
void scale(float* y, int64_t n, float a) { isa::active().scale(y, n, a); }
void online_softmax_t(float* st, int64_t ldst, int N, int M, float* row_max, float* row_sum,
                      float* alpha) {
  isa::active().online_softmax_t(st, ldst, N, M, row_max, row_sum, alpha);
}
void bwd_probs(float* s, int64_t lds, int M, int N, const float* lse, float scale) {
  isa::active().bwd_probs(s, lds, M, N, lse, scale);
}
void bwd_dscores(float* p, int64_t ldp, const float* dp, int64_t lddp, const float* g, int64_t ldg,
                 int M, int N, const float* delta, float scale) {
  isa::active().bwd_dscores(p, ldp, dp, lddp, g, ldg, M, N, delta, scale);
}
void bwd_add(float* y, const float* x, int64_t n) { isa::active().bwd_add(y, x, n); }
bool rows_finite(const float* x, int64_t ld, int rows, int cols) {
  if (rows <= 0 || cols <= 0) return true;
  return isa::active().rows_finite(x, ld, rows, cols);
}
const char* isa_name() { return isa::active().name; }
double fma_chain_flops(int64_t iters) {
  float sink = 0.0f;
  const double flops = isa::active().fma_peak_loop(iters, &sink);
  volatile float keep = sink;  // the chains' result must be observable
  (void)keep;
  return flops;
}

}  // namespace flexattn::detail::cpu
