// append_kv on Device::cpu (step by step across page boundaries, then attention against the
// float64 oracle; every refusal leaves the cache bitwise unchanged) and the errors of the paged
// flex_attention (bad lengths and page ids throw before anything is written; dtypes, shapes and
// devices are refused by name). The attention cases themselves are in test_paged.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "attn_check.h"
#include "error_match.h"
#include "paged_check.h"

namespace flexattn::testing {
namespace {

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
