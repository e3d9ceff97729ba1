// Portable kernels: plain C++ that any compiler and CPU runs. The reference for the SIMD tables
// and the path on CPUs without AVX2 (or with FLEXATTN_CPU_ISA=portable). Loops are written so the
// compiler can vectorise them with whatever the baseline flags allow.
#include <cmath>
#include <cstring>
#include <limits>

#include "isa.h"

namespace flexattn::detail::cpu::isa {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kLog2e = 1.4426950408889634f;

void gemm_portable(Trans ta, Trans tb, int M, int N, int K, const float* A, int64_t lda,
                   const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate,
                   const float* row_scale) {
  auto a_at = [&](int m, int k) { return ta == Trans::N ? A[m * lda + k] : A[k * lda + m]; };
  for (int m = 0; m < M; ++m) {
    float* c = C + m * ldc;
    if (!accumulate) std::memset(c, 0, sizeof(float) * N);
    if (accumulate && row_scale) {
      for (int n = 0; n < N; ++n) c[n] *= row_scale[m];
    }
    if (tb == Trans::N) {
      // Row update: c[0:N] += a(m, k) * B[k, 0:N], contiguous in n.
      for (int k = 0; k < K; ++k) {
        const float a = a_at(m, k);
        const float* b = B + k * ldb;
        for (int n = 0; n < N; ++n) c[n] += a * b[n];
      }
    } else {
      // B[n*ldb + k]: dot products along k.
      for (int n = 0; n < N; ++n) {
        const float* b = B + n * ldb;
        float s = 0.0f;
        for (int k = 0; k < K; ++k) s += a_at(m, k) * b[k];
        c[n] += s;
      }
    }
  }
}

void load_row_portable(const void* src, DType dtype, float* dst, int64_t n) {
  switch (dtype) {
    case DType::f32:
      std::memcpy(dst, src, sizeof(float) * n);
      return;
    case DType::f16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::bf16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::i32:  // not a row dtype: tensor.cpp and args.cpp refuse it before any row
      break;
  }
}

void store_row_portable(const float* src, void* dst, DType dtype, int64_t n) {
  switch (dtype) {
    case DType::f32:
      std::memcpy(dst, src, sizeof(float) * n);
      return;
    case DType::f16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::bf16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::i32:  // not a row dtype: tensor.cpp and args.cpp refuse it before any row
      break;
  }
}

float exp_sub_sum_portable(float* x, int64_t n, float c) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - c);
    sum += x[i];
  }
  return sum;
}

float max_of_portable(const float* x, int64_t n) {
  float m = kNegInf;
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

void scale_portable(float* y, int64_t n, float a) {
  for (int64_t i = 0; i < n; ++i) y[i] *= a;
}

void online_softmax_t_portable(float* st, int64_t ldst, int N, int M, float* row_max,
                               float* row_sum, float* alpha) {
  for (int m = 0; m < M; ++m) {
    float mx = row_max[m];
    for (int n = 0; n < N; ++n) mx = st[n * ldst + m] > mx ? st[n * ldst + m] : mx;
    // Nothing kept yet: subtract 0 instead of -inf so every exp2(-inf) is a clean 0.
    const bool empty = mx == kNegInf;
    alpha[m] = empty ? 1.0f : std::exp2((row_max[m] - mx) * kLog2e);
    row_max[m] = mx;
    row_sum[m] *= alpha[m];
  }
  for (int n = 0; n < N; ++n) {
    float* s = st + n * ldst;
    for (int m = 0; m < M; ++m) {
      const float sub = row_max[m] == kNegInf ? 0.0f : row_max[m];
      s[m] = std::exp2((s[m] - sub) * kLog2e);
      row_sum[m] += s[m];
    }
  }
}

void bwd_probs_portable(float* s, int64_t lds, int M, int N, const float* lse, float scale) {
  for (int m = 0; m < M; ++m) {
    float* row = s + m * lds;
    const float c = lse[m];
    if (c == kNegInf) {  // every key masked: P = 0, never exp(-inf - -inf)
      std::memset(row, 0, sizeof(float) * N);
      continue;
    }
    if (c != c) {  // a NaN row (kernels.h): NaN where kept, exactly 0 where -inf
      for (int n = 0; n < N; ++n) row[n] = scale * row[n] == kNegInf ? 0.0f : c;
      continue;
    }
    for (int n = 0; n < N; ++n) row[n] = std::exp(scale * row[n] - c);
  }
}

void bwd_dscores_portable(float* p, int64_t ldp, const float* dp, int64_t lddp, const float* g,
                          int64_t ldg, int M, int N, const float* delta, float scale) {
  for (int m = 0; m < M; ++m) {
    float* pr = p + m * ldp;
    const float* dpr = dp + m * lddp;
    const float dm = delta[m];
    if (g == nullptr) {  // selected where p == 0, never 0 * NaN (kernels.h)
      for (int n = 0; n < N; ++n) pr[n] = pr[n] != 0.0f ? pr[n] * (dpr[n] - dm) * scale : 0.0f;
    } else {
      const float* gr = g + m * ldg;
      for (int n = 0; n < N; ++n)
        pr[n] = pr[n] != 0.0f ? pr[n] * (dpr[n] - dm) * scale * gr[n] : 0.0f;
    }
  }
}

void bwd_add_portable(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

// x * 0 is +-0 for finite x and NaN for inf / NaN, as in the SIMD tables: eight partial sums that
// the compiler keeps in vector lanes (a per-element isfinite stayed a scalar loop, ~7x slower).
bool rows_finite_portable(const float* x, int64_t ld, int rows, int cols) {
  float acc[8] = {};
  for (int r = 0; r < rows; ++r) {
    const float* p = x + r * ld;
    int c = 0;
    for (; c + 8 <= cols; c += 8)
      for (int j = 0; j < 8; ++j) acc[j] += p[c + j] * 0.0f;
    for (; c < cols; ++c) acc[0] += p[c] * 0.0f;
  }
  float s = 0.0f;
  for (float a : acc) s += a;
  return s == 0.0f;
}

double fma_peak_portable(int64_t iters, float* sink) {
  float acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = 1.0f + 0.001f * j;
  const float a = 0.999999f, b = 1e-7f;
  for (int64_t i = 0; i < iters; ++i) {
    for (int j = 0; j < 16; ++j) acc[j] = std::fma(acc[j], a, b);
  }
  float s = 0.0f;
  for (int j = 0; j < 16; ++j) s += acc[j];
  *sink = s;
  return 2.0 * 16.0 * static_cast<double>(iters);
}

}  // namespace

const KernelTable& portable_table() {
  static const KernelTable t{"portable",
                             gemm_portable,
                             load_row_portable,
                             store_row_portable,
                             exp_sub_sum_portable,
                             max_of_portable,
                             scale_portable,
                             online_softmax_t_portable,
                             bwd_probs_portable,
                             bwd_dscores_portable,
                             bwd_add_portable,
                             rows_finite_portable,
                             fma_peak_portable};
  return t;
}

}  // namespace flexattn::detail::cpu::isa
