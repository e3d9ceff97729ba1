// Forward pass on Device::cpu against the float64 reference (tests/attn_check.h has the rule):
// every stock mask and score_mod, custom functors, every dtype, odd lengths, GQA/MQA, fully
// masked rows, broadcast and per-(b, h) block masks, head dims 1..256 with Dv != D, scale, block
// sizes, strided views, and the owning front door.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "attn_check.h"
#include "test_functors.h"

namespace flexattn::testing {
namespace {

class Forward : public DtypeSuite {};

TEST_P(Forward, StockMasks) {
  // 64x64 tiles over 129 x 127: skipped, partial, full and ragged tiles all occur.
  Problem p = problem({.B = 2, .Hq = 2, .Hkv = 2, .Lq = 129, .Lkv = 127, .D = 32, .Dv = 32});
  p.block_q = 64;
  p.block_kv = 64;
  FLEXATTN_SEEDED_RNG(rng);
  const std::vector<int32_t> docs = random_documents(129, 40, rng);
  check_forward(p, noop_score(), noop_mask());
  check_forward(p, noop_score(), causal());
  check_forward(p, noop_score(), sliding_window(13));
  check_forward(p, noop_score(), prefix_lm(70));
  check_forward(p, noop_score(), document(docs.data()));
  check_forward(p, noop_score(), and_masks(causal(), document(docs.data())));
  check_forward(p, noop_score(), or_masks(sliding_window(5), prefix_lm(7), document(docs.data())));
  // kv > q: rows 126..128 see no key of the 127.
  EXPECT_EQ(check_forward(p, noop_score(), not_mask(causal())).masked_rows, 2 * 2 * 3);
  // causal minus the last 4 keys: rows 0..3 see nothing.
  EXPECT_EQ(
      check_forward(p, noop_score(), and_masks(causal(), not_mask(sliding_window(3)))).masked_rows,
      2 * 2 * 4);
}

TEST_P(Forward, StockMasksDefaultBlocks) {
  Problem p = problem({.B = 1, .Hq = 2, .Hkv = 2, .Lq = 300, .Lkv = 257, .D = 64, .Dv = 64});
  check_forward(p, noop_score(), noop_mask());
  check_forward(p, noop_score(), causal());
  check_forward(p, noop_score(), sliding_window(100));
}

TEST_P(Forward, StockScoreMods) {
  Problem p = problem({.B = 1, .Hq = 4, .Hkv = 4, .Lq = 100, .Lkv = 150, .D = 64, .Dv = 64});
  p.block_q = 32;
  p.block_kv = 64;
  check_forward(p, relative_position(), noop_mask());
  check_forward(p, alibi(4), causal());
  check_forward(p, softcap(2.0f), noop_mask());  // strongly nonlinear
  check_forward(p, softcap(30.0f), sliding_window(20));
  check_forward(p, compose(alibi(4), softcap(5.0f)), causal());
  check_forward(p, compose(relative_position(), softcap(20.0f)), noop_mask());
}

TEST_P(Forward, CustomFunctorAndLambda) {
  Problem p = problem({.B = 2, .Hq = 3, .Hkv = 3, .Lq = 77, .Lkv = 91, .D = 40, .Dv = 24});
  p.block_q = 32;
  p.block_kv = 32;
  check_forward(p, CustomScore{0.7f}, PerBatchHeadMask{});
  check_forward(p, lambda_score(), lambda_mask());
  check_forward(p, CustomScore{}, causal());
  FLEXATTN_SEEDED_RNG(table_rng);
  const std::vector<unsigned char> table = random_table(77, 91, table_rng());
  check_forward(p, lambda_score(), TableMask{table.data(), 91});
}

TEST_P(Forward, GroupedAndMultiQuery) {
  // h passed to the functors is the QUERY head: alibi(8) slopes differ within a kv group.
  Problem gqa = problem({.B = 2, .Hq = 8, .Hkv = 2, .Lq = 65, .Lkv = 129, .D = 32, .Dv = 48});
  gqa.block_q = 32;
  gqa.block_kv = 64;
  check_forward(gqa, alibi(8), causal());
  check_forward(gqa, CustomScore{}, PerBatchHeadMask{});
  Problem mqa = problem({.B = 1, .Hq = 4, .Hkv = 1, .Lq = 129, .Lkv = 65, .D = 16, .Dv = 16});
  check_forward(mqa, noop_score(), PerHeadMask{});
  check_forward(mqa, softcap(4.0f), noop_mask());
}

TEST_P(Forward, FullyMaskedRows) {
  Problem p = problem({.B = 1, .Hq = 2, .Hkv = 2, .Lq = 40, .Lkv = 20, .D = 16, .Dv = 8});
  p.block_q = 16;
  p.block_kv = 16;
  // Rows q % 5 == 3 of head 0: 8 rows.
  EXPECT_EQ(check_forward(p, noop_score(), KillRowsMask{}).masked_rows, 8);
  // Window of 4 behind each query over 20 keys: rows 24..39 see nothing, in both heads.
  EXPECT_EQ(check_forward(p, alibi(2), sliding_window(4)).masked_rows, 2 * 16);
  // Nothing at all: every tile skipped, every row still written.
  EXPECT_EQ(check_forward(p, noop_score(), NothingMask{}).masked_rows, 2 * 40);
}

TEST_P(Forward, BroadcastAndPerHeadBlockMasks) {
  Problem p = problem({.B = 2, .Hq = 3, .Hkv = 3, .Lq = 70, .Lkv = 90, .D = 16, .Dv = 16});
  p.block_q = 16;
  p.block_kv = 32;
  p.mask_B = 1;
  p.mask_H = 1;
  check_forward(p, noop_score(), causal());
  p.mask_B = 2;
  p.mask_H = 1;
  check_forward(p, noop_score(), PerBatchMask{});
  p.mask_B = 1;
  p.mask_H = 3;
  check_forward(p, alibi(3), PerHeadMask{});
  p.mask_B = 2;
  p.mask_H = 3;
  check_forward(p, noop_score(), PerBatchHeadMask{});
}

TEST_P(Forward, ScaleOption) {
  Problem p = problem({.B = 1, .Hq = 2, .Hkv = 2, .Lq = 33, .Lkv = 47, .D = 64, .Dv = 64});
  for (float scale : {0.3f, 1.0f, -0.5f}) {
    p.scale = scale;
    check_forward(p, noop_score(), causal());
  }
}

TEST_P(Forward, BlockSizes) {
  Problem p = problem({.B = 1, .Hq = 2, .Hkv = 2, .Lq = 100, .Lkv = 111, .D = 32, .Dv = 32});
  FLEXATTN_SEEDED_RNG(rng);
  const std::vector<int32_t> docs = random_documents(111, 30, rng);
  for (auto [bq, bkv] : {std::pair{16, 16}, {32, 64}, {64, 32}, {17, 33}, {256, 256}, {3, 5}}) {
    p.block_q = bq;
    p.block_kv = bkv;
    check_forward(p, noop_score(), causal());
    check_forward(p, alibi(2), and_masks(causal(), document(docs.data())));
  }
}

TEST_P(Forward, StridedViews) {
  Problem p = problem({.B = 2, .Hq = 4, .Hkv = 2, .Lq = 50, .Lkv = 70, .D = 24, .Dv = 40});
  p.strided = true;
  p.block_q = 32;
  p.block_kv = 32;
  check_forward(p, alibi(4), causal());
  check_forward(p, CustomScore{}, lambda_mask());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Forward, ::testing::Values(DType::f32, DType::f16, DType::bf16),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// ---- shapes (f32 and bf16 only: the dtype axis is covered above) --------------------------------
TEST(ForwardShapes, OddLengths) {
  const int64_t pairs[][2] = {{1, 1},    {1, 17},    {17, 1},    {1, 1000},   {1000, 1},
                              {17, 129}, {127, 129}, {129, 127}, {1000, 1000}};
  for (DType dt : {DType::f32, DType::bf16}) {
    for (auto [lq, lkv] : pairs) {
      Problem p;
      p.shape = {.B = 1, .Hq = 1, .Hkv = 1, .Lq = lq, .Lkv = lkv, .D = 32, .Dv = 32};
      p.dtype = dt;
      check_forward(p, noop_score(), causal());
      if (lq * lkv < 100000) check_forward(p, noop_score(), noop_mask());
    }
  }
}

TEST(ForwardShapes, HeadDims) {
  const int64_t dims[][2] = {{1, 1},    {1, 16},    {16, 1},    {3, 5},   {33, 65}, {64, 128},
                             {128, 64}, {100, 100}, {256, 256}, {256, 8}, {8, 256}};
  for (auto [d, dv] : dims) {
    Problem p;
    p.shape = {.B = 1, .Hq = 2, .Hkv = 1, .Lq = 33, .Lkv = 70, .D = d, .Dv = dv};
    check_forward(p, noop_score(), causal());
  }
  for (auto [d, dv] : {std::pair<int64_t, int64_t>{128, 128}, {256, 256}, {80, 40}}) {
    Problem p;
    p.shape = {.B = 1, .Hq = 2, .Hkv = 2, .Lq = 40, .Lkv = 40, .D = d, .Dv = dv};
    p.dtype = DType::bf16;
    check_forward(p, softcap(10.0f), noop_mask());
  }
}

// ---- the owning front door
// ------------------------------------------------------------------------
struct FrontDoorInputs {
  Shape s{.B = 2, .Hq = 4, .Hkv = 2, .Lq = 37, .Lkv = 53, .D = 16, .Dv = 8};
  uint64_t seed = test_seed();  // callers SCOPED_TRACE it
  std::vector<float> q, k, v;
  Tensor tq, tk, tv;
  explicit FrontDoorInputs(DType dt) {
    std::mt19937_64 rng(seed);
    q = random_input(s.q_numel(), dt, rng);
    k = random_input(s.k_numel(), dt, rng);
    v = random_input(s.v_numel(), dt, rng);
    tq = Tensor::from_host(q.data(), {s.B, s.Hq, s.Lq, s.D}, dt);
    tk = Tensor::from_host(k.data(), {s.B, s.Hkv, s.Lkv, s.D}, dt);
    tv = Tensor::from_host(v.data(), {s.B, s.Hkv, s.Lkv, s.Dv}, dt);
  }
};

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.data(), b.data(), size_t(a.numel()) * dtype_size(a.dtype())) == 0;
}

TEST(ForwardApi, FrontDoorMatchesIntoAndReference) {
  for (DType dt : {DType::f32, DType::f16}) {
    FrontDoorInputs in(dt);
    SCOPED_TRACE("seed=" + std::to_string(in.seed));
    const Shape& s = in.s;
    AttentionOptions opts;
    opts.enable_gqa = true;
    const auto mask =
        create_block_mask(causal(), 1, 1, s.Lq, s.Lkv, {.block_q = 16, .block_kv = 16});
    const AttentionOutput r = flex_attention(in.tq, in.tk, in.tv, alibi(4), mask, opts);
    EXPECT_EQ(r.out.shape(), (std::vector<int64_t>{s.B, s.Hq, s.Lq, s.Dv}));
    EXPECT_EQ(r.out.dtype(), dt);
    EXPECT_EQ(r.lse.shape(), (std::vector<int64_t>{s.B, s.Hq, s.Lq}));
    EXPECT_EQ(r.lse.dtype(), DType::f32);

    Tensor out = Tensor::empty({s.B, s.Hq, s.Lq, s.Dv}, dt),
           lse = Tensor::empty({s.B, s.Hq, s.Lq}, DType::f32);
    out.fill(kNaN);
    lse.fill(kNaN);
    flex_attention_into(in.tq.view(), in.tk.view(), in.tv.view(), out.view(), lse.view(), alibi(4),
                        mask, opts);
    EXPECT_TRUE(same_bytes(r.out, out));
    EXPECT_TRUE(same_bytes(r.lse, lse));

    const float scale = 1.0f / std::sqrt(float(s.D));
    const auto ref = reference::forward(s, reference::to_double(in.q), reference::to_double(in.k),
                                        reference::to_double(in.v), scale, alibi(4), causal());
    const auto naive = naive_forward_lowp(s, dt, scale, in.q, in.k, in.v, alibi(4), causal());
    expect_close("out", r.out.to_host(), ref.out, naive.out, dt);
    expect_close("lse", r.lse.to_host(), ref.lse, naive.lse, DType::f32);
  }
}

TEST(ForwardApi, OverloadsWithoutScoreModOrBlockMask) {
  FrontDoorInputs in(DType::f32);
  SCOPED_TRACE("seed=" + std::to_string(in.seed));
  const Shape& s = in.s;
  AttentionOptions opts;
  opts.enable_gqa = true;
  const auto dense = create_block_mask(noop_mask(), 1, 1, s.Lq, s.Lkv);
  const AttentionOutput full = flex_attention(in.tq, in.tk, in.tv, noop_score(), dense, opts);
  const AttentionOutput neither = flex_attention(in.tq, in.tk, in.tv, opts);
  EXPECT_TRUE(same_bytes(full.out, neither.out));
  EXPECT_TRUE(same_bytes(full.lse, neither.lse));

  const auto causal_mask = create_block_mask(causal(), 1, 1, s.Lq, s.Lkv);
  EXPECT_TRUE(same_bytes(flex_attention(in.tq, in.tk, in.tv, causal_mask, opts).out,
                         flex_attention(in.tq, in.tk, in.tv, noop_score(), causal_mask, opts).out));
  EXPECT_TRUE(same_bytes(flex_attention(in.tq, in.tk, in.tv, softcap(3.0f), opts).out,
                         flex_attention(in.tq, in.tk, in.tv, softcap(3.0f), dense, opts).out));

  const float scale = 1.0f / std::sqrt(float(s.D));
  const auto ref = reference::forward(s, reference::to_double(in.q), reference::to_double(in.k),
                                      reference::to_double(in.v), scale, noop_score(), noop_mask());
  const auto naive =
      naive_forward_lowp(s, DType::f32, scale, in.q, in.k, in.v, noop_score(), noop_mask());
  expect_close("out", neither.out.to_host(), ref.out, naive.out, DType::f32);
}

TEST(ForwardApi, DefaultScaleIsInverseSqrtHeadDim) {
  FrontDoorInputs in(DType::f32);
  AttentionOptions opts;
  opts.enable_gqa = true;
  const AttentionOutput implicit = flex_attention(in.tq, in.tk, in.tv, opts);
  opts.scale = 1.0f / std::sqrt(float(in.s.D));
  const AttentionOutput explicit_ = flex_attention(in.tq, in.tk, in.tv, opts);
  EXPECT_TRUE(same_bytes(implicit.out, explicit_.out));
  EXPECT_TRUE(same_bytes(implicit.lse, explicit_.lse));
}

TEST(ForwardApi, Deterministic) {
  FrontDoorInputs in(DType::bf16);
  AttentionOptions opts;
  opts.enable_gqa = true;
  const AttentionOutput a = flex_attention(in.tq, in.tk, in.tv, CustomScore{}, opts);
  const AttentionOutput b = flex_attention(in.tq, in.tk, in.tv, CustomScore{}, opts);
  EXPECT_TRUE(same_bytes(a.out, b.out));
  EXPECT_TRUE(same_bytes(a.lse, b.lse));
}

}  // namespace
}  // namespace flexattn::testing
