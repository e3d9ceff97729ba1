// GPU tests of a user's OWN functors: compiled by nvcc, so dispatch.h instantiates the CUDA kernels
// right here for a score_mod functor and a mask_mod lambda defined in this file (compile-time
// fusion, no runtime compilation). The stock variants (library-prebuilt) are in test_gpu_stock.cpp.
//
// One (score_mod, mask_mod) pair only: each pair costs every head dim x dtype x {fwd, bwd} kernels
// of nvcc time in this translation unit.
#include <flexattn/flexattn.h>
#include <gtest/gtest.h>

#include "gpu_check.h"
#include "tests/paged_check.h"

namespace fa = flexattn;
using fa::DType;
using fa::gpu_test::CaseOptions;
using fa::gpu_test::check_attention;
using fa::gpu_test::shape;

// A named namespace, not an anonymous one: the functor and lambda types become template arguments
// of __global__ functions, and nvcc's extended-lambda rules want a nameable enclosing function.
namespace flexattn_custom_test {

// A score_mod that is nonlinear in the score (so the backward must differentiate it through the
// dual numbers) and depends on every index argument.
struct GatedRelativeBias {
  float alpha;
  // The float64 oracle calls this with T = double on the host only; math.h's double overloads are
  // host functions, so tell nvcc not to check that instantiation for device use.
#pragma nv_exec_check_disable
  template <class T>
  FLEXATTN_HD T operator()(T s, int b, int h, int q, int kv) const {
    return s + alpha * float(h + 1) * fa::sigmoid(s) * float((q - kv) % 5) - 0.25f * float(b);
  }
};

// The mask is an extended __host__ __device__ lambda (nvcc --extended-lambda). nvcc forbids such a
// lambda inside a private member function, which a TEST body is, so it lives in this free function.
// It depends on the head (the block mask is built per head) and leaves every row with
// q % 13 == 5 fully masked.
void run_custom(CaseOptions c) {
  auto mask = [] __host__ __device__(int, int h, int q, int kv) -> bool {
    return kv <= q + 3 && q % 13 != 5 && (q + 2 * kv) % (h + 2) != 1;
  };
  c.name = "GatedRelativeBias + lambda mask";
  c.mask_H = c.shape.Hq;
  check_attention(c, GatedRelativeBias{0.3f}, mask);
}

// The same functors over a paged KV cache (the decode kernel): a mask without a tile rule is
// evaluated on every key below kv_len, and the rows q % 13 == 5 come out fully masked.
void run_custom_paged(int64_t D, DType dt) {
  auto mask = [] __host__ __device__(int, int h, int q, int kv) -> bool {
    return kv <= q + 3 && q % 13 != 5 && (q + 2 * kv) % (h + 2) != 1;
  };
  const uint64_t seed = fa::gpu_test::fresh_seed();
  SCOPED_TRACE("paged custom D=" + std::to_string(D) + " seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  fa::testing::PagedShape s;
  s.B = 3;
  s.Hq = 4;
  s.Hkv = 2;
  s.Lq = 3;
  s.D = s.Dv = D;
  s.page_size = 16;
  s.kv_len = {0, 50, 301};
  const auto in = fa::testing::make_paged_inputs(rng, s, dt, fa::Device::cuda);
  fa::AttentionOptions opts;
  opts.enable_gqa = true;
  fa::Tensor out = fa::gpu_test::poisoned({s.B, s.Hq, s.Lq, s.Dv}, dt);
  fa::Tensor lse = fa::gpu_test::poisoned({s.B, s.Hq, s.Lq}, DType::f32);
  fa::flex_attention_into(in.q.view(), in.kv, out.view(), lse.view(), GatedRelativeBias{0.3f},
                          mask, opts);
  fa::testing::check_paged(in, out.to_host(), lse.to_host(), dt,
                           fa::testing::resolved_scale(opts, D), GatedRelativeBias{0.3f}, mask);
}

class CustomFunctors : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (!fa::cuda_available()) GTEST_SKIP() << "no CUDA device visible: GPU tests skipped";
  }
};

TEST_P(CustomFunctors, Bf16GqaUnequalLengths) {
  CaseOptions c;
  c.dtype = DType::bf16;
  c.shape = shape(2, 4, 2, 257, 300, GetParam());
  run_custom(c);
  // This file's own kernels (its ThisUnit, sm90_unit.cuh) choose as the library's prebuilt ones do.
  EXPECT_EQ(fa::detail::cuda::last_launch(), fa::gpu_test::expected_kernel("bwd", GetParam()));
}

TEST_P(CustomFunctors, F16OddLengths) {
  CaseOptions c;
  c.dtype = DType::f16;
  c.shape = shape(1, 3, 3, 129, 127, GetParam());
  run_custom(c);
}

TEST_P(CustomFunctors, PagedDecodeBothDtypes) {
  run_custom_paged(GetParam(), DType::bf16);
  run_custom_paged(GetParam(), DType::f16);
}

INSTANTIATE_TEST_SUITE_P(Gpu, CustomFunctors, ::testing::Values(32, 64, 96, 128, 192, 256));

TEST(CustomFunctorsLong, Bf16Length1000) {
  if (!fa::cuda_available()) GTEST_SKIP() << "no CUDA device visible: GPU tests skipped";
  CaseOptions c;
  c.dtype = DType::bf16;
  c.shape = shape(1, 2, 1, 1000, 1000, 128);
  run_custom(c);
}

}  // namespace flexattn_custom_test
