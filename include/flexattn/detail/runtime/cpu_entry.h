// The tail of every generated CPU module (src/runtime/codegen.cpp writes the functors
// flexattn_rt::Score and flexattn_rt::Mask, then includes this): the library's out-of-line CPU
// functions as thunks through the HostTable (host_table.h says why), and the entry point.
// Compiled only by the runtime's host compiler into a shared object; never include it elsewhere.
#pragma once

#include <cstring>
#include <exception>

#include "../../flexattn.h"
#include "host_table.h"

namespace flexattn::detail::runtime {
// Set by the entry point before any work; the same table every call.
inline const HostTable* g_table = nullptr;

template <class F>
F make_functor(const void* state) {
  if constexpr (fstd::is_base_of_v<ModState, F>) {
    F f{};
    static_cast<ModState&>(f) = *static_cast<const ModState*>(state);
    return f;
  } else {
    return F{};
  }
}
}  // namespace flexattn::detail::runtime

// ---- thunks: same signatures as the library's (tensor.h, detail/cpu/kernels.h) --------------------
namespace flexattn {
size_t dtype_size(DType t) { return detail::runtime::g_table->dtype_size(t); }
}  // namespace flexattn

namespace flexattn::detail::cpu {
namespace rt = ::flexattn::detail::runtime;
int num_threads() { return rt::g_table->num_threads(); }
void parallel_for(int64_t n, void (*fn)(void*, int64_t, int), void* ctx) {
  rt::g_table->parallel_for(n, fn, ctx);
}
void gemm(Trans ta, Trans tb, int M, int N, int K, const float* A, int64_t lda, const float* B,
          int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  rt::g_table->gemm(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}
void gemm_rescale(Trans ta, Trans tb, int M, int N, int K, const float* A, int64_t lda,
                  const float* B, int64_t ldb, float* C, int64_t ldc, const float* row_scale) {
  rt::g_table->gemm_rescale(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, row_scale);
}
void load_row(const void* src, DType dtype, float* dst, int64_t n) {
  rt::g_table->load_row(src, dtype, dst, n);
}
void store_row(const float* src, void* dst, DType dtype, int64_t n) {
  rt::g_table->store_row(src, dst, dtype, n);
}
float exp_sub_sum(float* x, int64_t n, float c) { return rt::g_table->exp_sub_sum(x, n, c); }
float max_of(const float* x, int64_t n) { return rt::g_table->max_of(x, n); }
void scale(float* y, int64_t n, float a) { rt::g_table->scale(y, n, a); }
void online_softmax_t(float* st, int64_t ldst, int N, int M, float* row_max, float* row_sum,
                      float* row_scale) {
  rt::g_table->online_softmax_t(st, ldst, N, M, row_max, row_sum, row_scale);
}
bool rows_finite(const float* x, int64_t ld, int rows, int cols) {
  return rt::g_table->rows_finite(x, ld, rows, cols);
}
void bwd_probs(float* s, int64_t lds, int M, int N, const float* lse, float scale_) {
  rt::g_table->bwd_probs(s, lds, M, N, lse, scale_);
}
void bwd_dscores(float* p, int64_t ldp, const float* dp, int64_t lddp, const float* g, int64_t ldg,
                 int M, int N, const float* delta, float scale_) {
  rt::g_table->bwd_dscores(p, ldp, dp, lddp, g, ldg, M, N, delta, scale_);
}
void bwd_add(float* y, const float* x, int64_t n) { rt::g_table->bwd_add(y, x, n); }
}  // namespace flexattn::detail::cpu

extern "C" __attribute__((visibility("default"))) int flexattn_rt_cpu_entry(
    int op, void* args, const void* score, const void* mask,
    const flexattn::detail::runtime::HostTable* table, char* err, size_t err_len) {
  namespace fd = ::flexattn::detail;
  namespace rt = ::flexattn::detail::runtime;
  uint32_t sizes[5];
  rt::abi_sizes<flexattn::BlockMaskData>(sizes);
  if (table->abi != rt::kHostTableAbi || std::memcmp(sizes, table->sizes, sizeof sizes) != 0) {
    return 2;
  }
  rt::g_table = table;
  try {
    const auto s = rt::make_functor<flexattn_rt::Score>(score);
    const auto m = rt::make_functor<flexattn_rt::Mask>(mask);
    switch (static_cast<rt::CpuOp>(op)) {
      case rt::CpuOp::forward:
        fd::cpu::forward_any_lq(*static_cast<const fd::FwdArgs*>(args), s, m);
        break;
      case rt::CpuOp::backward:
        fd::cpu::backward(*static_cast<const fd::BwdArgs*>(args), s, m);
        break;
      case rt::CpuOp::paged_forward:
        fd::cpu::paged_forward(*static_cast<const fd::PagedArgs*>(args), s, m);
        break;
      case rt::CpuOp::block_mask:
        fd::cpu::build_block_mask(m, *static_cast<flexattn::BlockMaskData*>(args));
        break;
    }
    return 0;
  } catch (const std::exception& e) {
    std::strncpy(err, e.what(), err_len - 1);
    err[err_len - 1] = '\0';
    return 1;
  }
}

// The functors evaluated in double on the host, for oracles (detail::runtime::host_eval): the
// same source the kernels run, so a check compares the kernels against their own variant.
extern "C" __attribute__((visibility("default"))) double flexattn_rt_eval_score(
    const void* state, double score, int b, int h, int q_idx, int kv_idx) {
  return ::flexattn::detail::runtime::make_functor<flexattn_rt::Score>(state)(score, b, h, q_idx,
                                                                               kv_idx);
}
extern "C" __attribute__((visibility("default"))) int flexattn_rt_eval_mask(
    const void* state, int b, int h, int q_idx, int kv_idx) {
  return ::flexattn::detail::runtime::make_functor<flexattn_rt::Mask>(state)(b, h, q_idx, kv_idx)
             ? 1
             : 0;
}
