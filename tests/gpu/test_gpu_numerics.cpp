// Numerics at the edges on the GPU (issue 8, items 8 and 10), through the prebuilt kernels of the
// stock variants: garbage (NaN, inf) in masked keys adds nothing - the paged-cache case - and huge
// finite scores give finite, correct gradients. The same checks as the CPU suite
// (tests/numerics_check.h: the float64 reference, NaN / inf / finite classes, poisoned outputs),
// at head dims 64 and 128 and with 128-row tiles, so that the masked keys sit in partial tiles of
// the sm90 kernels (and of the sm80 ones, in run_all.sh's FLEXATTN_CUDA_SM80=1 pass).
#include <cuda_runtime.h>
#include <flexattn/flexattn.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "tests/numerics_check.h"

namespace flexattn::testing {
namespace {

class GpuNumerics : public ::testing::TestWithParam<std::tuple<DType, int>> {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device visible: GPU tests skipped";
  }
  Problem problem(int64_t L, int64_t Lkv) const {
    const int D = std::get<1>(GetParam());
    Problem p;
    p.shape = Shape{.B = 1, .Hq = 2, .Hkv = 1, .Lq = L, .Lkv = Lkv, .D = D, .Dv = D};
    p.dtype = std::get<0>(GetParam());
    return p;
  }
};

// Garbage in keys of kv head 0: key 200 sits in the partial diagonal tile (rows 128..255) of the
// causal mask and is masked there for rows 128..199 (rows 0..127 skip its tile); key 290 in the
// ragged last tile, masked for rows 256..289.
TEST_P(GpuNumerics, NonFiniteMaskedKeysAddNothing) {
  FLEXATTN_SEEDED_RNG(rng);
  const Problem p = problem(300, 300);
  const Inputs in = random_inputs(p.shape, p.dtype, rng);
  for (int which = 0; which < 3; ++which) {  // K, V, both
    SCOPED_TRACE(which == 0 ? "garbage in k" : which == 1 ? "garbage in v" : "garbage in k and v");
    Inputs bad = with_bad_key(in, p.shape, 0, 200, kNaN, which != 1, which != 0);
    bad = with_bad_key(bad, p.shape, 0, 290, which == 0 ? -kInf : kInf, which != 1, which != 0);
    check_on(Device::cuda, p, bad, in, noop_score(), causal(), causal(), true);
    check_on(Device::cuda, p, bad, in, alibi(2), causal(), causal(), true);
  }
}

// A serving-shaped case: the keys of another document hold NaN, and no row of this one may see
// them (causal_document: documents [0, 200) and [200, 300)).
TEST_P(GpuNumerics, GarbageInAnotherDocument) {
  FLEXATTN_SEEDED_RNG(rng);
  const Problem p = problem(300, 300);
  const Inputs in = random_inputs(p.shape, p.dtype, rng);
  std::vector<int32_t> ids(300, 0);
  for (int i = 200; i < 300; ++i) ids[size_t(i)] = 1;
  int32_t* dev_ids = nullptr;
  ASSERT_EQ(cudaMalloc(&dev_ids, ids.size() * sizeof(int32_t)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dev_ids, ids.data(), ids.size() * sizeof(int32_t), cudaMemcpyHostToDevice),
            cudaSuccess);
  Inputs bad = in;
  for (int key : {150, 199}) bad = with_bad_key(bad, p.shape, 0, key, kNaN, true, true);
  const auto host_mask = and_masks(causal(), document(ids.data()));
  const Counts c = check_on(Device::cuda, p, bad, in, noop_score(),
                            and_masks(causal(), document(dev_ids)), host_mask, true);
  EXPECT_EQ(c.finite_rows, 2 * (150 + 100));  // document 1 and rows 0..149 of document 0
  ASSERT_EQ(cudaFree(dev_ids), cudaSuccess);
}

// |q|, |k| ~ 1e15: scores ~ 1e30, finite; p is one-hot, every gradient finite. dS of the kept key
// is dP - delta, two sums of the same products in different orders (a tensor-core product and
// the preprocess' dot): ~1e-6 apart, times |k| ~ 1e15 in dq, and dk alike - an absolute 1e-5 of
// scale * |k| * D is allowed there; out, lse and dv (the picked dout rows) keep the usual rule.
// Then scores of a few hundred, where a log2-domain max is off by ulps, and a negative scale.
TEST_P(GpuNumerics, HugeFiniteScoresGiveFiniteGradients) {
  if (std::get<0>(GetParam()) == DType::f16) GTEST_SKIP() << "1e15 is outside the f16 range";
  FLEXATTN_SEEDED_RNG(rng);
  Problem p = problem(257, 300);
  const Inputs in = random_inputs(p.shape, p.dtype, rng, 1e15f);
  const double big = 1e-5 * 1e15 * double(p.shape.D) / std::sqrt(double(p.shape.D));
  const Counts c =
      check_on(Device::cuda, p, in, in, noop_score(), causal(), causal(), true, big);
  EXPECT_EQ(c.finite_rows, p.shape.lse_numel());
  check_on(Device::cuda, p, in, in, noop_score(), noop_mask(), noop_mask(), true, big);
  check_on(Device::cuda, p, in, in, alibi(2), causal(), causal(), true, big);
  const Inputs mid = random_inputs(p.shape, p.dtype, rng, 6.0f);
  check_on(Device::cuda, p, mid, mid, noop_score(), causal(), causal(), true);
  p.scale = -0.125f;
  check_on(Device::cuda, p, mid, mid, noop_score(), causal(), causal(), true);
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuNumerics,
                         ::testing::Combine(::testing::Values(DType::bf16, DType::f16),
                                            ::testing::Values(64, 128)),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) == DType::bf16 ? "bf16"
                                                                                     : "f16") +
                                  "_d" + std::to_string(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace flexattn::testing
