// The CPU backend's non-template primitives: compiled once inside the library (src/cpu/), with
// AVX-512 / AVX2 / portable variants picked at run time, so the attention templates that a user's
// translation unit instantiates stay free of ISA flags. Everything here works on float32 tiles;
// f16/bf16 tensors are converted per tile by load_row / store_row.
#pragma once

#include <cstdint>
#include <utility>

#include "../../tensor.h"

namespace flexattn::detail::cpu {

// ---- threads ------------------------------------------------------------------------------------
// Worker count: FLEXATTN_NUM_THREADS if set, else the hardware concurrency.
int num_threads();
// Runs fn(ctx, i, thread_id) for every i in [0, n) on the library's pool; returns when all are
// done. Items are handed out dynamically, so results must not depend on which thread ran an item.
void parallel_for(int64_t n, void (*fn)(void* ctx, int64_t i, int thread_id), void* ctx);

template <class F>
void parallel_for(int64_t n, F&& f) {
  parallel_for(
      n, [](void* c, int64_t i, int t) { (*static_cast<F*>(c))(i, t); },
      const_cast<void*>(static_cast<const void*>(&f)));
}

// ---- tile products ------------------------------------------------------------------------------
enum class Trans : unsigned char { N, T };
// C[M x N] (+)= op(A) * op(B), row-major float32. op(A) is M x K: A[m*lda + k] for N,
// A[k*lda + m] for T; op(B) is K x N: B[k*ldb + n] for N, B[n*ldb + k] for T.
// accumulate=false overwrites C (C need not be initialised).
void gemm(Trans ta, Trans tb, int M, int N, int K, const float* A, int64_t lda, const float* B,
          int64_t ldb, float* C, int64_t ldc, bool accumulate);
// C = diag(row_scale) * C + op(A) * op(B): the online softmax's rescale of the running output,
// fused into the product's load of C.
void gemm_rescale(Trans ta, Trans tb, int M, int N, int K, const float* A, int64_t lda,
                  const float* B, int64_t ldb, float* C, int64_t ldc, const float* row_scale);

// ---- conversions --------------------------------------------------------------------------------
// n contiguous elements of `dtype` <-> float32.
void load_row(const void* src, DType dtype, float* dst, int64_t n);
void store_row(const float* src, void* dst, DType dtype, int64_t n);

// ---- elementwise --------------------------------------------------------------------------------
// x[i] = exp(x[i] - c) for i < n, returns the sum of the results. c = -inf is not allowed
// (the caller handles fully masked rows). Accurate to a few float ulps.
float exp_sub_sum(float* x, int64_t n, float c);
// max over x[0..n); -inf when n == 0 or all are -inf.
float max_of(const float* x, int64_t n);
// y[i] *= a for i < n
void scale(float* y, int64_t n, float a);

// ---- attention forward step ---------------------------------------------------------------------
// One online-softmax step on a score tile stored TRANSPOSED: st[n * ldst + m] for kv row n < N and
// query m < M, in natural units (the scores themselves); -inf marks a dropped score. For each m:
//   m_new = max(row_max[m], max_n st[n, m]);  alpha[m] = exp2((row_max[m] - m_new) * log2(e));
//   st[n, m] = exp2((st[n, m] - m_new) * log2(e));
//   row_sum[m] = row_sum[m] * alpha[m] + sum_n st[n, m];  row_max[m] = m_new.
// The max stays in natural units and the difference is taken before the multiply: near the max
// s - m_new is exact at any magnitude, and the backward's exp(s - lse), lse = max + log(sum), sees
// the same s - max. (A log2-domain max, s * log2(e) rounded, is off by ulp(s * log2(e)): at
// |s| ~ 1e30 that is ~1e23, and the backward's p became 0 or inf.)
// A query with nothing kept so far (m_new = -inf) gets st = 0 and alpha = 1: never the NaN of
// exp2(-inf - -inf). A NaN or +inf score makes row_sum NaN from then on (exp2(NaN) and
// exp2(inf - inf) are NaN, and NaN stays NaN through the rescale), whatever the max does with it:
// the caller reads row_sum NaN as "a non-finite score was kept". Start with row_max = -inf and
// row_sum = 0.
void online_softmax_t(float* st, int64_t ldst, int N, int M, float* row_max, float* row_sum,
                      float* alpha);
// True when the rows x cols floats x[r * ld + c] are all finite (no inf, no NaN). O(rows * cols):
// the partial-tile paths use it to find keys whose K or V would leak 0 * NaN into rows that mask
// them, before an O(M * N * D) product.
bool rows_finite(const float* x, int64_t ld, int rows, int cols);

// ---- attention backward step --------------------------------------------------------------------
// Probabilities of an M x N score tile, in place: s[m][n] = exp(scale * s[m][n] - lse[m]).
// A row with lse[m] = -inf (every key masked) becomes all zeros: the -inf - -inf NaN trap is
// handled here, not by the caller. s = -inf (a masked score, with scale > 0) gives exactly 0.
// A row with lse[m] NaN (the forward kept a NaN / +inf score) gets NaN where scale * s > -inf and
// exactly 0 where it is -inf, so its NaN reaches the keys it keeps and no other.
void bwd_probs(float* s, int64_t lds, int M, int N, const float* lse, float scale);
// Score gradients of an M x N tile, in place over the probabilities:
//   p[m][n] = scale * p[m][n] * (dp[m][n] - delta[m])          (g == nullptr)
//   p[m][n] = scale * p[m][n] * (dp[m][n] - delta[m]) * g[m][n] where p != 0, else 0
// g is d(score_mod)/d(score). Where p == 0 (masked, or underflowed) the result is exactly 0 by
// selection, so a non-finite dp (a NaN in a masked key's V), delta (a NaN row) or g cannot leak
// into the gradients as 0 * NaN. dp - delta is formed first, so where it is exactly 0 (a row with
// a single key, see attention_bwd.h) the gradient is exactly 0.
void bwd_dscores(float* p, int64_t ldp, const float* dp, int64_t lddp, const float* g, int64_t ldg,
                 int M, int N, const float* delta, float scale);
// y[i] += x[i] for i < n
void bwd_add(float* y, const float* x, int64_t n);

// ---- introspection ------------------------------------------------------------------------------
// The instruction set the kernels above run with: "avx512", "avx2" or "portable". Chosen once at
// run time from the CPU; FLEXATTN_CPU_ISA=portable|avx2|avx512 picks a lower one (tests use it).
const char* isa_name();
// Runs register-resident FMA chains with that instruction set on the calling thread for `iters`
// iterations; returns the float32 flops done. The benchmark's peak comes from this.
double fma_chain_flops(int64_t iters);

}  // namespace flexattn::detail::cpu
