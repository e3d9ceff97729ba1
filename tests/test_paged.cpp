// Attention over a paged KV cache on Device::cpu against the float64 oracle (reference/paged.h,
// tolerance rule of attn_check.h): every page size (16..256 and odd ones), shuffled page tables,
// ragged kv_len in one batch (0, 1, a page boundary, several pages), Lq > kv_len, GQA, every stock
// mod and custom ones, every dtype, the overloads, split-KV, garbage in unused page rows and
// table slots. Outputs are poisoned with NaN (flex_attention_into) unless the front door makes
// them. append_kv and the errors of both calls: test_paged_append_errors.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "attn_check.h"
#include "error_match.h"
#include "paged_check.h"
#include "test_functors.h"

namespace flexattn::testing {
namespace {

struct ThreadCountGuard {
  int saved = flexattn::num_threads();
  ~ThreadCountGuard() { flexattn::set_num_threads(saved); }
};

// A custom mask with a tile rule that depends on the head: a causal window of 3 * (h + 1) keys.
// The heads of one GQA tile then get different tile kinds in one chunk.
struct HeadWindowMask {
  FLEXATTN_HD bool operator()(int, int h, int q, int kv) const {
    return kv <= q && q - kv <= 3 * (h + 1);
  }
  FLEXATTN_HD TileKind tile_kind(int, int h, int q0, int q1, int k0, int k1) const {
    return detail::diagonal_band_tile(q0, q1, k0, k1, 0, 3 * (h + 1));
  }
};

// Fresh inputs, flex_attention_into on NaN-poisoned out / lse (strided: [B, L, H, D + 3] storage
// with NaN padding), the check. Returns the inputs for further checks.
template <class S, class M>
PagedInputs check_case(const PagedShape& s, DType dt, const S& score_mod, const M& mask_mod,
                       float scale = 0.0f, bool strided = false) {
  FLEXATTN_SEEDED_RNG(rng);
  SCOPED_TRACE(describe(s, dt));
  PagedInputs in = make_paged_inputs(rng, s, dt);
  const AttentionOptions opts = options_for(s, scale);
  const Operand out = Operand::make({s.B, s.Hq, s.Lq, s.Dv}, dt, strided, nullptr);
  const Operand lse = Operand::make({s.B, s.Hq, s.Lq}, DType::f32, strided, nullptr);
  flex_attention_into(in.q.view(), in.kv, out.view, lse.view, score_mod, mask_mod, opts);
  check_paged(in, out.read(), lse.read(), dt, resolved_scale(opts, s.D), score_mod, mask_mod);
  EXPECT_EQ(out.clobbered_padding() + lse.clobbered_padding(), 0) << "wrote outside the views";
  return in;
}

class Paged : public ::testing::TestWithParam<DType> {};

TEST_P(Paged, PageSizes) {
  // Lengths: empty, one token, exactly one page, several pages with a partial last one, one short
  // of a boundary. Pages 1, 3, 5 are gathered; f32 pages >= 16 are read in place.
  for (int ps : {1, 3, 5, 16, 32, 64, 128, 256}) {
    PagedShape s{.B = 5, .Hq = 8, .Hkv = 2, .Lq = 3, .D = 32, .Dv = 24, .page_size = ps};
    s.kv_len = {0, 1, ps, 3 * ps + 1, std::max(1, 2 * ps - 1)};
    check_case(s, GetParam(), noop_score(), causal());
    s.Lq = 1;
    check_case(s, GetParam(), noop_score(), noop_mask());
  }
}

TEST_P(Paged, QueryLengths) {
  // Lq > kv_len: the rows before the sequence's first token (q_idx < 0) are out 0, lse -inf.
  for (int lq : {1, 3, 17, 64}) {
    PagedShape s{.B = 6, .Hq = 8, .Hkv = 2, .Lq = lq, .D = 16, .Dv = 16, .page_size = 16};
    s.kv_len = {0, 1, 5, 16, 64, 150};
    check_case(s, GetParam(), noop_score(), causal());
    check_case(s, GetParam(), alibi(8), noop_mask());
  }
}

TEST_P(Paged, StockMasks) {
  PagedShape s{.B = 4, .Hq = 4, .Hkv = 2, .Lq = 5, .D = 16, .Dv = 8, .page_size = 16};
  s.kv_len = {3, 40, 130, 77};
  FLEXATTN_SEEDED_RNG(rng);
  const std::vector<int32_t> docs = random_documents(4 * 16 * 16, 30, rng);  // >= capacity
  const DType dt = GetParam();
  check_case(s, dt, noop_score(), noop_mask());
  check_case(s, dt, noop_score(), causal());
  check_case(s, dt, noop_score(), sliding_window(7));
  check_case(s, dt, noop_score(), prefix_lm(20));
  check_case(s, dt, noop_score(), document(docs.data()));
  check_case(s, dt, noop_score(), and_masks(causal(), document(docs.data())));
  check_case(s, dt, noop_score(), or_masks(sliding_window(5), prefix_lm(7)));
  check_case(s, dt, noop_score(), not_mask(causal()));  // only later keys: most rows see none
}

TEST_P(Paged, StockScoreMods) {
  PagedShape s{.B = 3, .Hq = 4, .Hkv = 1, .Lq = 4, .D = 32, .Dv = 32, .page_size = 32};
  s.kv_len = {100, 31, 64};
  const DType dt = GetParam();
  check_case(s, dt, relative_position(), causal());
  check_case(s, dt, alibi(4), causal());
  check_case(s, dt, softcap(2.0f), noop_mask());
  check_case(s, dt, compose(alibi(4), softcap(5.0f)), sliding_window(40));
}

TEST_P(Paged, CustomFunctors) {
  // The functors see the real b and the logical q_idx / kv_idx: PerBatchHeadMask and CustomScore
  // depend on all of them.
  PagedShape s{.B = 3, .Hq = 6, .Hkv = 3, .Lq = 7, .D = 24, .Dv = 40, .page_size = 5};
  s.kv_len = {60, 9, 33};
  const DType dt = GetParam();
  check_case(s, dt, CustomScore{0.7f}, PerBatchHeadMask{});
  check_case(s, dt, lambda_score(), lambda_mask());
  check_case(s, dt, CustomScore{}, KillRowsMask{});
  check_case(s, dt, noop_score(), NothingMask{});  // every row out 0, lse -inf
  // f32 reads these pages in place, a chunk per page (kInPlaceMinPage keys): the two heads of a
  // tile see empty and partial chunks.
  s.page_size = flexattn::detail::cpu::paged::kInPlaceMinPage;
  check_case(s, dt, lambda_score(), PerBatchHeadMask{});
  check_case(s, dt, alibi(6), HeadWindowMask{});
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Paged, ::testing::Values(DType::f32, DType::f16, DType::bf16),
                         [](const auto& info) { return std::string(to_string(info.param)); });

TEST(PagedShapes, GroupSizes) {
  // GQA 1, 4, 8: h given to the functors is the query head (alibi's slopes differ in a group).
  for (int hkv : {8, 2, 1}) {
    PagedShape s{.B = 3, .Hq = 8, .Hkv = hkv, .Lq = 2, .D = 16, .Dv = 16, .page_size = 16};
    s.kv_len = {40, 0, 17};
    check_case(s, DType::f32, alibi(8), causal());
    check_case(s, DType::bf16, CustomScore{}, PerBatchHeadMask{});
  }
  // 8 heads x 64 rows: 512 rows of one group in four tiles of 128.
  PagedShape s{.B = 2, .Hq = 8, .Hkv = 1, .Lq = 64, .D = 16, .Dv = 8, .page_size = 32};
  s.kv_len = {100, 64};
  check_case(s, DType::f32, noop_score(), causal());
}

TEST(PagedShapes, HeadDimsScaleAndStridedOutputs) {
  PagedShape s{.B = 2, .Hq = 2, .Hkv = 1, .Lq = 3, .page_size = 16};
  s.kv_len = {50, 20};
  for (auto [d, dv] : {std::pair<int64_t, int64_t>{1, 1}, {3, 5}, {128, 64}, {256, 256}}) {
    s.D = d;
    s.Dv = dv;
    check_case(s, DType::f32, noop_score(), causal());
  }
  s.D = 16;
  s.Dv = 24;
  check_case(s, DType::f32, softcap(20.0f), causal(), -0.4f);
  check_case(s, DType::f16, noop_score(), causal(), 0.0f, /*strided=*/true);
  check_case(s, DType::f32, alibi(2), noop_mask(), 0.0f, /*strided=*/true);
}

// Table slots past a sequence's last page are never read: ids outside [0, num_pages) there are
// no error and change nothing.
TEST(PagedShapes, GarbageTableSlotsPastTheEnd) {
  FLEXATTN_SEEDED_RNG(rng);
  PagedShape s{.B = 3, .Hq = 2, .Hkv = 2, .Lq = 2, .D = 8, .Dv = 8, .page_size = 4};
  s.kv_len = {0, 5, 8};
  s.spare_pages = 2;
  PagedInputs in = make_paged_inputs(rng, s, DType::f32);
  auto* table = static_cast<int32_t*>(in.kv.page_table.data());
  const int64_t mp = in.ref.max_pages;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t p = (s.kv_len[size_t(b)] + 3) / 4; p < mp; ++p)
      table[b * mp + p] = in.ref.page_table[size_t(b * mp + p)] = (p % 2 ? -5 : 1 << 30);
  const Operand out = Operand::make({s.B, s.Hq, s.Lq, s.Dv}, DType::f32, false, nullptr);
  const Operand lse = Operand::make({s.B, s.Hq, s.Lq}, DType::f32, false, nullptr);
  flex_attention_into(in.q.view(), in.kv, out.view, lse.view, noop_score(), causal());
  check_paged(in, out.read(), lse.read(), DType::f32, 1.0f / std::sqrt(8.0f), noop_score(),
              causal());
}

// The one-functor and no-functor overloads are the four-argument call with the stock no-ops.
TEST(PagedApi, Overloads) {
  FLEXATTN_SEEDED_RNG(rng);
  PagedShape s{.B = 3, .Hq = 4, .Hkv = 2, .Lq = 3, .D = 16, .Dv = 8, .page_size = 16};
  s.kv_len = {20, 2, 33};
  for (DType dt : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(to_string(dt));
    const PagedInputs in = make_paged_inputs(rng, s, dt);
    const AttentionOptions opts = options_for(s);
    const float scale = resolved_scale(opts, s.D);
    auto check = [&](const AttentionOutput& got, const auto& score, const auto& mask) {
      EXPECT_EQ(got.out.shape(), (std::vector<int64_t>{s.B, s.Hq, s.Lq, s.Dv}));
      EXPECT_EQ(got.out.dtype(), dt);
      EXPECT_EQ(got.lse.shape(), (std::vector<int64_t>{s.B, s.Hq, s.Lq}));
      EXPECT_EQ(got.lse.dtype(), DType::f32);
      check_paged(in, got.out.to_host(), got.lse.to_host(), dt, scale, score, mask);
    };
    check(flex_attention(in.q, in.kv, opts), noop_score(), noop_mask());
    check(flex_attention(in.q, in.kv, causal(), opts), noop_score(), causal());
    check(flex_attention(in.q, in.kv, alibi(4), opts), alibi(4), noop_mask());
    check(flex_attention(in.q, in.kv, lambda_mask(), opts), noop_score(), lambda_mask());
    check(flex_attention(in.q, in.kv, lambda_score(), opts), lambda_score(), noop_mask());
    check(flex_attention(in.q, in.kv, softcap(3.0f), sliding_window(9), opts), softcap(3.0f),
          sliding_window(9));
  }
}

// ---- split-KV -----------------------------------------------------------------------------------
// The plan make_plan would give this call, for the assertions that the paths under test run.
detail::cpu::paged::Plan plan_for(const PagedInputs& in, const PagedShape& s, DType dt) {
  const Operand out = Operand::make({s.B, s.Hq, s.Lq, s.Dv}, dt, false, nullptr);
  const Operand lse = Operand::make({s.B, s.Hq, s.Lq}, DType::f32, false, nullptr);
  const detail::PagedArgs a =
      detail::make_paged_args(in.q.view(), in.kv, out.view, lse.view, options_for(s));
  return detail::cpu::paged::make_plan(a, detail::cpu::paged::checked_lengths(a),
                                       flexattn::num_threads());
}

TEST(PagedSplit, FewLongSequencesAreSplitAndMerged) {
  const ThreadCountGuard guard;
  for (int threads : {4, 1}) {
    flexattn::set_num_threads(threads);
    for (auto [ps, dt] :
         {std::pair{32, DType::f32}, {16, DType::f32}, {5, DType::f32}, {64, DType::bf16}}) {
      PagedShape s{.B = 2, .Hq = 4, .Hkv = 1, .Lq = 2, .D = 32, .Dv = 16, .page_size = ps};
      s.kv_len = {3001, 0};
      SCOPED_TRACE("threads " + std::to_string(threads));
      const PagedInputs in = check_case(s, dt, noop_score(), causal());
      const auto plan = plan_for(in, s, dt);
      EXPECT_EQ(plan.in_place,
                dt == DType::f32 && ps >= flexattn::detail::cpu::paged::kInPlaceMinPage);
      if (threads == 1) {
        EXPECT_EQ(plan.part_keys, 0) << "one thread never splits";
        continue;
      }
      EXPECT_GT(plan.part_keys, 0);
      ASSERT_EQ(plan.merges.size(), 1u);
      EXPECT_GE(plan.merges[0].parts, 4);
      // A window keeps the last keys: most parts see nothing (lse -inf parts in the merge).
      check_case(s, dt, alibi(4), sliding_window(100));
      check_case(s, dt, noop_score(), NothingMask{});
      check_case(s, dt, CustomScore{}, PerBatchHeadMask{});
    }
  }
}

// A kept NaN score makes its row NaN (out and lse), through the single-pass step and the merge,
// also when it is the row's only kept score (the other keys masked); rows that do not keep it are
// untouched.
TEST(PagedSplit, NaNScoreRowsStayNaN) {
  const ThreadCountGuard guard;
  const auto nan_at_key = [](auto s, int, int, int, int kv) { return kv == 700 ? s * kNaN : s; };
  const auto only_key = [](int, int, int, int kv) { return kv == 700; };
  for (int threads : {1, 4}) {
    flexattn::set_num_threads(threads);
    SCOPED_TRACE("threads " + std::to_string(threads));
    FLEXATTN_SEEDED_RNG(rng);
    PagedShape s{.B = 3, .Hq = 2, .Hkv = 1, .Lq = 2, .D = 16, .Dv = 8, .page_size = 16};
    s.kv_len = {2000, 500, 701};
    const PagedInputs in = make_paged_inputs(rng, s, DType::f32);
    auto check = [&](const auto& mask, int64_t want_nan_rows) {
      const auto got = flex_attention(in.q, in.kv, nan_at_key, mask, options_for(s));
      const auto ref = reference::paged_forward(in.ref, 0.25, nan_at_key, mask);
      const std::vector<float> out = got.out.to_host(), lse = got.lse.to_host();
      int64_t nan_rows = 0;
      for (size_t r = 0; r < lse.size(); ++r) {
        const bool want_nan = std::isnan(ref.lse[r]);
        nan_rows += want_nan;
        EXPECT_EQ(std::isnan(lse[r]), want_nan) << "row " << r;
        for (int64_t e = 0; e < s.Dv; ++e)
          EXPECT_EQ(std::isnan(out[r * size_t(s.Dv) + size_t(e)]), want_nan) << "row " << r;
        if (std::isinf(ref.lse[r])) {
          EXPECT_EQ(lse[r], ref.lse[r]) << "row " << r;  // -inf: a row that keeps nothing
        } else if (!want_nan) {
          EXPECT_NEAR(lse[r], ref.lse[r], 1e-4) << "row " << r;
        }
      }
      EXPECT_EQ(nan_rows, want_nan_rows);
    };
    // Causal: sequence 0 (both query rows keep key 700) and row 1 of sequence 2 (q_idx 701).
    check(causal(), 2 * 2 + 2);
    // Key 700 alone: every row of sequences 0 and 2; sequence 1 has no key 700 (out 0, lse -inf).
    check(only_key, 2 * 2 + 2 * 2);
  }
}

}  // namespace
}  // namespace flexattn::testing
