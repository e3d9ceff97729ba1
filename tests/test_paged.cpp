// Attention over a paged KV cache on Device::cpu against the float64 oracle (reference/paged.h,
// tolerance rule of attn_check.h): every page size (16..256 and odd ones), shuffled page tables,
// ragged kv_len in one batch (0, 1, a page boundary, several pages), Lq > kv_len, GQA, every stock
// mod and custom ones, every dtype, the overloads, split-KV, garbage in unused page rows and
// table slots; append_kv step by step, its refusals, and the errors of both calls. Outputs are
// poisoned with NaN (flex_attention_into) unless the front door makes them.
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

AttentionOptions options_for(const PagedShape& s, float scale = 0.0f) {
  AttentionOptions opts;
  opts.enable_gqa = s.Hq != s.Hkv;
  opts.scale = scale;
  return opts;
}

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
  s.page_size = 16;  // 16-key chunks: the two heads of a tile see empty and partial chunks
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
    for (auto [ps, dt] : {std::pair{16, DType::f32}, {5, DType::f32}, {64, DType::bf16}}) {
      PagedShape s{.B = 2, .Hq = 4, .Hkv = 1, .Lq = 2, .D = 32, .Dv = 16, .page_size = ps};
      s.kv_len = {3001, 0};
      SCOPED_TRACE("threads " + std::to_string(threads));
      const PagedInputs in = check_case(s, dt, noop_score(), causal());
      const auto plan = plan_for(in, s, dt);
      EXPECT_EQ(plan.in_place, dt == DType::f32 && ps >= 16);
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

// ---- append_kv ----------------------------------------------------------------------------------
// The oracle's own append: row kv_len[b] + t of each sequence takes token t of k_new / v_new.
void append_to_case(reference::PagedCase& c, const std::vector<float>& k,
                    const std::vector<float>& v, int64_t T) {
  for (int64_t b = 0; b < c.B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t pos = c.kv_len[size_t(b)] + t;
      const int64_t page = c.page_table[size_t(b * c.max_pages + pos / c.page_size)];
      for (int64_t h = 0; h < c.Hkv; ++h) {
        const int64_t row = (page * c.Hkv + h) * c.page_size + pos % c.page_size;
        for (int64_t e = 0; e < c.D; ++e)
          c.k_pages[size_t(row * c.D + e)] = k[size_t(((b * c.Hkv + h) * T + t) * c.D + e)];
        for (int64_t e = 0; e < c.Dv; ++e)
          c.v_pages[size_t(row * c.Dv + e)] = v[size_t(((b * c.Hkv + h) * T + t) * c.Dv + e)];
      }
    }
    c.kv_len[size_t(b)] += int32_t(T);
  }
}

// Every element equal, NaN matching NaN.
void expect_same_values(const char* name, const std::vector<float>& got,
                        const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size()) << name;
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i)
    bad += !(std::isnan(want[i]) ? std::isnan(got[i]) : double(got[i]) == want[i]);
  EXPECT_EQ(bad, 0) << name << ": elements that differ from the expected cache";
}

std::vector<unsigned char> bytes_of(const Tensor& t) {
  const auto* p = static_cast<const unsigned char*>(t.data());
  return {p, p + t.numel() * int64_t(dtype_size(t.dtype()))};
}

struct CacheBytes {
  std::vector<unsigned char> k, v, table, len;
  explicit CacheBytes(const PagedKV& kv)
      : k(bytes_of(kv.k_pages)),
        v(bytes_of(kv.v_pages)),
        table(bytes_of(kv.page_table)),
        len(bytes_of(kv.kv_len)) {}
  bool operator==(const CacheBytes&) const = default;
};

class AppendKv : public ::testing::TestWithParam<DType> {};

TEST_P(AppendKv, StepByStepAcrossPageBoundariesThenAttention) {
  const DType dt = GetParam();
  FLEXATTN_SEEDED_RNG(rng);
  PagedShape s{.B = 3, .Hq = 4, .Hkv = 2, .Lq = 3, .D = 16, .Dv = 8, .page_size = 4};
  s.kv_len = {0, 3, 4};
  s.spare_pages = 6;  // capacity 28: room for the 21 tokens below
  PagedInputs in = make_paged_inputs(rng, s, dt);
  for (int64_t T : {1, 3, 4, 0, 5, 1, 7}) {
    SCOPED_TRACE("T = " + std::to_string(T));
    const std::vector<float> k = random_input(s.B * s.Hkv * T * s.D, dt, rng);
    const std::vector<float> v = random_input(s.B * s.Hkv * T * s.Dv, dt, rng);
    append_kv(in.kv, Tensor::from_host(k.data(), {s.B, s.Hkv, T, s.D}, dt),
              Tensor::from_host(v.data(), {s.B, s.Hkv, T, s.Dv}, dt));
    append_to_case(in.ref, k, v, T);
    std::vector<int32_t> len(size_t(s.B));
    in.kv.kv_len.copy_to_host(len.data());
    EXPECT_EQ(len, in.ref.kv_len);
    // Only the appended rows changed: the garbage in every other row is still there.
    expect_same_values("k_pages", in.kv.k_pages.to_host(), in.ref.k_pages);
    expect_same_values("v_pages", in.kv.v_pages.to_host(), in.ref.v_pages);
  }
  const AttentionOptions opts = options_for(s);
  const Operand out = Operand::make({s.B, s.Hq, s.Lq, s.Dv}, dt, false, nullptr);
  const Operand lse = Operand::make({s.B, s.Hq, s.Lq}, DType::f32, false, nullptr);
  flex_attention_into(in.q.view(), in.kv, out.view, lse.view, alibi(4), causal(), opts);
  check_paged(in, out.read(), lse.read(), dt, resolved_scale(opts, s.D), alibi(4), causal());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AppendKv, ::testing::Values(DType::f32, DType::f16, DType::bf16),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// A small cache: B 2, Hkv 2, page 4, two pages per sequence (capacity 8), num_pages 6,
// kv_len {5, 2}.
PagedInputs small_cache(std::mt19937_64& rng) {
  PagedShape s{.B = 2, .Hq = 2, .Hkv = 2, .Lq = 1, .D = 8, .Dv = 4, .page_size = 4};
  s.kv_len = {5, 2};
  s.spare_pages = 0;
  return make_paged_inputs(rng, s, DType::f32);
}
Tensor new_tokens(int64_t B, int64_t H, int64_t T, int64_t D, DType dt = DType::f32) {
  std::mt19937_64 rng(test_seed());
  const std::vector<float> x = random_input(B * H * T * D, dt, rng);
  return Tensor::from_host(x.data(), {B, H, T, D}, dt);
}

TEST(AppendKvRefusals, OutgrowingThePagesChangesNothing) {
  FLEXATTN_SEEDED_RNG(rng);
  PagedInputs in = small_cache(rng);
  // Sequence 0 fits 3 more tokens (5 + 3 = 8); 4 do not, and sequence 1's rows are not written
  // either: the whole call or nothing.
  const CacheBytes before(in.kv);
  expect_error_from("append_kv",
                    [&] { append_kv(in.kv, new_tokens(2, 2, 4, 8), new_tokens(2, 2, 4, 4)); },
                    {"kv_len", "8"});
  EXPECT_TRUE(CacheBytes(in.kv) == before);
  // A page id outside [0, num_pages) where sequence 1 would write (its page 1, tokens 4..).
  auto* table = static_cast<int32_t*>(in.kv.page_table.data());
  table[1 * in.ref.max_pages + 1] = int32_t(in.ref.num_pages);
  const CacheBytes bad_table(in.kv);
  expect_error_from("append_kv",
                    [&] { append_kv(in.kv, new_tokens(2, 2, 3, 8), new_tokens(2, 2, 3, 4)); },
                    {"page_table"});
  EXPECT_TRUE(CacheBytes(in.kv) == bad_table);
  // The same bad id is not written with 2 tokens (positions 2, 3 are on page 0): accepted.
  EXPECT_NO_THROW(append_kv(in.kv, new_tokens(2, 2, 2, 8), new_tokens(2, 2, 2, 4)));
  std::vector<int32_t> len(2);
  in.kv.kv_len.copy_to_host(len.data());
  EXPECT_EQ(len, (std::vector<int32_t>{7, 4}));
  // T = 0 writes nothing, whatever the lengths.
  const CacheBytes full(in.kv);
  EXPECT_NO_THROW(append_kv(in.kv, new_tokens(2, 2, 0, 8), new_tokens(2, 2, 0, 4)));
  EXPECT_TRUE(CacheBytes(in.kv) == full);
  // A negative length in the cache is refused too.
  static_cast<int32_t*>(in.kv.kv_len.data())[0] = -1;
  const CacheBytes negative(in.kv);
  expect_error_from("append_kv",
                    [&] { append_kv(in.kv, new_tokens(2, 2, 1, 8), new_tokens(2, 2, 1, 4)); },
                    {"kv_len"});
  EXPECT_TRUE(CacheBytes(in.kv) == negative);
}

TEST(AppendKvRefusals, ShapesDtypesDevicesNameTheArgument) {
  FLEXATTN_SEEDED_RNG(rng);
  PagedInputs in = small_cache(rng);
  const CacheBytes before(in.kv);
  auto refused = [&](const Tensor& k, const Tensor& v, std::initializer_list<const char*> words) {
    expect_error_from(
        "append_kv", [&] { append_kv(in.kv, k, v); }, words);
    EXPECT_TRUE(CacheBytes(in.kv) == before);
  };
  refused(new_tokens(2, 2, 1, 8, DType::f16), new_tokens(2, 2, 1, 4), {"k_new", "f32"});
  refused(new_tokens(2, 2, 1, 8), new_tokens(2, 2, 1, 4, DType::bf16), {"v_new", "f32"});
  refused(new_tokens(3, 2, 1, 8), new_tokens(3, 2, 1, 4), {"k_new"});
  refused(new_tokens(2, 1, 1, 8), new_tokens(2, 2, 1, 4), {"k_new"});
  refused(new_tokens(2, 2, 1, 7), new_tokens(2, 2, 1, 4), {"k_new"});
  refused(new_tokens(2, 2, 1, 8), new_tokens(2, 2, 2, 4), {"v_new"});  // T differs
  refused(new_tokens(2, 2, 1, 8), new_tokens(2, 2, 1, 5), {"v_new"});
  {
    PagedKV bad = in.kv;
    const std::vector<float> ids(4, 0.0f);
    bad.page_table = Tensor::from_host(ids.data(), {2, 2}, DType::f32);
    expect_error_from("append_kv",
                      [&] { append_kv(bad, new_tokens(2, 2, 1, 8), new_tokens(2, 2, 1, 4)); },
                      {"page_table", "i32"});
    const std::vector<int32_t> lens(3, 0);
    bad = in.kv;
    bad.kv_len = Tensor::from_host(lens.data(), {3});
    expect_error_from("append_kv",
                      [&] { append_kv(bad, new_tokens(2, 2, 1, 8), new_tokens(2, 2, 1, 4)); },
                      {"kv_len"});
  }
  EXPECT_TRUE(CacheBytes(in.kv) == before);
  if (cuda_available()) {
    const std::vector<float> x(2 * 2 * 8, 1.0f);
    refused(Tensor::from_host(x.data(), {2, 2, 1, 8}, DType::f32, Device::cuda),
            new_tokens(2, 2, 1, 4), {"k_new", "cuda"});
  }
}

// ---- flex_attention errors ----------------------------------------------------------------------
bool all_nan(const Operand& o) {
  for (float x : o.storage.to_host())
    if (!std::isnan(x)) return false;
  return true;
}

// A valid call on the small cache (q [2, 2, 1, 8], out [2, 2, 1, 4]) with poisoned outputs; each
// case edits one thing.
struct PagedCall {
  std::mt19937_64 rng{test_seed()};
  PagedInputs in = small_cache(rng);
  TensorView q = in.q.view();
  Operand out = Operand::make({2, 2, 1, 4}, DType::f32, false, nullptr);
  Operand lse = Operand::make({2, 2, 1}, DType::f32, false, nullptr);
  AttentionOptions opts;
  void run() const {
    flex_attention_into(q, in.kv, out.view, lse.view, noop_score(), causal(), opts);
  }
};

void expect_refused(const PagedCall& c, std::initializer_list<const char*> words) {
  expect_error_from(
      "flex_attention", [&] { c.run(); }, words);
  EXPECT_TRUE(all_nan(c.out)) << "out written by a call that threw";
  EXPECT_TRUE(all_nan(c.lse)) << "lse written by a call that threw";
}

TEST(PagedErrors, BadLengthsAndPageIdsThrowBeforeWriting) {
  {
    PagedCall c;
    EXPECT_NO_THROW(c.run());
  }
  for (int32_t bad : {-1, 9, 1 << 30}) {  // capacity is 2 pages x 4
    PagedCall c;
    static_cast<int32_t*>(c.in.kv.kv_len.data())[1] = bad;
    expect_refused(c, {"kv_len"});
  }
  for (int32_t bad : {-1, 6, 1 << 30}) {  // num_pages = 2 * 2 + 2 = 6
    PagedCall c;
    static_cast<int32_t*>(c.in.kv.page_table.data())[1] = bad;  // sequence 0, tokens 4..7
    expect_refused(c, {"page_table"});
  }
  {
    PagedCall c;  // sequence 1 (kv_len 2) never reads its page 1
    static_cast<int32_t*>(c.in.kv.page_table.data())[3] = -1;
    EXPECT_NO_THROW(c.run());
  }
}

TEST(PagedErrors, DtypesShapesAndDevices) {
  const std::vector<int32_t> ints(64, 0);
  const std::vector<float> floats(4096, 0.5f);
  {
    PagedCall c;
    const Tensor q = Tensor::from_host(ints.data(), {2, 2, 1, 8});
    c.q = q.view();
    expect_refused(c, {"q", "i32"});
  }
  {
    PagedCall c;
    c.in.kv.page_table = Tensor::from_host(floats.data(), {2, 2}, DType::f32);
    expect_refused(c, {"page_table", "i32"});
  }
  {
    PagedCall c;
    c.in.kv.kv_len = Tensor::from_host(floats.data(), {2}, DType::f32);
    expect_refused(c, {"kv_len", "i32"});
  }
  {
    PagedCall c;
    c.in.kv.k_pages = Tensor::from_host(floats.data(), {6, 2, 4, 8}, DType::bf16);
    expect_refused(c, {"k_pages", "f32"});
  }
  {
    PagedCall c;
    c.in.kv.page_table = Tensor::from_host(ints.data(), {3, 2});
    expect_refused(c, {"page_table"});
  }
  {
    PagedCall c;
    c.in.kv.k_pages = Tensor::from_host(floats.data(), {6, 2, 4, 7}, DType::f32);
    expect_refused(c, {"k_pages", "8"});
  }
  {
    PagedCall c;
    c.in.kv.v_pages = Tensor::from_host(floats.data(), {6, 2, 5, 4}, DType::f32);
    expect_refused(c, {"v_pages"});
  }
  {
    PagedCall c;
    c.in.kv.v_pages = Tensor::from_host(floats.data(), {6, 1, 4, 4}, DType::f32);
    expect_refused(c, {"v_pages"});
  }
  {
    PagedCall c;  // Hq 3 against Hkv 2
    const Tensor q = Tensor::from_host(floats.data(), {2, 3, 1, 8}, DType::f32);
    c.q = q.view();
    c.out = Operand::make({2, 3, 1, 4}, DType::f32, false, nullptr);
    c.lse = Operand::make({2, 3, 1}, DType::f32, false, nullptr);
    c.opts.enable_gqa = true;
    expect_refused(c, {"Hq", "Hkv"});
  }
  {
    PagedCall c;  // Hq 4 against Hkv 2 without enable_gqa
    const Tensor q = Tensor::from_host(floats.data(), {2, 4, 1, 8}, DType::f32);
    c.q = q.view();
    c.out = Operand::make({2, 4, 1, 4}, DType::f32, false, nullptr);
    c.lse = Operand::make({2, 4, 1}, DType::f32, false, nullptr);
    expect_refused(c, {"enable_gqa"});
  }
  {
    PagedCall c;
    c.out = Operand::make({2, 2, 1, 5}, DType::f32, false, nullptr);
    expect_refused(c, {"out"});
  }
  {
    PagedCall c;
    c.lse = Operand::make({2, 2, 2}, DType::f32, false, nullptr);
    expect_refused(c, {"lse"});
  }
  {
    PagedCall c;
    c.out.view.device = Device::cuda;  // a view claiming another device
    expect_refused(c, {"out", "cuda"});
  }
}

// A default-constructed cache (no tensors at all) is refused by name, never dereferenced.
TEST(PagedErrors, EmptyCacheIsRefusedByName) {
  std::mt19937_64 rng(reference::fresh_seed());
  const std::vector<float> qv = reference::random_normal(2 * 2 * 1 * 8, rng);
  const Tensor q = Tensor::from_host(qv.data(), {2, 2, 1, 8}, DType::f32);
  PagedKV empty;
  expect_error_from("flex_attention", [&] { flex_attention(q, empty); }, {"k_pages"});
  expect_error_from("append_kv", [&] { append_kv(empty, q, q); }, {"k_pages"});
}

}  // namespace
}  // namespace flexattn::testing
