// Internal to src/cpu: one table of kernel entry points per instruction set. Each ISA lives in its
// own translation unit compiled with that ISA's flags (see sources.cmake); kernels.cpp picks one
// table at run time, once, so no code compiled with AVX flags ever runs on a CPU without them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flexattn/detail/cpu/kernels.h"

namespace flexattn::detail::cpu::isa {

struct KernelTable {
  const char* name;
  // row_scale: nullptr, or (with accumulate) C's rows are scaled by it before the sum.
  void (*gemm)(Trans ta, Trans tb, int M, int N, int K, const float* A, int64_t lda, const float* B,
               int64_t ldb, float* C, int64_t ldc, bool accumulate, const float* row_scale);
  void (*load_row)(const void* src, DType dtype, float* dst, int64_t n);
  void (*store_row)(const float* src, void* dst, DType dtype, int64_t n);
  float (*exp_sub_sum)(float* x, int64_t n, float c);
  float (*max_of)(const float* x, int64_t n);
  void (*scale)(float* y, int64_t n, float a);
  void (*online_softmax_t)(float* st, int64_t ldst, int N, int M, float* row_max, float* row_sum,
                           float* alpha);
  void (*bwd_probs)(float* s, int64_t lds, int M, int N, const float* lse, float scale);
  void (*bwd_dscores)(float* p, int64_t ldp, const float* dp, int64_t lddp, const float* g,
                      int64_t ldg, int M, int N, const float* delta, float scale);
  void (*bwd_add)(float* y, const float* x, int64_t n);
  bool (*rows_finite)(const float* x, int64_t ld, int rows, int cols);
  // Register-resident FMA chains for `iters` iterations; returns the flops done (and a value the
  // caller must consume so the loop is not optimised away, through `sink`).
  double (*fma_peak_loop)(int64_t iters, float* sink);
};

const KernelTable& portable_table();
#if defined(FLEXATTN_CPU_X86)
const KernelTable& avx2_table();
const KernelTable& avx512_table();
#endif

// The table in use (chosen on first call; FLEXATTN_CPU_ISA=portable|avx2|avx512 narrows the
// choice).
const KernelTable& active();

// Thread-local scratch of at least `floats` floats, 64-byte aligned, reused call to call (the
// gemm's packing buffer). Lives in kernels.cpp so no ISA-flagged object owns a std container.
float* pack_buffer(size_t floats);

// Scalar conversions shared by every ISA for tails and as the portable path. Round to nearest even;
// NaN stays NaN (quiet), infinities and subnormals are kept exactly as IEEE describes.
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);

}  // namespace flexattn::detail::cpu::isa
