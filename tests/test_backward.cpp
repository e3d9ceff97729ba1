// Backward pass on Device::cpu against the float64 reference backward, which is itself checked
// here by finite differences of the reference forward. Also: determinism (same bits twice), the
// owning front door, fully masked rows (zero gradients, no NaN).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "attn_check.h"
#include "test_functors.h"

namespace flexattn::testing {
namespace {

// ---- the oracle itself
// ------------------------------------------------------------------------------
TEST(ReferenceForward, HandComputed) {
  // One query, two keys, D = Dv = 1, scale 1: s = (1, 2).
  const Shape s{.B = 1, .Hq = 1, .Hkv = 1, .Lq = 1, .Lkv = 2, .D = 1, .Dv = 1};
  const auto r =
      reference::forward(s, {1.0}, {1.0, 2.0}, {3.0, 5.0}, 1.0, noop_score(), noop_mask());
  const double e1 = std::exp(1.0), e2 = std::exp(2.0);
  EXPECT_NEAR(r.lse[0], std::log(e1 + e2), 1e-14);
  EXPECT_NEAR(r.out[0], (3.0 * e1 + 5.0 * e2) / (e1 + e2), 1e-14);
  // Masking the second key leaves the first alone; masking both gives 0 / -inf.
  const auto one =
      reference::forward(s, {1.0}, {1.0, 2.0}, {3.0, 5.0}, 1.0, noop_score(), causal());
  EXPECT_DOUBLE_EQ(one.out[0], 3.0);
  EXPECT_DOUBLE_EQ(one.lse[0], 1.0);
  const auto none =
      reference::forward(s, {1.0}, {1.0, 2.0}, {3.0, 5.0}, 1.0, noop_score(), NothingMask{});
  EXPECT_EQ(none.out[0], 0.0);
  EXPECT_EQ(none.lse[0], -std::numeric_limits<double>::infinity());
}

TEST(ReferenceBackward, MatchesFiniteDifferencesOfReferenceForward) {
  // GQA, a nonlinear composed score_mod, and a mask with a fully masked row (q = 2 of head 1).
  const Shape sh{.B = 2, .Hq = 4, .Hkv = 2, .Lq = 5, .Lkv = 6, .D = 3, .Dv = 2};
  const auto score_mod = compose(alibi(4), compose(softcap(2.0f), CustomScore{0.3f}));
  const auto mask_mod = [](int, int h, int q, int kv) {
    return kv <= q + 1 && !(h == 1 && q == 2);
  };
  const double scale = 0.7;
  const uint64_t seed = test_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<double> q = reference::to_double(reference::random_normal(sh.q_numel(), rng));
  std::vector<double> k = reference::to_double(reference::random_normal(sh.k_numel(), rng));
  std::vector<double> v = reference::to_double(reference::random_normal(sh.v_numel(), rng));
  const std::vector<double> dout =
      reference::to_double(reference::random_normal(sh.out_numel(), rng));

  const reference::Grads g = reference::backward(sh, q, k, v, dout, scale, score_mod, mask_mod);
  // loss = sum(out * dout); its gradient is what backward returns.
  auto loss = [&] {
    const auto r = reference::forward(sh, q, k, v, scale, score_mod, mask_mod);
    double l = 0.0;
    for (size_t i = 0; i < r.out.size(); ++i) l += r.out[i] * dout[i];
    return l;
  };
  auto check = [&](const char* name, std::vector<double>& x, const std::vector<double>& grad) {
    for (size_t i = 0; i < x.size(); ++i) {
      const double keep = x[i], h = 1e-6;
      x[i] = keep + h;
      const double up = loss();
      x[i] = keep - h;
      const double down = loss();
      x[i] = keep;
      EXPECT_NEAR(grad[i], (up - down) / (2 * h), 1e-7 * std::max(1.0, std::fabs(grad[i])))
          << name << "[" << i << "]";
    }
  };
  check("dq", q, g.dq);
  check("dk", k, g.dk);
  check("dv", v, g.dv);
  // The fully masked row (b, h=1, q=2) has exactly zero dq.
  for (int64_t b = 0; b < sh.B; ++b)
    for (int64_t e = 0; e < sh.D; ++e)
      EXPECT_EQ(g.dq[size_t(((b * sh.Hq + 1) * sh.Lq + 2) * sh.D + e)], 0.0);
}

// ---- the library against the oracle -------------------------------------------------------------
class Backward : public DtypeSuite {};

TEST_P(Backward, StockMasks) {
  Problem p = problem({.B = 1, .Hq = 2, .Hkv = 2, .Lq = 97, .Lkv = 131, .D = 32, .Dv = 32});
  p.block_q = 64;
  p.block_kv = 32;
  FLEXATTN_SEEDED_RNG(rng);
  const std::vector<int32_t> docs = random_documents(131, 40, rng);
  check_backward(p, noop_score(), noop_mask());
  check_backward(p, noop_score(), causal());
  check_backward(p, noop_score(), sliding_window(9));
  check_backward(p, noop_score(), prefix_lm(30));
  check_backward(p, noop_score(), document(docs.data()));
  check_backward(p, noop_score(), and_masks(causal(), document(docs.data())));
  check_backward(p, noop_score(), or_masks(sliding_window(5), prefix_lm(7)));
  check_backward(p, noop_score(), not_mask(causal()));
}

TEST_P(Backward, StockMasksDefaultBlocks) {
  Problem p = problem({.B = 1, .Hq = 2, .Hkv = 2, .Lq = 200, .Lkv = 257, .D = 64, .Dv = 64});
  check_backward(p, noop_score(), noop_mask());
  check_backward(p, noop_score(), causal());
}

TEST_P(Backward, ScoreMods) {
  Problem p = problem({.B = 2, .Hq = 3, .Hkv = 3, .Lq = 70, .Lkv = 90, .D = 32, .Dv = 16});
  p.block_q = 32;
  p.block_kv = 32;
  check_backward(p, relative_position(), noop_mask());
  check_backward(p, alibi(3), causal());
  check_backward(p, softcap(2.0f), noop_mask());
  check_backward(p, compose(alibi(3), softcap(5.0f)), causal());
  check_backward(p, CustomScore{0.7f}, PerBatchHeadMask{});
  check_backward(p, lambda_score(), lambda_mask());
}

TEST_P(Backward, GroupedAndMultiQuery) {
  // dK/dV sum over the query heads of a group.
  Problem gqa = problem({.B = 2, .Hq = 6, .Hkv = 2, .Lq = 65, .Lkv = 80, .D = 32, .Dv = 48});
  gqa.block_q = 32;
  gqa.block_kv = 64;
  check_backward(gqa, alibi(6), causal());
  Problem mqa = problem({.B = 1, .Hq = 4, .Hkv = 1, .Lq = 100, .Lkv = 33, .D = 16, .Dv = 16});
  check_backward(mqa, softcap(4.0f), PerHeadMask{});
}

TEST_P(Backward, FullyMaskedRows) {
  Problem p = problem({.B = 1, .Hq = 2, .Hkv = 2, .Lq = 40, .Lkv = 20, .D = 16, .Dv = 8});
  p.block_q = 16;
  p.block_kv = 16;
  EXPECT_EQ(check_backward(p, noop_score(), KillRowsMask{}).masked_rows, 8);
  EXPECT_EQ(check_backward(p, alibi(2), sliding_window(4)).masked_rows, 2 * 16);
  EXPECT_EQ(check_backward(p, softcap(3.0f), NothingMask{}).masked_rows, 2 * 40);  // all grads 0
}

TEST_P(Backward, BroadcastMasksAndBlockSizes) {
  Problem p = problem({.B = 2, .Hq = 2, .Hkv = 2, .Lq = 61, .Lkv = 75, .D = 16, .Dv = 16});
  for (auto [bq, bkv] : {std::pair{16, 16}, {17, 33}, {64, 32}}) {
    p.block_q = bq;
    p.block_kv = bkv;
    p.mask_B = 1;
    p.mask_H = 1;
    check_backward(p, noop_score(), causal());
    p.mask_B = 2;
    p.mask_H = 1;
    check_backward(p, noop_score(), PerBatchMask{});
    p.mask_B = 1;
    p.mask_H = 2;
    check_backward(p, noop_score(), PerHeadMask{});
  }
}

TEST_P(Backward, StridedViewsAndScale) {
  Problem p = problem({.B = 2, .Hq = 4, .Hkv = 2, .Lq = 50, .Lkv = 70, .D = 24, .Dv = 40});
  p.strided = true;
  p.block_q = 32;
  p.block_kv = 32;
  p.scale = 0.4f;
  check_backward(p, alibi(4), causal());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Backward, ::testing::Values(DType::f32, DType::f16, DType::bf16),
                         [](const auto& info) { return std::string(to_string(info.param)); });

TEST(BackwardShapes, OddLengths) {
  const int64_t pairs[][2] = {{1, 1}, {1, 129}, {129, 1}, {17, 127}, {127, 17}, {1000, 1000}};
  for (auto [lq, lkv] : pairs) {
    Problem p;
    p.shape = {.B = 1, .Hq = 1, .Hkv = 1, .Lq = lq, .Lkv = lkv, .D = 32, .Dv = 32};
    check_backward(p, noop_score(), causal());
    if (lq * lkv < 100000) check_backward(p, noop_score(), noop_mask());
  }
}

TEST(BackwardShapes, HeadDims) {
  const int64_t dims[][2] = {{1, 1}, {3, 7}, {64, 16}, {128, 128}, {200, 40}, {256, 256}};
  for (auto [d, dv] : dims) {
    Problem p;
    p.shape = {.B = 1, .Hq = 2, .Hkv = 1, .Lq = 33, .Lkv = 50, .D = d, .Dv = dv};
    check_backward(p, noop_score(), causal());
  }
}

// ---- determinism and the front door
// ---------------------------------------------------------------
TEST(BackwardApi, DeterministicBitwise) {
  // Several q- and kv-tiles per head and several heads so that threads really interleave.
  const Shape s{.B = 2, .Hq = 4, .Hkv = 2, .Lq = 300, .Lkv = 257, .D = 64, .Dv = 32};
  for (DType dt : {DType::f32, DType::bf16}) {
    const uint64_t seed = test_seed();
    SCOPED_TRACE("seed=" + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const auto q = random_input(s.q_numel(), dt, rng), k = random_input(s.k_numel(), dt, rng),
               v = random_input(s.v_numel(), dt, rng), dout = random_input(s.out_numel(), dt, rng);
    const Tensor tq = Tensor::from_host(q.data(), {s.B, s.Hq, s.Lq, s.D}, dt);
    const Tensor tk = Tensor::from_host(k.data(), {s.B, s.Hkv, s.Lkv, s.D}, dt);
    const Tensor tv = Tensor::from_host(v.data(), {s.B, s.Hkv, s.Lkv, s.Dv}, dt);
    const Tensor tdo = Tensor::from_host(dout.data(), {s.B, s.Hq, s.Lq, s.Dv}, dt);
    AttentionOptions opts;
    opts.enable_gqa = true;
    const auto mask =
        create_block_mask(causal(), 1, 1, s.Lq, s.Lkv, {.block_q = 32, .block_kv = 64});
    const AttentionOutput f = flex_attention(tq, tk, tv, softcap(5.0f), mask, opts);
    const AttentionGrads a =
        flex_attention_backward(tq, tk, tv, f.out, f.lse, tdo, softcap(5.0f), mask, opts);
    const AttentionGrads b =
        flex_attention_backward(tq, tk, tv, f.out, f.lse, tdo, softcap(5.0f), mask, opts);
    auto same = [](const Tensor& x, const Tensor& y) {
      return std::memcmp(x.data(), y.data(), size_t(x.numel()) * dtype_size(x.dtype())) == 0;
    };
    EXPECT_TRUE(same(a.dq, b.dq)) << "dq differs between two identical calls";
    EXPECT_TRUE(same(a.dk, b.dk)) << "dk differs between two identical calls";
    EXPECT_TRUE(same(a.dv, b.dv)) << "dv differs between two identical calls";
  }
}

TEST(BackwardApi, NothingKeptGivesExactZeros) {
  // Every tile skipped: out 0, lse -inf and every gradient exactly 0 (not merely small), no NaN.
  const Shape s{.B = 2, .Hq = 2, .Hkv = 1, .Lq = 33, .Lkv = 20, .D = 16, .Dv = 8};
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    FLEXATTN_SEEDED_RNG(rng);
    const auto q = random_input(s.q_numel(), dt, rng), k = random_input(s.k_numel(), dt, rng),
               v = random_input(s.v_numel(), dt, rng), dout = random_input(s.out_numel(), dt, rng);
    const Tensor tq = Tensor::from_host(q.data(), {s.B, s.Hq, s.Lq, s.D}, dt);
    const Tensor tk = Tensor::from_host(k.data(), {s.B, s.Hkv, s.Lkv, s.D}, dt);
    const Tensor tv = Tensor::from_host(v.data(), {s.B, s.Hkv, s.Lkv, s.Dv}, dt);
    const Tensor tdo = Tensor::from_host(dout.data(), {s.B, s.Hq, s.Lq, s.Dv}, dt);
    AttentionOptions opts;
    opts.enable_gqa = true;
    const auto mask =
        create_block_mask(NothingMask{}, 1, 1, s.Lq, s.Lkv, {.block_q = 16, .block_kv = 16});
    const AttentionOutput f = flex_attention(tq, tk, tv, softcap(3.0f), mask, opts);
    for (float x : f.out.to_host()) ASSERT_EQ(x, 0.0f) << to_string(dt);
    for (float x : f.lse.to_host()) ASSERT_EQ(x, -kInf) << to_string(dt);
    const AttentionGrads g =
        flex_attention_backward(tq, tk, tv, f.out, f.lse, tdo, softcap(3.0f), mask, opts);
    for (const Tensor* t : {&g.dq, &g.dk, &g.dv})
      for (float x : t->to_host()) ASSERT_EQ(x, 0.0f) << to_string(dt);
  }
}

TEST(BackwardApi, FrontDoorMatchesIntoAndReference) {
  const Shape s{.B = 1, .Hq = 2, .Hkv = 1, .Lq = 45, .Lkv = 39, .D = 16, .Dv = 24};
  const DType dt = DType::f16;
  const uint64_t seed = test_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const auto q = random_input(s.q_numel(), dt, rng), k = random_input(s.k_numel(), dt, rng),
             v = random_input(s.v_numel(), dt, rng), dout = random_input(s.out_numel(), dt, rng);
  const Tensor tq = Tensor::from_host(q.data(), {s.B, s.Hq, s.Lq, s.D}, dt);
  const Tensor tk = Tensor::from_host(k.data(), {s.B, s.Hkv, s.Lkv, s.D}, dt);
  const Tensor tv = Tensor::from_host(v.data(), {s.B, s.Hkv, s.Lkv, s.Dv}, dt);
  const Tensor tdo = Tensor::from_host(dout.data(), {s.B, s.Hq, s.Lq, s.Dv}, dt);
  AttentionOptions opts;
  opts.enable_gqa = true;
  const AttentionOutput f = flex_attention(tq, tk, tv, relative_position(), opts);
  const AttentionGrads g =
      flex_attention_backward(tq, tk, tv, f.out, f.lse, tdo, relative_position(), opts);
  EXPECT_EQ(g.dq.shape(), tq.shape());
  EXPECT_EQ(g.dk.shape(), tk.shape());
  EXPECT_EQ(g.dv.shape(), tv.shape());
  EXPECT_EQ(g.dq.dtype(), dt);

  // The overload without a score_mod is the noop one.
  const AttentionOutput f0 = flex_attention(tq, tk, tv, opts);
  const AttentionGrads g0 = flex_attention_backward(tq, tk, tv, f0.out, f0.lse, tdo, opts);
  const auto dense = create_block_mask(noop_mask(), 1, 1, s.Lq, s.Lkv);
  const AttentionGrads g1 =
      flex_attention_backward(tq, tk, tv, f0.out, f0.lse, tdo, noop_score(), dense, opts);
  EXPECT_EQ(std::memcmp(g0.dk.data(), g1.dk.data(), size_t(g0.dk.numel()) * 2), 0);

  const float scale = 1.0f / std::sqrt(float(s.D));
  const auto ref = reference::backward(s, reference::to_double(q), reference::to_double(k),
                                       reference::to_double(v), reference::to_double(dout), scale,
                                       relative_position(), noop_mask());
  // The naive backward is given the out / lse our backward was given (attn_check.h says why).
  const LowpForward given{f.out.to_host(), f.lse.to_host()};
  const auto ng =
      naive_backward_lowp(s, dt, scale, q, k, v, dout, given, relative_position(), noop_mask());
  expect_close("dq", g.dq.to_host(), ref.dq, ng.dq, dt);
  expect_close("dk", g.dk.to_host(), ref.dk, ng.dk, dt);
  expect_close("dv", g.dv.to_host(), ref.dv, ng.dv, dt);
}

}  // namespace
}  // namespace flexattn::testing
