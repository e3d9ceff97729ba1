// GPU tests of the stock variants, compiled by the host compiler: every call goes through the
// library's prebuilt CUDA instantiations (detail/variants.h) - the path the CLI and any .cpp caller
// take. The user's own functors (compile-time fusion in a .cu) are in test_gpu_custom.cu.
#include <cuda_runtime.h>
#include <flexattn/flexattn.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <iterator>
#include <random>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gpu_check.h"
#include "tools/stock_variants.h"

namespace fa = flexattn;
using fa::DType;
using fa::Device;
using fa::gpu_test::CaseOptions;
using fa::gpu_test::check_attention;
using fa::gpu_test::GpuTest;
using fa::gpu_test::shape;

namespace {

// Document ids for positions [0, n): documents of varied lengths so that tiles are full, empty and
// partial. Positions from `masked_from` on get an id no key before them shares (with Lq > Lkv that
// gives fully masked query rows).
struct Docs {
  std::vector<int32_t> host;
  fa::Buffer dev;
  const int32_t* d() const { return static_cast<const int32_t*>(dev.data()); }
};
Docs make_docs(int64_t n, int64_t masked_from = -1) {
  Docs docs;
  docs.host.resize(size_t(n));
  int32_t id = 0;
  int64_t next = 0, len = 5;
  for (int64_t i = 0; i < n; ++i) {
    if (i == next) {
      ++id;
      len = (len * 7 + 3) % 211 + 1;  // 1..211, deterministic
      next = i + len;
    }
    docs.host[size_t(i)] = (masked_from >= 0 && i >= masked_from) ? 1 << 20 : id;
  }
  docs.dev = fa::Buffer::from_host(docs.host.data(), docs.host.size() * 4, Device::cuda);
  return docs;
}

std::string dtype_name(DType d) { return d == DType::bf16 ? "bf16" : "f16"; }

// Runs the named stock variant (tools/stock_variants.h) on one case, with parameters that make
// its tiles empty, full and partial at these lengths (document variants get their ids here).
void check_stock(const std::string& variant, CaseOptions c) {
  c.name = variant;
  const int64_t n = std::max(c.shape.Lq, c.shape.Lkv);
  fa::stock::VariantParams p;
  p.window = 37;
  p.prefix = int(std::min<int64_t>(n / 3 + 1, 300));
  // A cap near the score range so that tanh bends the scores (and its derivative matters).
  p.cap = 8.0f;
  if (variant == "softcap") c.scale = 1.0f;
  p.num_heads = int(c.shape.Hq);
  Docs docs;
  if (fa::stock::needs_doc_ids(variant)) {
    docs = make_docs(n);
    p.doc_ids = docs.d();
    p.doc_ids_host = docs.host.data();
  }
  fa::stock::visit_variant(variant, p, [&](auto score, auto mask, auto host_mask) {
    check_attention(c, score, mask, score, host_mask);
  });
}

const std::vector<std::string> kAllStock(std::begin(fa::stock::kStockVariantNames),
                                         std::end(fa::stock::kStockVariantNames));

// ---- every stock variant x dtype, GQA, Lq != Lkv, forward and backward ------------------------
struct VariantDtype {
  std::string variant;
  DType dtype;
};
class StockVariant : public ::testing::TestWithParam<VariantDtype> {
 protected:
  void SetUp() override {
    if (!fa::cuda_available()) GTEST_SKIP() << "no CUDA device visible: GPU tests skipped";
  }
};

TEST_P(StockVariant, MatchesFloat64Reference) {
  CaseOptions c;
  c.dtype = GetParam().dtype;
  c.shape = shape(2, 4, 2, 300, 257, 64);
  check_stock(GetParam().variant, c);
}

TEST_P(StockVariant, SquareOddLength) {
  CaseOptions c;
  c.dtype = GetParam().dtype;
  c.shape = shape(1, 2, 2, 129, 129, 128);
  check_stock(GetParam().variant, c);
}

// Few query rows take the split-KV decode kernel (launch_decode.cuh): one row against a long K/V
// (split, GQA packed), 5 rows of 8 heads sharing 2 kv heads (two m-blocks), and the same with a
// BlockMask per head; the backward then runs on the decode kernel's out and lse.
TEST_P(StockVariant, DecodeShapes) {
  CaseOptions c;
  c.dtype = GetParam().dtype;
  c.shape = shape(2, 8, 2, 1, 3001, 128);
  check_stock(GetParam().variant, c);
  c.shape = shape(3, 8, 2, 5, 700, 64);
  check_stock(GetParam().variant, c);
  // A BlockMask per query head: the heads of a group have their own lists, so the decode kernel
  // gives each head its own tile (no packing).
  c.mask_H = c.shape.Hq;
  check_stock(GetParam().variant, c);
}

std::vector<VariantDtype> all_variant_dtypes() {
  std::vector<VariantDtype> v;
  for (DType d : {DType::bf16, DType::f16}) {
    for (const auto& name : kAllStock) v.push_back({name, d});
  }
  return v;
}
INSTANTIATE_TEST_SUITE_P(Gpu, StockVariant, ::testing::ValuesIn(all_variant_dtypes()),
                         [](const auto& info) {
                           return info.param.variant + "_" + dtype_name(info.param.dtype);
                         });

// ---- odd lengths, Lq != Lkv -----------------------------------------------------------------
struct Lengths {
  int64_t lq, lkv;
};
class OddLengths : public ::testing::TestWithParam<Lengths> {
 protected:
  void SetUp() override {
    if (!fa::cuda_available()) GTEST_SKIP() << "no CUDA device visible: GPU tests skipped";
  }
};
TEST_P(OddLengths, NoopAndCausal) {
  for (const char* variant : {"noop", "causal"}) {
    CaseOptions c;
    c.dtype = DType::bf16;
    c.shape = shape(1, 2, 1, GetParam().lq, GetParam().lkv, 64);
    check_stock(variant, c);
  }
}
INSTANTIATE_TEST_SUITE_P(Gpu, OddLengths,
                         ::testing::Values(Lengths{1, 1}, Lengths{17, 17}, Lengths{127, 127},
                                           Lengths{129, 129}, Lengths{1000, 1000},
                                           Lengths{1, 1000}, Lengths{17, 129},
                                           Lengths{1000, 127}, Lengths{129, 1}),
                         [](const auto& info) {
                           return "q" + std::to_string(info.param.lq) + "_kv" +
                                  std::to_string(info.param.lkv);
                         });

// ---- head dims ------------------------------------------------------------------------------
// The library may prebuild the stock variants for a subset of head dims (CMake option
// FLEXATTN_CUDA_HEAD_DIMS); a head dim left out is skipped here, not failed: a .cu caller still
// gets every head dim, which test_gpu_custom.cu checks.
class HeadDims : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (!fa::cuda_available()) GTEST_SKIP() << "no CUDA device visible: GPU tests skipped";
  }
  template <class F>
  void run(F&& f) {
    try {
      f();
    } catch (const fa::Error& e) {
      if (std::string(e.what()).find("FLEXATTN_CUDA_HEAD_DIMS") == std::string::npos) throw;
      GTEST_SKIP() << e.what();
    }
  }
};
TEST_P(HeadDims, CausalBothDtypes) {
  run([&] {
    for (DType d : {DType::bf16, DType::f16}) {
      CaseOptions c;
      c.dtype = d;
      c.shape = shape(1, 2, 1, 200, 131, GetParam());
      check_stock("causal", c);
    }
  });
}
TEST_P(HeadDims, SoftcapDocument) {
  run([&] {
    CaseOptions c;
    c.dtype = DType::bf16;
    c.shape = shape(2, 2, 2, 161, 161, GetParam());
    check_stock("softcap", c);
    check_stock("document", c);
  });
}
INSTANTIATE_TEST_SUITE_P(Gpu, HeadDims, ::testing::Values(32, 64, 96, 128, 192, 256));

// ---- GQA ------------------------------------------------------------------------------------
TEST_F(GpuTest, GqaEightQueryHeadsPerKvHeadPairs) {
  for (const char* variant : {"causal", "alibi_causal", "document"}) {
    CaseOptions c;
    c.dtype = DType::bf16;
    c.shape = shape(2, 8, 2, 333, 333, 64);
    check_stock(variant, c);
  }
}

// ---- fully masked rows ----------------------------------------------------------------------
// Document ids of the last queries match no key: those rows must give out 0, lse -inf, dq 0, and
// add nothing to dk/dv (check_attention checks all of it against the reference).
TEST_F(GpuTest, FullyMaskedRowsDocument) {
  for (DType d : {DType::bf16, DType::f16}) {
    CaseOptions c;
    c.dtype = d;
    c.name = "document, queries past Lkv in their own document";
    c.shape = shape(1, 2, 2, 300, 200, 64);
    const Docs docs = make_docs(300, /*masked_from=*/200);
    check_attention(c, fa::NoopScore{}, fa::document(docs.d()), fa::NoopScore{},
                    fa::document(docs.host.data()));
  }
}

// A whole block of rows masked: the tile is skipped entirely, the rows must still be written.
TEST_F(GpuTest, FullyMaskedTileRows) {
  CaseOptions c;
  c.dtype = DType::bf16;
  c.name = "document, 256 masked rows";
  c.shape = shape(1, 2, 2, 456, 200, 128);
  const Docs docs = make_docs(456, /*masked_from=*/200);
  check_attention(c, fa::NoopScore{}, fa::document(docs.d()), fa::NoopScore{},
                  fa::document(docs.host.data()));
}

// ---- BlockMask tiles other than the default 128 x 128 ----------------------------------------
// Mask blocks that are multiples of the kernels' tiles are walked as lists; the forward rejects
// others with an Error (nothing written), the backward may fall back to a dense walk.
TEST_F(GpuTest, BlockMaskTileSizes) {
  for (auto [bq, bkv] : {std::pair{256, 256}, std::pair{256, 128}, std::pair{128, 64},
                         std::pair{384, 192}}) {
    for (const char* variant : {"causal", "document", "sliding_window"}) {
      CaseOptions c;
      c.dtype = DType::bf16;
      c.shape = shape(1, 4, 2, 700, 650, 64);
      c.block_q = bq;
      c.block_kv = bkv;
      check_stock(variant, c);
    }
  }
}

TEST_F(GpuTest, BlockMaskTileTooSmallForTheKernelIsAnError) {
  std::mt19937_64 rng(fa::gpu_test::fresh_seed());
  auto q = fa::gpu_test::random_input({1, 2, 300, 64}, DType::bf16, rng);
  fa::BlockMaskOptions bo;
  bo.device = Device::cuda;
  bo.block_q = 64;  // the forward's query tile is 128 rows
  bo.block_kv = 64;
  const auto bm = fa::create_block_mask(fa::causal(), 1, 1, 300, 300, bo);
  fa::Tensor out = fa::gpu_test::poisoned({1, 2, 300, 64}, DType::bf16);
  fa::Tensor lse = fa::gpu_test::poisoned({1, 2, 300}, DType::f32);
  try {
    fa::flex_attention_into(q.t.view(), q.t.view(), q.t.view(), out.view(), lse.view(),
                            fa::NoopScore{}, bm);
    // Accepted: then it must be right.
    const auto ref = fa::reference::forward(
        fa::gpu_test::shape(1, 2, 2, 300, 300, 64), fa::reference::to_double(q.host),
        fa::reference::to_double(q.host), fa::reference::to_double(q.host), 1.0 / 8.0,
        fa::NoopScore{}, fa::causal());
    EXPECT_LE(fa::reference::max_abs_error(out.to_host(), ref.out), 0.05);
  } catch (const fa::Error& e) {
    std::cout << "  (expected) " << e.what() << "\n";
    for (float x : out.to_host()) ASSERT_TRUE(std::isnan(x)) << "out written on error";
  }
}

// ---- strided views: activations stored [B, L, H, D] ------------------------------------------
// The *_into layer takes strided views; results must equal the contiguous call bit for bit.
TEST_F(GpuTest, StridedBLHDLayoutMatchesContiguous) {
  std::mt19937_64 rng(fa::gpu_test::fresh_seed());
  const int64_t B = 2, H = 4, L = 333, D = 64;
  const DType dt = DType::bf16;
  // Contiguous [B,H,L,D] inputs, and the same values stored [B,L,H,D].
  auto to_blhd = [&](const std::vector<float>& bhld) {
    std::vector<float> r(bhld.size());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t l = 0; l < L; ++l)
          for (int64_t d = 0; d < D; ++d)
            r[size_t(((b * L + l) * H + h) * D + d)] = bhld[size_t(((b * H + h) * L + l) * D + d)];
    return r;
  };
  auto view_of = [&](fa::Tensor& storage) {  // storage [B,L,H,D] seen as [B,H,L,D]
    fa::TensorView v = storage.view();
    v.shape[0] = B, v.shape[1] = H, v.shape[2] = L, v.shape[3] = D;
    v.stride[0] = L * H * D, v.stride[1] = D, v.stride[2] = H * D, v.stride[3] = 1;
    return v;
  };
  std::vector<fa::gpu_test::Input> in;
  std::vector<fa::Tensor> st;
  for (int i = 0; i < 4; ++i) {  // q, k, v, dout
    in.push_back(fa::gpu_test::random_input({B, H, L, D}, dt, rng));
    const auto x = to_blhd(in.back().host);
    st.push_back(fa::Tensor::from_host(x.data(), {B, L, H, D}, dt, Device::cuda));
  }
  fa::BlockMaskOptions bo;
  bo.device = Device::cuda;
  const auto bm = fa::create_block_mask(fa::causal(), 1, 1, L, L, bo);
  const auto ref = fa::flex_attention(in[0].t, in[1].t, in[2].t, bm);
  const auto gref = fa::flex_attention_backward(in[0].t, in[1].t, in[2].t, ref.out, ref.lse,
                                                in[3].t, bm);

  fa::Tensor out = fa::gpu_test::poisoned({B, L, H, D}, dt);
  fa::Tensor lse = fa::gpu_test::poisoned({B, H, L}, DType::f32);
  fa::Tensor dq = fa::gpu_test::poisoned({B, L, H, D}, dt);
  fa::Tensor dk = fa::gpu_test::poisoned({B, L, H, D}, dt);
  fa::Tensor dv = fa::gpu_test::poisoned({B, L, H, D}, dt);
  fa::flex_attention_into(view_of(st[0]), view_of(st[1]), view_of(st[2]), view_of(out),
                          lse.view(), fa::NoopScore{}, bm);
  fa::flex_attention_backward_into(view_of(st[0]), view_of(st[1]), view_of(st[2]), view_of(out),
                                   lse.view(), view_of(st[3]), view_of(dq), view_of(dk),
                                   view_of(dv), fa::NoopScore{}, bm);
  EXPECT_EQ(to_blhd(ref.out.to_host()), out.to_host());
  EXPECT_EQ(ref.lse.to_host(), lse.to_host());
  EXPECT_EQ(to_blhd(gref.dq.to_host()), dq.to_host());
  EXPECT_EQ(to_blhd(gref.dk.to_host()), dk.to_host());
  EXPECT_EQ(to_blhd(gref.dv.to_host()), dv.to_host());
}

// ---- a caller's CUDA stream ------------------------------------------------------------------
TEST_F(GpuTest, NonBlockingStreamGivesTheSameResults) {
  std::mt19937_64 rng(fa::gpu_test::fresh_seed());
  const int64_t L = 777, D = 128;
  auto q = fa::gpu_test::random_input({1, 4, L, D}, DType::bf16, rng);
  auto k = fa::gpu_test::random_input({1, 4, L, D}, DType::bf16, rng);
  auto v = fa::gpu_test::random_input({1, 4, L, D}, DType::bf16, rng);
  auto dout = fa::gpu_test::random_input({1, 4, L, D}, DType::bf16, rng);
  fa::BlockMaskOptions bo;
  bo.device = Device::cuda;
  const auto bm = fa::create_block_mask(fa::causal(), 1, 1, L, L, bo);
  const auto ref = fa::flex_attention(q.t, k.t, v.t, fa::alibi(4), bm);
  const auto gref =
      fa::flex_attention_backward(q.t, k.t, v.t, ref.out, ref.lse, dout.t, fa::alibi(4), bm);

  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  fa::AttentionOptions opts;
  opts.stream = s;
  bo.stream = s;
  const auto bm_s = fa::create_block_mask(fa::causal(), 1, 1, L, L, bo);
  const auto o = fa::flex_attention(q.t, k.t, v.t, fa::alibi(4), bm_s, opts);
  const auto g =
      fa::flex_attention_backward(q.t, k.t, v.t, o.out, o.lse, dout.t, fa::alibi(4), bm_s, opts);
  // A non-blocking stream does not order against the copies below: wait for it, as a caller must.
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(ref.out.to_host(), o.out.to_host());
  EXPECT_EQ(ref.lse.to_host(), o.lse.to_host());
  EXPECT_EQ(gref.dq.to_host(), g.dq.to_host());
  EXPECT_EQ(gref.dk.to_host(), g.dk.to_host());
  EXPECT_EQ(gref.dv.to_host(), g.dv.to_host());
  cudaStreamDestroy(s);
}

// ---- front door (owning tensors, overloads without mask / score_mod) ---------------------------
TEST_F(GpuTest, FrontDoorOverloadsAgreeWithInto) {
  std::mt19937_64 rng(fa::gpu_test::fresh_seed());
  const DType dt = DType::bf16;
  auto q = fa::gpu_test::random_input({1, 4, 250, 64}, dt, rng);
  auto k = fa::gpu_test::random_input({1, 4, 250, 64}, dt, rng);
  auto v = fa::gpu_test::random_input({1, 4, 250, 64}, dt, rng);
  auto dout = fa::gpu_test::random_input({1, 4, 250, 64}, dt, rng);
  fa::BlockMaskOptions gpu;
  gpu.device = Device::cuda;
  const auto dense = fa::create_block_mask(fa::noop_mask(), 1, 1, 250, 250, gpu);
  // Same kernels and inputs: the overloads must agree bit for bit with the explicit-mask call.
  const auto a = fa::flex_attention(q.t, k.t, v.t);
  const auto b = fa::flex_attention(q.t, k.t, v.t, fa::NoopScore{}, dense);
  EXPECT_EQ(a.out.device(), Device::cuda);
  EXPECT_EQ(a.out.dtype(), dt);
  EXPECT_EQ(a.lse.dtype(), DType::f32);
  EXPECT_EQ(a.out.to_host(), b.out.to_host());
  EXPECT_EQ(a.lse.to_host(), b.lse.to_host());
  const auto c = fa::flex_attention(q.t, k.t, v.t, fa::softcap(20.0f));
  const auto d = fa::flex_attention(q.t, k.t, v.t, fa::softcap(20.0f), dense);
  EXPECT_EQ(c.out.to_host(), d.out.to_host());
  const auto ga = fa::flex_attention_backward(q.t, k.t, v.t, a.out, a.lse, dout.t);
  const auto gb = fa::flex_attention_backward(q.t, k.t, v.t, b.out, b.lse, dout.t, dense);
  EXPECT_EQ(ga.dq.to_host(), gb.dq.to_host());
  EXPECT_EQ(ga.dk.to_host(), gb.dk.to_host());
  EXPECT_EQ(ga.dv.to_host(), gb.dv.to_host());
}

// ---- determinism of the default backward --------------------------------------------------------
TEST_F(GpuTest, DefaultBackwardIsBitwiseDeterministic) {
  for (const int64_t D : {64, 128})  // the Hopper kernel sums head dim 64's dQ differently
  for (const char* variant : {"causal", "document", "softcap"}) {
    SCOPED_TRACE(std::string(variant) + " D=" + std::to_string(D));
    std::mt19937_64 rng(fa::gpu_test::fresh_seed());
    const DType dt = DType::bf16;
    const int64_t B = 2, Hq = 8, Hkv = 2, L = 1000;
    auto q = fa::gpu_test::random_input({B, Hq, L, D}, dt, rng);
    auto k = fa::gpu_test::random_input({B, Hkv, L, D}, dt, rng);
    auto v = fa::gpu_test::random_input({B, Hkv, L, D}, dt, rng);
    auto dout = fa::gpu_test::random_input({B, Hq, L, D}, dt, rng);
    const Docs docs = make_docs(L);
    fa::AttentionOptions opts;
    opts.enable_gqa = true;
    ASSERT_TRUE(opts.deterministic) << "deterministic must be the default";
    fa::BlockMaskOptions gpu;
    gpu.device = Device::cuda;
    auto run = [&](auto score, auto mask) {
      const auto bm = fa::create_block_mask(mask, 1, 1, L, L, gpu);
      const auto o = fa::flex_attention(q.t, k.t, v.t, score, bm, opts);
      std::vector<std::vector<float>> r;
      for (int rep = 0; rep < 2; ++rep) {
        const auto g = fa::flex_attention_backward(q.t, k.t, v.t, o.out, o.lse, dout.t, score, bm,
                                                   opts);
        for (const fa::Tensor* t : {&g.dq, &g.dk, &g.dv}) r.push_back(t->to_host());
      }
      for (int i = 0; i < 3; ++i) {
        ASSERT_EQ(r[size_t(i)].size(), r[size_t(i + 3)].size());
        EXPECT_EQ(0, std::memcmp(r[size_t(i)].data(), r[size_t(i + 3)].data(),
                                 r[size_t(i)].size() * sizeof(float)))
            << "gradient " << "qkv"[i] << " differs between two identical backward calls";
      }
    };
    if (std::string(variant) == "causal") run(fa::NoopScore{}, fa::causal());
    if (std::string(variant) == "document") run(fa::NoopScore{}, fa::document(docs.d()));
    if (std::string(variant) == "softcap") run(fa::softcap(30.0f), fa::noop_mask());
  }
}

// The non-deterministic (atomic) mode, where a backend offers one, must still be correct.
TEST_F(GpuTest, NonDeterministicBackwardIsCorrect) {
  std::mt19937_64 rng(fa::gpu_test::fresh_seed());
  const DType dt = DType::bf16;
  const int64_t L = 700, D = 64;
  auto q = fa::gpu_test::random_input({1, 4, L, D}, dt, rng);
  auto k = fa::gpu_test::random_input({1, 4, L, D}, dt, rng);
  auto v = fa::gpu_test::random_input({1, 4, L, D}, dt, rng);
  auto dout = fa::gpu_test::random_input({1, 4, L, D}, dt, rng);
  fa::BlockMaskOptions gpu;
  gpu.device = Device::cuda;
  const auto bm = fa::create_block_mask(fa::causal(), 1, 1, L, L, gpu);
  const auto o = fa::flex_attention(q.t, k.t, v.t, bm);
  fa::AttentionOptions nd;
  nd.deterministic = false;
  const auto g0 = fa::flex_attention_backward(q.t, k.t, v.t, o.out, o.lse, dout.t, bm);
  const auto g1 = fa::flex_attention_backward(q.t, k.t, v.t, o.out, o.lse, dout.t, bm, nd);
  // Only the summation order of dQ may differ: allow bf16 rounding of the largest entries.
  for (const auto& [a, b] : {std::pair{&g0.dq, &g1.dq}, {&g0.dk, &g1.dk}, {&g0.dv, &g1.dv}}) {
    const auto ha = a->to_host(), hb = b->to_host();
    double maxabs = 0.0, maxdiff = 0.0;
    for (size_t i = 0; i < ha.size(); ++i) {
      ASSERT_TRUE(std::isfinite(hb[i]));
      maxabs = std::max(maxabs, double(std::fabs(ha[i])));
      maxdiff = std::max(maxdiff, double(std::fabs(ha[i] - hb[i])));
    }
    EXPECT_LE(maxdiff, 0.02 * maxabs);
  }
}

// ---- errors -----------------------------------------------------------------------------------
TEST_F(GpuTest, ErrorsOnBadInputsAndWritesNothing) {
  std::mt19937_64 rng(fa::gpu_test::fresh_seed());
  auto make = [&](std::vector<int64_t> shape, DType dt, Device dev) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const auto x = fa::reference::random_normal(n, rng);
    return fa::Tensor::from_host(x.data(), std::move(shape), dt, dev);
  };
  fa::BlockMaskOptions gpu;
  gpu.device = Device::cuda;
  const auto bm = fa::create_block_mask(fa::causal(), 1, 1, 64, 64, gpu);
  const auto bm_cpu = fa::create_block_mask(fa::causal(), 1, 1, 64, 64);
  const fa::Tensor q = make({1, 2, 64, 64}, DType::bf16, Device::cuda);

  // f32 on the GPU
  {
    const fa::Tensor q32 = make({1, 2, 64, 64}, DType::f32, Device::cuda);
    EXPECT_THROW(fa::flex_attention(q32, q32, q32, bm), fa::Error);
  }
  // mixed devices: tensors, and the block mask
  {
    const fa::Tensor kc = make({1, 2, 64, 64}, DType::bf16, Device::cpu);
    EXPECT_THROW(fa::flex_attention(q, kc, q, bm), fa::Error);
    EXPECT_THROW(fa::flex_attention(q, q, q, bm_cpu), fa::Error);
  }
  // mixed dtypes
  {
    const fa::Tensor kh = make({1, 2, 64, 64}, DType::f16, Device::cuda);
    EXPECT_THROW(fa::flex_attention(q, kh, q, bm), fa::Error);
  }
  // Hq not a multiple of Hkv; GQA without enable_gqa
  {
    const fa::Tensor q3 = make({1, 3, 64, 64}, DType::bf16, Device::cuda);
    fa::AttentionOptions gqa;
    gqa.enable_gqa = true;
    EXPECT_THROW(fa::flex_attention(q3, q, q, bm, gqa), fa::Error);
    const fa::Tensor q4 = make({1, 4, 64, 64}, DType::bf16, Device::cuda);
    EXPECT_THROW(fa::flex_attention(q4, q, q, bm), fa::Error);
  }
  // block mask of the wrong size
  {
    const auto bm_small = fa::create_block_mask(fa::causal(), 1, 1, 32, 64, gpu);
    EXPECT_THROW(fa::flex_attention(q, q, q, bm_small), fa::Error);
  }
  // unsupported head dims; the poisoned outputs must stay untouched
  for (int64_t D : {int64_t(80), int64_t(512)}) {
    SCOPED_TRACE(D);
    const fa::Tensor qd = make({1, 2, 64, D}, DType::bf16, Device::cuda);
    fa::Tensor out = fa::gpu_test::poisoned({1, 2, 64, D}, DType::bf16);
    fa::Tensor lse = fa::gpu_test::poisoned({1, 2, 64}, DType::f32);
    try {
      fa::flex_attention_into(qd.view(), qd.view(), qd.view(), out.view(), lse.view(),
                              fa::NoopScore{}, bm);
      ADD_FAILURE() << "head dim " << D << " accepted on cuda";
    } catch (const fa::Error& e) {
      std::cout << "  (expected) " << e.what() << "\n";
    }
    for (float x : out.to_host()) ASSERT_TRUE(std::isnan(x)) << "out written on error";
    for (float x : lse.to_host()) ASSERT_TRUE(std::isnan(x)) << "lse written on error";
  }
}

}  // namespace
