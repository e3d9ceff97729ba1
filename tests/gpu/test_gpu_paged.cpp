// GPU tests of the serving path (paged.h): attention over a paged KV cache through the decode
// kernel, append_kv, and small-Lq contiguous calls routed to the same kernel. Host-compiled, so the
// library's prebuilt stock variants run (a user's own functors: test_gpu_custom.cu). Inputs are
// fresh random values, outputs poisoned with NaN, every result checked against the float64
// oracle on the gathered pages (tests/paged_check.h; PyTorch is the second oracle in
// tools/gpu/check_vs_torch.py's paged cases).
#include <cuda_runtime.h>
#include <flexattn/detail/cuda/launch_record.h>
#include <flexattn/flexattn.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_check.h"
#include "tests/error_match.h"
#include "tests/paged_check.h"
#include "tools/stock_variants.h"

namespace fa = flexattn;
using fa::DType;
using fa::Device;
using fa::gpu_test::GpuTest;
using fa::testing::PagedShape;

namespace {

std::vector<float> host_of(const fa::Tensor& t) { return t.to_host(); }
std::vector<int32_t> ints_of(const fa::Tensor& t) {
  std::vector<int32_t> x(size_t(t.numel()));
  t.copy_to_host(x.data());
  return x;
}

// Runs the named stock variant over the cache into poisoned outputs and checks it. `expect`
// names the kernel that must have run ("" to skip the check).
void check_stock_paged(const std::string& variant, const PagedShape& s, DType dt, uint64_t seed,
                       const std::string& expect = "") {
  SCOPED_TRACE(variant + " " + fa::testing::describe(s, dt) + " seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const fa::testing::PagedInputs in = fa::testing::make_paged_inputs(rng, s, dt, Device::cuda);
  fa::stock::VariantParams p;
  p.window = 37;
  p.prefix = 50;
  p.cap = 8.0f;
  p.num_heads = int(s.Hq);
  // Document ids over every position a sequence can hold (the mods see kv_len - Lq + i).
  const int64_t positions = in.ref.max_pages * s.page_size;
  std::vector<int32_t> docs(static_cast<size_t>(positions));
  for (int64_t i = 0; i < positions; ++i) docs[size_t(i)] = int32_t((i * 7 / 300) % 5);
  const fa::Buffer docs_dev = fa::Buffer::from_host(docs.data(), docs.size() * 4, Device::cuda);
  p.doc_ids = static_cast<const int32_t*>(docs_dev.data());
  p.doc_ids_host = docs.data();
  fa::AttentionOptions opts;
  opts.enable_gqa = s.Hq != s.Hkv;
  if (variant == "softcap") opts.scale = 1.0f;
  fa::stock::visit_variant(variant, p, [&](auto score, auto mask, auto host_mask) {
    fa::Tensor out = fa::gpu_test::poisoned({s.B, s.Hq, s.Lq, s.Dv}, dt);
    fa::Tensor lse = fa::gpu_test::poisoned({s.B, s.Hq, s.Lq}, DType::f32);
    fa::flex_attention_into(in.q.view(), in.kv, out.view(), lse.view(), score, mask, opts);
    if (!expect.empty()) {
      EXPECT_EQ(fa::detail::cuda::last_launch(), expect);
    }
    fa::testing::check_paged(in, host_of(out), host_of(lse), dt,
                             fa::testing::resolved_scale(opts, s.D), score, host_mask);
  });
}

const std::vector<std::string> kAllStock(std::begin(fa::stock::kStockVariantNames),
                                         std::end(fa::stock::kStockVariantNames));

// Every stock variant, every page size (the kernel takes any; 1 and 7 are the odd ones), ragged
// lengths from 0 to several pages in one batch, GQA 1/4/8, Lq 1..64, both dtypes and head dims.
TEST_F(GpuTest, PagedStockVariantsEveryPageSize) {
  const int64_t page_sizes[] = {16, 32, 64, 128, 256, 1, 7};
  const int64_t lqs[] = {1, 3, 16, 5, 64, 1, 17};
  const int64_t groups[] = {1, 4, 8};
  int n = 0;
  for (const int64_t ps : page_sizes) {
    for (const std::string& variant : kAllStock) {
      PagedShape s;
      s.B = 5;
      s.Hkv = 2;
      s.Hq = s.Hkv * groups[n % 3];
      s.Lq = lqs[n % 7];
      s.D = s.Dv = n % 2 ? 64 : 128;
      s.page_size = ps;
      s.kv_len = {0, 1, int(ps), int(3 * ps + 5), int(std::min<int64_t>(700, 40 * ps))};
      check_stock_paged(variant, s, n % 2 ? DType::f16 : DType::bf16, fa::gpu_test::fresh_seed());
      ++n;
    }
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// One long sequence: the keys are split across CTAs and merged (decode_split), the sliding
// window shares out only its own tiles, and a causal speculative step (Lq 4) too. 313 tiles of
// 64 keys: the tile rule's span is found over 105 chunks of 3 tiles (DecodeKvWalk::rule_span),
// the window's in the last ones, the document mask's kept tiles scattered over all of them (its
// rule calls a chunk of mixed documents partial where none of its tiles keeps a key).
TEST_F(GpuTest, PagedSplitKvLongSequences) {
  for (const std::string variant : {"noop", "sliding_window", "causal", "softcap", "document"}) {
    PagedShape s;
    s.B = 1;
    s.Hq = 32;
    s.Hkv = 8;
    s.Lq = variant == "causal" ? 4 : 1;
    s.D = s.Dv = 128;
    s.page_size = 16;
    s.kv_len = {20011};
    check_stock_paged(variant, s, DType::bf16, fa::gpu_test::fresh_seed(), "decode_split");
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// Steps of append_kv across page boundaries (T = 1, then 37, then 0), each followed by attention
// over the grown cache; the host copy of the cache grows the same way for the oracle.
TEST_F(GpuTest, PagedAppendAcrossPagesThenAttend) {
  const uint64_t seed = fa::gpu_test::fresh_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  PagedShape s;
  s.B = 3;
  s.Hq = 8;
  s.Hkv = 2;
  s.D = s.Dv = 64;
  s.page_size = 16;
  s.kv_len = {15, 0, 40};
  s.spare_pages = 4;  // room for 1 + 1 + 37 tokens
  fa::testing::PagedInputs in = fa::testing::make_paged_inputs(rng, s, DType::bf16, Device::cuda);
  fa::AttentionOptions opts;
  opts.enable_gqa = true;
  for (const int64_t T : {1, 1, 37, 0}) {
    std::vector<float> k = fa::reference::random_normal(s.B * s.Hkv * T * s.D, rng);
    std::vector<float> v = fa::reference::random_normal(s.B * s.Hkv * T * s.Dv, rng);
    for (float& x : k) x = fa::reference::round_to(DType::bf16, x);
    for (float& x : v) x = fa::reference::round_to(DType::bf16, x);
    fa::append_kv(in.kv, fa::Tensor::from_host(k.data(), {s.B, s.Hkv, T, s.D}, DType::bf16,
                                               Device::cuda),
                  fa::Tensor::from_host(v.data(), {s.B, s.Hkv, T, s.Dv}, DType::bf16,
                                        Device::cuda));
    fa::reference::PagedCase& c = in.ref;
    for (int64_t b = 0; b < s.B; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        const int64_t pos = c.kv_len[size_t(b)] + t;
        const int64_t page = c.page_table[size_t(b * c.max_pages + pos / s.page_size)];
        for (int64_t h = 0; h < s.Hkv; ++h) {
          for (int64_t e = 0; e < s.D; ++e) {
            const int64_t row = (page * s.Hkv + h) * s.page_size + pos % s.page_size;
            const size_t dst = size_t(row * s.D + e);
            c.k_pages[dst] = k[size_t(((b * s.Hkv + h) * T + t) * s.D + e)];
            c.v_pages[dst] = v[size_t(((b * s.Hkv + h) * T + t) * s.Dv + e)];
          }
        }
      }
      c.kv_len[size_t(b)] += int32_t(T);
    }
    EXPECT_EQ(ints_of(in.kv.kv_len), c.kv_len);
    fa::Tensor out = fa::gpu_test::poisoned({s.B, s.Hq, s.Lq, s.Dv}, DType::bf16);
    fa::Tensor lse = fa::gpu_test::poisoned({s.B, s.Hq, s.Lq}, DType::f32);
    fa::flex_attention_into(in.q.view(), in.kv, out.view(), lse.view(), fa::NoopScore{},
                            fa::causal(), opts);
    fa::testing::check_paged(in, host_of(out), host_of(lse), DType::bf16,
                             fa::testing::resolved_scale(opts, s.D), fa::NoopScore{},
                             fa::causal());
  }
}

// An append that would outgrow its pages, or write through a bad page id, is refused whole: the
// pages and the lengths are bitwise what they were.
TEST_F(GpuTest, PagedAppendOverflowRefusedWhole) {
  std::mt19937_64 rng(fa::gpu_test::fresh_seed());
  PagedShape s;
  s.B = 2;
  s.Hq = s.Hkv = 2;
  s.D = s.Dv = 64;
  s.page_size = 16;
  s.kv_len = {10, 30};  // pages: 2 + 1 spare each: capacity 48
  fa::testing::PagedInputs in = fa::testing::make_paged_inputs(rng, s, DType::f16, Device::cuda);
  const std::vector<float> k0 = host_of(in.kv.k_pages), v0 = host_of(in.kv.v_pages);
  const std::vector<int32_t> len0 = ints_of(in.kv.kv_len);
  auto same = [&] {
    const std::vector<float> k1 = host_of(in.kv.k_pages), v1 = host_of(in.kv.v_pages);
    EXPECT_EQ(0, std::memcmp(k0.data(), k1.data(), k0.size() * 4));
    EXPECT_EQ(0, std::memcmp(v0.data(), v1.data(), v0.size() * 4));
    EXPECT_EQ(ints_of(in.kv.kv_len), len0);
  };
  const int64_t T = 19;  // 30 + 19 = 49 > 48
  const std::vector<float> x = fa::reference::random_normal(s.B * s.Hkv * T * s.D, rng);
  const fa::Tensor kn =
      fa::Tensor::from_host(x.data(), {s.B, s.Hkv, T, s.D}, DType::f16, Device::cuda);
  fa::testing::expect_error_from("append_kv", [&] { fa::append_kv(in.kv, kn, kn); },
                                 {"outgrow", "kv_len"});
  same();
  // A bad id in a slot the next token would use (sequence 0's second page).
  std::vector<int32_t> table = in.ref.page_table;
  table[1] = -3;
  fa::PagedKV bad = in.kv;
  bad.page_table = fa::Tensor::from_host(table.data(), {s.B, in.ref.max_pages}, Device::cuda);
  const fa::Tensor kn8 =
      fa::Tensor::from_host(x.data(), {s.B, s.Hkv, 8, s.D}, DType::f16, Device::cuda);
  fa::testing::expect_error_from("append_kv", [&] { fa::append_kv(bad, kn8, kn8); },
                                 {"page_table", "num_pages"});
  same();
}

// A kv_len past the capacity, or a bad page id below kv_len, cannot be reported by the kernel:
// that sequence's rows come out NaN, the others stay right.
TEST_F(GpuTest, PagedBadLengthsAndPagesGiveNaNRows) {
  const uint64_t seed = fa::gpu_test::fresh_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  PagedShape s;
  s.B = 3;
  s.Hq = s.Hkv = 2;
  s.D = s.Dv = 128;
  s.page_size = 32;
  s.kv_len = {100, 70, 50};
  const fa::testing::PagedInputs in =
      fa::testing::make_paged_inputs(rng, s, DType::bf16, Device::cuda);
  std::vector<int32_t> lens = in.ref.kv_len, table = in.ref.page_table;
  lens[0] = int32_t(in.ref.max_pages * s.page_size + 1);
  table[size_t(1 * in.ref.max_pages + 1)] = int32_t(in.ref.num_pages);  // sequence 1, token 32..
  fa::PagedKV kv = in.kv;
  kv.kv_len = fa::Tensor::from_host(lens.data(), {s.B}, Device::cuda);
  kv.page_table = fa::Tensor::from_host(table.data(), {s.B, in.ref.max_pages}, Device::cuda);
  const fa::AttentionOutput r = fa::flex_attention(in.q, kv);
  const std::vector<float> out = host_of(r.out), lse = host_of(r.lse);
  const auto ref = fa::reference::paged_forward(in.ref, 1.0 / std::sqrt(128.0), fa::NoopScore{},
                                                fa::noop_mask());
  const int64_t row = s.Hq * s.Lq;
  for (int64_t i = 0; i < row * 2; ++i) EXPECT_TRUE(std::isnan(lse[size_t(i)])) << i;
  for (int64_t i = 0; i < row * 2 * s.Dv; ++i) ASSERT_TRUE(std::isnan(out[size_t(i)])) << i;
  for (int64_t i = row * 2; i < row * 3; ++i) {
    EXPECT_NEAR(lse[size_t(i)], ref.lse[size_t(i)], 1e-3);
  }
}

// Contiguous calls with few query rows go through the decode kernel, with and without a split.
TEST_F(GpuTest, ContiguousSmallLqTakesTheDecodeKernel) {
  std::mt19937_64 rng(fa::gpu_test::fresh_seed());
  fa::BlockMaskOptions bo;
  bo.device = Device::cuda;
  for (const auto& [B, Lq, Lkv, expect] :
       {std::tuple{1, 1, 30000, "decode_split"}, {64, 16, 300, "decode"}}) {
    const auto q = fa::gpu_test::random_input({B, 8, Lq, 128}, DType::bf16, rng);
    const auto k = fa::gpu_test::random_input({B, 2, Lkv, 128}, DType::bf16, rng);
    fa::AttentionOptions opts;
    opts.enable_gqa = true;
    const auto bm = fa::create_block_mask(fa::noop_mask(), 1, 1, Lq, Lkv, bo);
    fa::flex_attention(q.t, k.t, k.t, bm, opts);
    EXPECT_EQ(fa::detail::cuda::last_launch(), std::string(expect));
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// Errors of the paged call on the GPU: f32 pages, D != Dv.
TEST_F(GpuTest, PagedErrorsOnTheGpu) {
  std::mt19937_64 rng(fa::gpu_test::fresh_seed());
  PagedShape s;
  s.kv_len = {20};
  s.D = s.Dv = 64;
  const fa::testing::PagedInputs f32 =
      fa::testing::make_paged_inputs(rng, s, DType::f32, Device::cuda);
  fa::testing::expect_error_from("flex_attention", [&] { fa::flex_attention(f32.q, f32.kv); },
                                 {"f16", "bf16", "f32"});
  s.Dv = 32;
  const fa::testing::PagedInputs dv =
      fa::testing::make_paged_inputs(rng, s, DType::bf16, Device::cuda);
  fa::testing::expect_error_from("flex_attention", [&] { fa::flex_attention(dv.q, dv.kv); },
                                 {"Dv", "D"});
}

}  // namespace
