// Runtime variants (runtime.h) on Device::cpu: score_mod / mask_mod sources with captured tensors
// against the float64 oracle evaluating a C++ twin of each source (same formula), forward,
// backward, block masks (lists equal to the twin's), the paged call; the compile cache (memory,
// disk, a corrupt entry); and the errors (bad source with the user's line, bad captures).
//
// The processes of this binary share one disk cache under the build tree (set below unless the
// environment sets FLEXATTN_CACHE_DIR): the first test to need a variant compiles it, the others
// load it. Tests that need a cold compile put a nonce comment into their source.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "attn_check.h"
#include "error_match.h"
#include "paged_check.h"

#ifndef FLEXATTN_TEST_RUNTIME_CACHE
#define FLEXATTN_TEST_RUNTIME_CACHE ""
#endif

namespace flexattn::testing {
namespace {

[[maybe_unused]] const bool kCacheDirSet = [] {
  if (std::getenv("FLEXATTN_CACHE_DIR") == nullptr && *FLEXATTN_TEST_RUNTIME_CACHE) {
    ::setenv("FLEXATTN_CACHE_DIR", FLEXATTN_TEST_RUNTIME_CACHE, 0);
  }
  return true;
}();

std::string nonce() {
  std::random_device rd;
  return "/* nonce " + std::to_string(rd()) + std::to_string(rd()) + " */ ";
}

// ---- the variants: source text and the C++ twin the oracles evaluate ---------------------------
// ALiBi with per-head slopes read from an f32 capture.
constexpr const char* kAlibiSource = "score + slopes[h] * float(kv_idx - q_idx)";
struct AlibiTwin {
  std::vector<float> slopes;
  template <class T>
  T operator()(T s, int, int h, int q, int kv) const {
    return s + slopes[h] * float(kv - q);
  }
};

// A statement body: a relative-position bias table [H, 8] (bf16, rank 2) bucketed by distance,
// and a tanh softcap, differentiated by the backward.
constexpr const char* kBiasSource = R"(
  int d = q_idx - kv_idx;
  int bucket = d < 0 ? 0 : (d > 7 ? 7 : d);
  auto s = score + bias(h, bucket);
  return 4.0f * tanh(s * 0.25f);
)";
struct BiasTwin {
  std::vector<float> bias;  // [H, 8], bf16-rounded values
  template <class T>
  T operator()(T score, int, int h, int q, int kv) const {
    const int d = q - kv;
    const int bucket = d < 0 ? 0 : (d > 7 ? 7 : d);
    const auto s = score + bias[h * 8 + bucket];
    return 4.0f * flexattn::tanh(s * 0.25f);
  }
};

// Document masking from an i32 capture of document ids per position, causal within documents.
constexpr const char* kDocSource = "doc[q_idx] == doc[kv_idx] && kv_idx <= q_idx";
struct DocTwin {
  std::vector<int32_t> doc;
  bool operator()(int, int, int q, int kv) const { return doc[q] == doc[kv] && kv <= q; }
};

// A causal band of 3 (h + 1) keys with its tile rule (a statement body), head-dependent.
constexpr const char* kBandSource = "kv_idx <= q_idx && q_idx - kv_idx <= 3 * (h + 1)";
constexpr const char* kBandRule = R"(
  long long lo = 0, hi = 3 * (h + 1);
  long long dmin = (long long)q0 - (k1 - 1), dmax = (long long)(q1 - 1) - k0;
  if (dmax < lo || dmin > hi) return empty;
  if (dmin >= lo && dmax <= hi) return full;
  return partial;
)";
struct BandTwin {
  FLEXATTN_HD bool operator()(int, int h, int q, int kv) const {
    return kv <= q && q - kv <= 3 * (h + 1);
  }
  FLEXATTN_HD TileKind tile_kind(int, int h, int q0, int q1, int k0, int k1) const {
    return detail::diagonal_band_tile(q0, q1, k0, k1, 0, 3 * (h + 1));
  }
};

std::vector<float> random_values(int64_t n, float lo, float hi, DType dt) {
  std::mt19937_64 rng(test_seed());
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = u(rng);
  // Round as the capture stores them, so the twin reads the same values.
  const Tensor t = Tensor::from_host(v.data(), {n}, dt);
  return t.to_host();
}

std::vector<int32_t> doc_ids(int64_t L, int docs) {
  std::vector<int32_t> d(static_cast<size_t>(L));
  for (int64_t i = 0; i < L; ++i) d[static_cast<size_t>(i)] = static_cast<int32_t>(i * docs / L);
  return d;
}

class Runtime : public DtypeSuite {};

TEST_P(Runtime, AlibiScoreWithCapturedSlopesAndCausalMask) {
  const Problem p = problem({.B = 2, .Hq = 4, .Hkv = 2, .Lq = 70, .Lkv = 70, .D = 32, .Dv = 16});
  const std::vector<float> slopes = random_values(4, 0.0f, 0.5f, DType::f32);
  const RuntimeScoreMod score(kAlibiSource,
                              {{"slopes", Tensor::from_host(slopes.data(), {4}, DType::f32)}});
  const RuntimeMaskMod mask("q_idx >= kv_idx");
  check_forward_of(p, score, mask, AlibiTwin{slopes}, CausalMask{});
  check_backward_of(p, score, mask, AlibiTwin{slopes}, CausalMask{});
}

TEST_P(Runtime, StatementBodyWithBf16TableAndDocumentMask) {
  const Problem p = problem({.B = 1, .Hq = 2, .Hkv = 2, .Lq = 50, .Lkv = 50, .D = 16, .Dv = 16});
  const std::vector<float> bias = random_values(2 * 8, -1.0f, 1.0f, DType::bf16);
  const std::vector<int32_t> doc = doc_ids(50, 3);
  const RuntimeScoreMod score(
      kBiasSource, {{"bias", Tensor::from_host(bias.data(), {2, 8}, DType::bf16)}});
  const RuntimeMaskMod mask(kDocSource, {{"doc", Tensor::from_host(doc.data(), {50})}});
  check_forward_of(p, score, mask, BiasTwin{bias}, DocTwin{doc});
  check_backward_of(p, score, mask, BiasTwin{bias}, DocTwin{doc});
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Runtime, ::testing::Values(DType::f32, DType::f16, DType::bf16),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// Lists of a runtime mask with a tile rule equal those of the same mask written in C++, and
// without the rule (every tile evaluated) too.
TEST(RuntimeBlockMask, ListsEqualTheCompiledTwin) {
  const int64_t B = 1, H = 3, L = 200;
  const BlockMaskOptions o{.block_q = 32, .block_kv = 16};
  const auto twin = create_block_mask(BandTwin{}, B, H, L, L, o);
  for (const std::string rule : {std::string(kBandRule), std::string()}) {
    const auto rt = create_block_mask(RuntimeMaskMod(kBandSource, {}, rule), B, H, L, L, o);
    EXPECT_EQ(rt.sparsity(), twin.sparsity());
    EXPECT_EQ(rt.to_string(40, 40, 3), twin.to_string(40, 40, 3));
    // Every list's count and its valid entries (the rest of a list is unset).
    const BlockMaskData &a = rt.data(), &b = twin.data();
    auto ints = [](const Buffer& buf) { return static_cast<const int32_t*>(buf.data()); };
    using L = std::pair<Buffer BlockMaskData::*, Buffer BlockMaskData::*>;
    for (const auto& [num, idx] : {L{&BlockMaskData::kv_num, &BlockMaskData::kv_idx},
                                   L{&BlockMaskData::full_kv_num, &BlockMaskData::full_kv_idx},
                                   L{&BlockMaskData::q_num, &BlockMaskData::q_idx},
                                   L{&BlockMaskData::full_q_num, &BlockMaskData::full_q_idx}}) {
      const bool by_q = num == &BlockMaskData::kv_num || num == &BlockMaskData::full_kv_num;
      const int64_t rows = B * H * (by_q ? a.nqb : a.nkvb), width = by_q ? a.nkvb : a.nqb;
      for (int64_t r = 0; r < rows; ++r) {
        ASSERT_EQ(ints(a.*num)[r], ints(b.*num)[r]) << "row " << r;
        for (int32_t e = 0; e < ints(a.*num)[r]; ++e) {
          EXPECT_EQ(ints(a.*idx)[r * width + e], ints(b.*idx)[r * width + e]);
        }
      }
    }
  }
}

TEST(RuntimePaged, RuntimeModsOverAPagedCache) {
  FLEXATTN_SEEDED_RNG(rng);
  const PagedShape s{.B = 2, .Hq = 4, .Hkv = 2, .Lq = 2, .D = 32, .Dv = 32, .page_size = 16,
                     .kv_len = {40, 77}};
  const PagedInputs in = make_paged_inputs(rng, s, DType::bf16);
  const std::vector<float> slopes = random_values(4, 0.0f, 0.5f, DType::f32);
  const RuntimeScoreMod score(kAlibiSource,
                              {{"slopes", Tensor::from_host(slopes.data(), {4}, DType::f32)}});
  const RuntimeMaskMod mask(kBandSource, {}, kBandRule);
  const AttentionOptions opts = options_for(s, 0.0f);
  const AttentionOutput r = flex_attention(in.q, in.kv, score, mask, opts);
  check_paged(in, r.out.to_host(), r.lse.to_host(), DType::bf16, resolved_scale(opts, s.D),
              AlibiTwin{slopes}, BandTwin{});
  // One mod: a runtime mask_mod alone is taken as the mask.
  const AttentionOutput m = flex_attention(in.q, in.kv, mask, opts);
  check_paged(in, m.out.to_host(), m.lse.to_host(), DType::bf16, resolved_scale(opts, s.D),
              NoopScore{}, BandTwin{});
}

// New tensors of the same dtypes and ranks reuse the compiled code; the values are the new ones.
TEST(RuntimeCache, CapturesAreBoundPerObjectNotCompiledIn) {
  const Problem p{.shape = {.B = 1, .Hq = 2, .Hkv = 2, .Lq = 20, .Lkv = 20, .D = 16, .Dv = 16}};
  const std::string src = nonce() + kAlibiSource;
  for (int round = 0; round < 3; ++round) {
    const std::vector<float> slopes = random_values(2, -1.0f, 1.0f, DType::f32);
    const RuntimeScoreMod score(src, {{"slopes", Tensor::from_host(slopes.data(), {2}, DType::f32)}});
    check_forward_of(p, score, NoopMask{}, AlibiTwin{slopes}, NoopMask{});
  }
  const RuntimeCacheStats st = runtime_cache_stats();
  EXPECT_GE(st.memory_hits, 2);
}

// Memory, then disk (after forgetting memory), then a corrupt disk entry: rebuilt, never trusted.
TEST(RuntimeCache, MemoryThenDiskThenCorruptEntryIsRebuilt) {
  namespace fs = std::filesystem;
  const std::string dir = runtime_cache_dir();
  if (dir.empty()) GTEST_SKIP() << "disk cache disabled (FLEXATTN_CACHE_DIR is empty)";
  const Problem p{.shape = {.B = 1, .Hq = 1, .Hkv = 1, .Lq = 9, .Lkv = 9, .D = 8, .Dv = 8}};
  const std::string tag = nonce();
  const RuntimeScoreMod score(tag + "score * 0.5f");
  auto twin = [](auto s, int, int, int, int) { return s * 0.5f; };
  auto modules = [&] {
    std::set<std::string> files;
    for (const auto& e : fs::directory_iterator(dir)) files.insert(e.path().string());
    return files;
  };
  const std::set<std::string> before = modules();
  clear_runtime_memory_cache();
  check_forward_of(p, score, NoopMask{}, twin, NoopMask{});
  EXPECT_EQ(runtime_cache_stats().compiled, 1);
  check_forward_of(p, score, NoopMask{}, twin, NoopMask{});
  EXPECT_EQ(runtime_cache_stats().memory_hits, 1);
  // Our entry: a new file holding the nonce (its key is embedded; other test processes may add
  // entries to the shared directory meanwhile).
  const std::string digits = tag.substr(9, tag.size() - 13);  // "/* nonce <digits> */ "
  std::vector<std::string> added;
  for (const std::string& f : modules()) {
    std::ifstream in(f, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (before.count(f) == 0 && bytes.find(digits) != std::string::npos) added.push_back(f);
  }
  ASSERT_EQ(added.size(), 1u) << "one new module file holding " << digits << " in " << dir;

  clear_runtime_memory_cache();
  check_forward_of(p, score, NoopMask{}, twin, NoopMask{});
  EXPECT_EQ(runtime_cache_stats().loaded_from_disk, 1);
  EXPECT_EQ(runtime_cache_stats().compiled, 0);

  // The disk entry now holds garbage: the next process (here: memory forgotten) rebuilds it.
  clear_runtime_memory_cache();
  fs::remove(added[0]);
  std::ofstream(added[0], std::ios::binary) << "not a shared object";
  check_forward_of(p, score, NoopMask{}, twin, NoopMask{});
  EXPECT_EQ(runtime_cache_stats().compiled, 1);
  EXPECT_EQ(runtime_cache_stats().loaded_from_disk, 0);
}

// ---- errors -----------------------------------------------------------------------------------
TEST(RuntimeErrors, SourceThatDoesNotCompileNamesTheUsersLine) {
  const Tensor q = Tensor::from_host(std::vector<float>(64, 0.5f).data(), {1, 1, 8, 8},
                                     DType::f32);
  const RuntimeScoreMod bad(nonce() + "\n  score +\n  no_such_name[h]");
  const std::string msg =
      expect_error_from("flex_attention", [&] { (void)flex_attention(q, q, q, bad); }, {});
  EXPECT_NE(msg.find("score_mod:3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("no_such_name"), std::string::npos) << msg;

  const RuntimeMaskMod bad_mask("q_idx >= kv_idx +", {}, "");
  const std::string m2 = expect_error_from(
      "create_block_mask", [&] { (void)create_block_mask(bad_mask, 1, 1, 8, 8); }, {});
  EXPECT_NE(m2.find("mask_mod:"), std::string::npos) << m2;
  const RuntimeMaskMod bad_rule("q_idx >= kv_idx", {}, "q0 < k1 ? empty : nope");
  const std::string m3 = expect_error_from(
      "create_block_mask", [&] { (void)create_block_mask(bad_rule, 1, 1, 8, 8); }, {});
  EXPECT_NE(m3.find("tile_kind:1"), std::string::npos) << m3;
}

// A call whose variant does not compile leaves the caller's outputs as they were.
TEST(RuntimeErrors, OutputsUntouchedWhenTheSourceDoesNotCompile) {
  const Tensor q = Tensor::from_host(std::vector<float>(64, 0.5f).data(), {1, 1, 8, 8},
                                     DType::f32);
  Tensor out = Tensor::empty({1, 1, 8, 8}, DType::f32), lse = Tensor::empty({1, 1, 8}, DType::f32);
  out.fill(kNaN);
  lse.fill(kNaN);
  const RuntimeScoreMod bad(nonce() + "score + )");
  const auto bm = create_block_mask(NoopMask{}, 1, 1, 8, 8);
  expect_error_from("flex_attention", [&] {
    flex_attention_into(q.view(), q.view(), q.view(), out.view(), lse.view(), bad, bm);
  }, {});
  for (float x : out.to_host()) EXPECT_TRUE(std::isnan(x));
  for (float x : lse.to_host()) EXPECT_TRUE(std::isnan(x));
}

TEST(RuntimeErrors, BadCapturesAreNamed) {
  const Tensor t = Tensor::from_host(std::vector<float>(4, 1.0f).data(), {4}, DType::f32);
  expect_error_from("RuntimeScoreMod", [&] { RuntimeScoreMod("score", {{"9lives", t}}); },
                    {"9lives"});
  expect_error_from("RuntimeScoreMod", [&] { RuntimeScoreMod("score", {{"q_idx", t}}); },
                    {"q_idx", "reserved"});
  expect_error_from("RuntimeScoreMod", [&] { RuntimeScoreMod("score", {{"_x", t}}); }, {"_x"});
  expect_error_from("RuntimeScoreMod", [&] { RuntimeScoreMod("score", {{"t", t}, {"t", t}}); },
                    {"t", "twice"});
  expect_error_from("RuntimeMaskMod", [&] { RuntimeMaskMod("true", {{"u", Tensor()}}); },
                    {"u", "undefined"});
  expect_error_from("RuntimeScoreMod", [&] { RuntimeScoreMod("  \n "); }, {"empty"});
  std::vector<Capture> many;
  for (int i = 0; i < 9; ++i) many.push_back({"c" + std::to_string(i), t});
  expect_error_from("RuntimeScoreMod", [&] { RuntimeScoreMod("score", many); }, {"captures"});
}

}  // namespace
}  // namespace flexattn::testing
