// Every GPU entry point on a caller's NON-BLOCKING stream, raced against the stream's own work.
//
// The documented behaviour (attention.h, block_mask.h, tensor.h): a GPU call enqueues everything
// on its stream (AttentionOptions.stream, BlockMaskOptions.stream), results are valid once the
// stream's work is (cudaStreamSynchronize), and host copies wait for the stream of what they read.
// Each race: the inputs are poisoned (and the poison has landed), then the stream runs a spin
// kernel of kSpinMs and only after it rewrites the inputs from their sources; the entry point is
// called right away. Anything the library runs on another stream (the legacy default stream does
// not order against a non-blocking one) or without waiting for the stream reads the poison - NaN
// inputs, or one document where there are several - and fails the float64 comparison.
// Host-compiled: the library's prebuilt stock variants run.
#include <cuda_runtime.h>
#include <flexattn/flexattn.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gpu_check.h"
#include "gpu_spin.h"

namespace fa = flexattn;
using fa::DType;
using fa::Device;

namespace {

constexpr double kSpinMs = 25.0;  // far longer than a call takes to enqueue its work
constexpr int64_t kB = 1, kHq = 4, kHkv = 2, kL = 300, kD = 64;
constexpr DType kDt = DType::bf16;

size_t bytes_of(const fa::Tensor& t) { return size_t(t.numel()) * fa::dtype_size(t.dtype()); }

class NonBlockingStream : public fa::gpu_test::GpuTest {
 protected:
  void SetUp() override {
    fa::gpu_test::GpuTest::SetUp();
    if (IsSkipped()) return;
    ASSERT_EQ(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), cudaSuccess);
  }
  void TearDown() override {
    if (s_ != nullptr) {
      EXPECT_EQ(cudaStreamSynchronize(s_), cudaSuccess);
      EXPECT_EQ(cudaStreamDestroy(s_), cudaSuccess);
    }
  }

  // (destination, source) device buffers of equal size.
  using Copies = std::vector<std::pair<void*, const void*>>;

  // Poisons every destination (all bits set: NaN in every float dtype, -1 as a document id) and
  // waits for it; then enqueues the spin and the rewrites. Returns at once.
  void race(const Copies& copies, const std::vector<size_t>& bytes) {
    for (size_t i = 0; i < copies.size(); ++i) {
      ASSERT_EQ(cudaMemsetAsync(copies[i].first, 0xff, bytes[i], s_), cudaSuccess);
    }
    ASSERT_EQ(cudaStreamSynchronize(s_), cudaSuccess);
    fa::gpu_test::spin_on_stream(s_, kSpinMs);
    for (size_t i = 0; i < copies.size(); ++i) {
      ASSERT_EQ(cudaMemcpyAsync(copies[i].first, copies[i].second, bytes[i],
                                cudaMemcpyDeviceToDevice, s_),
                cudaSuccess);
    }
  }

  cudaStream_t s_ = nullptr;
};

// The float64 oracle and the naive low-precision one for one variant, forward and backward. The
// naive backward is run on the out / lse the tested backward was given (tests/attn_check.h says
// why): naive_grads(out, lse).
struct Expected {
  fa::reference::ForwardResult fwd;
  fa::reference::Grads grads;
  fa::testing::LowpForward naive_fwd;
  std::function<fa::testing::LowpGrads(const fa::testing::LowpForward&)> naive_grads;
};
template <class ScoreMod, class MaskMod>
Expected expected(const fa::reference::Shape& sh, float scale, const fa::gpu_test::Input& q,
                  const fa::gpu_test::Input& k, const fa::gpu_test::Input& v,
                  const fa::gpu_test::Input& dout, ScoreMod score, MaskMod mask) {
  namespace ref = fa::reference;
  Expected e;
  const auto q64 = ref::to_double(q.host), k64 = ref::to_double(k.host),
             v64 = ref::to_double(v.host);
  e.fwd = ref::forward(sh, q64, k64, v64, double(scale), score, mask);
  e.grads = ref::backward(sh, q64, k64, v64, ref::to_double(dout.host), double(scale), score, mask);
  e.naive_fwd = fa::testing::naive_forward_lowp(sh, kDt, scale, q.host, k.host, v.host, score, mask);
  e.naive_grads = [sh, scale, &q, &k, &v, &dout, score, mask](const fa::testing::LowpForward& f) {
    return fa::testing::naive_backward_lowp(sh, kDt, scale, q.host, k.host, v.host, dout.host, f,
                                            score, mask);
  };
  return e;
}

void expect_forward(const char* what, const fa::Tensor& out, const fa::Tensor& lse,
                    const Expected& e) {
  SCOPED_TRACE(what);
  const double eps = fa::gpu_test::dtype_eps(kDt);
  fa::gpu_test::expect_close("out", out.to_host(), e.fwd.out, e.naive_fwd.out, 2.0, eps, what);
  fa::gpu_test::expect_close("lse", lse.to_host(), e.fwd.lse, e.naive_fwd.lse, 2.0, 1e-5, what);
}

// out, lse: what the tested backward was given.
void expect_grads(const char* what, const fa::Tensor& dq, const fa::Tensor& dk,
                  const fa::Tensor& dv, const fa::Tensor& out, const fa::Tensor& lse,
                  const Expected& e) {
  SCOPED_TRACE(what);
  const double eps = fa::gpu_test::dtype_eps(kDt);
  const fa::testing::LowpGrads naive = e.naive_grads({out.to_host(), lse.to_host()});
  fa::gpu_test::expect_close("dq", dq.to_host(), e.grads.dq, naive.dq, 3.0, eps, what);
  fa::gpu_test::expect_close("dk", dk.to_host(), e.grads.dk, naive.dk, 3.0, eps, what);
  fa::gpu_test::expect_close("dv", dv.to_host(), e.grads.dv, naive.dv, 3.0, eps, what);
}

// Documents of 37, 93, 1, 119 and 50 positions.
std::vector<int32_t> document_ids() {
  std::vector<int32_t> ids(static_cast<size_t>(kL));
  const int64_t ends[] = {37, 130, 131, 250, kL};
  int32_t doc = 0;
  for (int64_t i = 0; i < kL; ++i) {
    while (i >= ends[doc]) ++doc;
    ids[size_t(i)] = doc;
  }
  return ids;
}

TEST_F(NonBlockingStream, EveryEntryPointIsOrderedOnTheStream) {
  const uint64_t seed = fa::gpu_test::fresh_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed) + " (FLEXATTN_TEST_SEED reproduces)");
  std::mt19937_64 rng(seed);
  const fa::reference::Shape sh = fa::gpu_test::shape(kB, kHq, kHkv, kL, kL, kD);
  const float scale = 1.0f / 8.0f;
  // Sources (written and synchronised by from_host) and the inputs the races rewrite.
  const auto q = fa::gpu_test::random_input({kB, kHq, kL, kD}, kDt, rng);
  const auto k = fa::gpu_test::random_input({kB, kHkv, kL, kD}, kDt, rng);
  const auto v = fa::gpu_test::random_input({kB, kHkv, kL, kD}, kDt, rng);
  const auto dout = fa::gpu_test::random_input({kB, kHq, kL, kD}, kDt, rng);
  fa::Tensor qi = fa::Tensor::empty(q.t.shape(), kDt, Device::cuda, s_);
  fa::Tensor ki = fa::Tensor::empty(k.t.shape(), kDt, Device::cuda, s_);
  fa::Tensor vi = fa::Tensor::empty(v.t.shape(), kDt, Device::cuda, s_);
  fa::Tensor di = fa::Tensor::empty(dout.t.shape(), kDt, Device::cuda, s_);
  const Copies qkv = {{qi.data(), q.t.data()}, {ki.data(), k.t.data()}, {vi.data(), v.t.data()}};
  const std::vector<size_t> qkv_bytes = {bytes_of(q.t), bytes_of(k.t), bytes_of(v.t)};
  Copies qkvd = qkv;
  qkvd.push_back({di.data(), dout.t.data()});
  std::vector<size_t> qkvd_bytes = qkv_bytes;
  qkvd_bytes.push_back(bytes_of(dout.t));

  const std::vector<int32_t> docs_host = document_ids();
  const fa::Buffer docs_src = fa::Buffer::from_host(docs_host.data(), docs_host.size() * 4,
                                                    Device::cuda);
  fa::Buffer docs = fa::Buffer::allocate(docs_host.size() * 4, Device::cuda, s_);
  const auto* docs_dev = static_cast<const int32_t*>(docs.data());
  // The allocations above are ordered on the stream: done before the default stream uses them.
  ASSERT_EQ(cudaStreamSynchronize(s_), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(docs.data(), docs_src.data(), docs_host.size() * 4,
                       cudaMemcpyDeviceToDevice),
            cudaSuccess);

  fa::AttentionOptions opts;
  opts.stream = s_;
  opts.enable_gqa = true;
  opts.scale = scale;
  fa::BlockMaskOptions bo;
  bo.device = Device::cuda;
  bo.stream = s_;

  // Warm-up on the default stream: module loads and the dense mask's first build stay out of the
  // races.
  {
    fa::AttentionOptions o0 = opts;
    o0.stream = nullptr;
    fa::BlockMaskOptions b0 = bo;
    b0.stream = nullptr;
    const auto m0 = fa::create_block_mask(fa::document(docs_dev), 1, 1, kL, kL, b0);
    const auto m1 = fa::create_block_mask(fa::causal(), 1, 1, kL, kL, b0);
    const auto a = fa::flex_attention(q.t, k.t, v.t, fa::alibi(int(kHq)), m1, o0);
    const auto b = fa::flex_attention(q.t, k.t, v.t, m0, o0);
    const auto c = fa::flex_attention(q.t, k.t, v.t, fa::softcap(20.0f), o0);
    const auto d = fa::flex_attention(q.t, k.t, v.t, o0);
    fa::flex_attention_backward(q.t, k.t, v.t, a.out, a.lse, dout.t, fa::alibi(int(kHq)), m1, o0);
    fa::flex_attention_backward(q.t, k.t, v.t, b.out, b.lse, dout.t, m0, o0);
    fa::flex_attention_backward(q.t, k.t, v.t, c.out, c.lse, dout.t, fa::softcap(20.0f), o0);
    fa::flex_attention_backward(q.t, k.t, v.t, d.out, d.lse, dout.t, o0);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }

  // ---- create_block_mask on the stream; sparsity() and to_string() wait for it ----------------
  race({{docs.data(), docs_src.data()}}, {docs_host.size() * 4});
  const auto bm_doc = fa::create_block_mask(fa::document(docs_dev), 1, 1, kL, kL, bo);
  const auto bm_doc_cpu = fa::create_block_mask(fa::document(docs_host.data()), 1, 1, kL, kL);
  EXPECT_EQ(bm_doc.sparsity(), bm_doc_cpu.sparsity());
  race({{docs.data(), docs_src.data()}}, {docs_host.size() * 4});
  const auto bm_doc2 = fa::create_block_mask(fa::document(docs_dev), 1, 1, kL, kL, bo);
  EXPECT_EQ(bm_doc2.to_string(), bm_doc_cpu.to_string());
  const auto bm_causal = fa::create_block_mask(fa::causal(), 1, 1, kL, kL, bo);

  // ---- forward: score_mod and block mask; block mask; score_mod; neither -----------------------
  race(qkv, qkv_bytes);
  const auto o_alibi = fa::flex_attention(qi, ki, vi, fa::alibi(int(kHq)), bm_causal, opts);
  race(qkv, qkv_bytes);
  const auto o_doc = fa::flex_attention(qi, ki, vi, bm_doc, opts);
  race(qkv, qkv_bytes);
  const auto o_cap = fa::flex_attention(qi, ki, vi, fa::softcap(20.0f), opts);
  race(qkv, qkv_bytes);
  const auto o_noop = fa::flex_attention(qi, ki, vi, opts);

  // ---- backward, the same four -----------------------------------------------------------------
  race(qkvd, qkvd_bytes);
  const auto g_alibi = fa::flex_attention_backward(qi, ki, vi, o_alibi.out, o_alibi.lse, di,
                                                   fa::alibi(int(kHq)), bm_causal, opts);
  race(qkvd, qkvd_bytes);
  const auto g_doc =
      fa::flex_attention_backward(qi, ki, vi, o_doc.out, o_doc.lse, di, bm_doc, opts);
  race(qkvd, qkvd_bytes);
  const auto g_cap = fa::flex_attention_backward(qi, ki, vi, o_cap.out, o_cap.lse, di,
                                                 fa::softcap(20.0f), opts);
  race(qkvd, qkvd_bytes);
  const auto g_noop =
      fa::flex_attention_backward(qi, ki, vi, o_noop.out, o_noop.lse, di, opts);

  // ---- the *_into layer, outputs the caller made on the stream -----------------------------------
  fa::Tensor out = fa::Tensor::empty(q.t.shape(), kDt, Device::cuda, s_);
  fa::Tensor lse = fa::Tensor::empty({kB, kHq, kL}, DType::f32, Device::cuda, s_);
  fa::Tensor dq = fa::Tensor::empty(q.t.shape(), kDt, Device::cuda, s_);
  fa::Tensor dk = fa::Tensor::empty(k.t.shape(), kDt, Device::cuda, s_);
  fa::Tensor dv = fa::Tensor::empty(v.t.shape(), kDt, Device::cuda, s_);
  for (fa::Tensor* t : {&out, &lse, &dq, &dk, &dv}) t->fill(std::nanf(""));
  race(qkv, qkv_bytes);
  fa::flex_attention_into(qi.view(), ki.view(), vi.view(), out.view(), lse.view(),
                          fa::NoopScore{}, bm_doc, opts);
  race(qkvd, qkvd_bytes);
  fa::flex_attention_backward_into(qi.view(), ki.view(), vi.view(), out.view(), lse.view(),
                                   di.view(), dq.view(), dk.view(), dv.view(), fa::NoopScore{},
                                   bm_doc, opts);

  ASSERT_EQ(cudaStreamSynchronize(s_), cudaSuccess);
  const Expected e_alibi = expected(sh, scale, q, k, v, dout, fa::alibi(int(kHq)), fa::causal());
  const Expected e_doc =
      expected(sh, scale, q, k, v, dout, fa::NoopScore{}, fa::document(docs_host.data()));
  const Expected e_cap = expected(sh, scale, q, k, v, dout, fa::softcap(20.0f), fa::noop_mask());
  const Expected e_noop = expected(sh, scale, q, k, v, dout, fa::NoopScore{}, fa::noop_mask());
  expect_forward("flex_attention(score_mod, block_mask)", o_alibi.out, o_alibi.lse, e_alibi);
  expect_forward("flex_attention(block_mask)", o_doc.out, o_doc.lse, e_doc);
  expect_forward("flex_attention(score_mod)", o_cap.out, o_cap.lse, e_cap);
  expect_forward("flex_attention()", o_noop.out, o_noop.lse, e_noop);
  expect_grads("flex_attention_backward(score_mod, block_mask)", g_alibi.dq, g_alibi.dk,
               g_alibi.dv, o_alibi.out, o_alibi.lse, e_alibi);
  expect_grads("flex_attention_backward(block_mask)", g_doc.dq, g_doc.dk, g_doc.dv, o_doc.out,
               o_doc.lse, e_doc);
  expect_grads("flex_attention_backward(score_mod)", g_cap.dq, g_cap.dk, g_cap.dv, o_cap.out,
               o_cap.lse, e_cap);
  expect_grads("flex_attention_backward()", g_noop.dq, g_noop.dk, g_noop.dv, o_noop.out,
               o_noop.lse, e_noop);
  expect_forward("flex_attention_into", out, lse, e_doc);
  expect_grads("flex_attention_backward_into", dq, dk, dv, out, lse, e_doc);
}

// Tensor and Buffer copies of memory that belongs to the stream.
TEST_F(NonBlockingStream, CopiesWaitForTheStream) {
  std::mt19937_64 rng(fa::gpu_test::fresh_seed());
  const auto src = fa::gpu_test::random_input({3, 1000}, kDt, rng);
  const size_t bytes = bytes_of(src.t);

  // to_host waits for the stream's copy into the tensor.
  fa::Tensor t = fa::Tensor::empty(src.t.shape(), kDt, Device::cuda, s_);
  race({{t.data(), src.t.data()}}, {bytes});
  EXPECT_EQ(t.to_host(), src.host);

  // fill is ordered after the stream's copy (a fill run first would be overwritten by it).
  race({{t.data(), src.t.data()}}, {bytes});
  t.fill(0.25f);
  EXPECT_EQ(t.to_host(), std::vector<float>(src.host.size(), 0.25f));

  // Buffer: from_host on the stream lands after the spin and is complete on return;
  // copy_to_host waits for the stream.
  std::vector<int32_t> ids(4096);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(i * 7 + 1);
  fa::gpu_test::spin_on_stream(s_, kSpinMs);
  const fa::Buffer b = fa::Buffer::from_host(ids.data(), ids.size() * 4, Device::cuda, s_);
  std::vector<int32_t> back(ids.size(), 0);
  ASSERT_EQ(cudaMemcpy(back.data(), b.data(), ids.size() * 4, cudaMemcpyDeviceToHost),
            cudaSuccess);
  EXPECT_EQ(back, ids);
  fa::Buffer c = fa::Buffer::allocate(ids.size() * 4, Device::cuda, s_);
  race({{c.data(), b.data()}}, {ids.size() * 4});
  std::fill(back.begin(), back.end(), 0);
  c.copy_to_host(back.data(), ids.size() * 4);
  EXPECT_EQ(back, ids);
}

}  // namespace
