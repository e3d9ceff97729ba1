// Runtime variants (runtime.h) on the GPU, from a file compiled by the host compiler: NVRTC builds
// the kernels the library's launchers pick, fused with the variant's source. Checked against the
// float64 oracle evaluating a C++ twin of each source, with captured tensors on the GPU; the
// paged call; a capture on the wrong device; and the compile times (cold, disk, memory) printed.
#include <flexattn/flexattn.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <random>

#include "gpu_check.h"
#include "tests/paged_check.h"

namespace fa = flexattn;
using fa::DType;
using fa::gpu_test::CaseOptions;
using fa::gpu_test::check_attention;
using fa::gpu_test::shape;

namespace {

constexpr const char* kAlibi = "score + slopes[h] * float(kv_idx - q_idx)";
struct AlibiTwin {
  std::vector<float> slopes;
  template <class T>
  T operator()(T s, int, int h, int q, int kv) const {
    return s + slopes[h] * float(kv - q);
  }
};
constexpr const char* kCausal = "q_idx >= kv_idx";
constexpr const char* kCausalRule = "q1 - 1 < k0 ? empty : (k1 - 1 <= q0 ? full : partial)";
constexpr const char* kDoc = "doc[q_idx] == doc[kv_idx]";
struct DocTwin {
  std::vector<int32_t> doc;
  bool operator()(int, int, int q, int kv) const { return doc[q] == doc[kv]; }
};

std::vector<float> slopes_for(int64_t H) {
  std::vector<float> s(static_cast<size_t>(H));
  for (int64_t h = 0; h < H; ++h) s[static_cast<size_t>(h)] = 0.5f / float(h + 1);
  return s;
}

class GpuRuntime : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (!fa::cuda_available()) GTEST_SKIP() << "no CUDA device visible: GPU tests skipped";
  }
};

TEST_P(GpuRuntime, AlibiCausalWithRuleForwardBackward) {
  const int D = GetParam();
  CaseOptions c;
  c.dtype = D == 64 ? DType::f16 : DType::bf16;
  c.shape = shape(2, 8, 4, 300, 300, D);
  c.name = "runtime alibi + causal (rule)";
  const std::vector<float> slopes = slopes_for(8);
  const fa::RuntimeScoreMod score(
      kAlibi, {{"slopes", fa::Tensor::from_host(slopes.data(), {8}, DType::f32, fa::Device::cuda)}});
  const fa::RuntimeMaskMod mask(kCausal, {}, kCausalRule);
  const auto t0 = std::chrono::steady_clock::now();
  check_attention(c, score, mask, AlibiTwin{slopes}, fa::CausalMask{});
  std::printf("[ runtime ] D=%d %s: first check (compiles) %.2f s; cache %s\n", D,
              fa::to_string(c.dtype),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
              fa::runtime_cache_dir().c_str());
}

TEST_P(GpuRuntime, DocumentMaskFromI32CaptureNoRule) {
  const int D = GetParam();
  CaseOptions c;
  c.dtype = DType::bf16;
  c.shape = shape(1, 4, 4, 257, 257, D);
  c.name = "runtime document mask";
  c.mask_H = 1;
  std::vector<int32_t> doc(257);
  for (int i = 0; i < 257; ++i) doc[static_cast<size_t>(i)] = i * i / 257 * 4 / 257;
  const fa::RuntimeMaskMod mask(kDoc, {{"doc", fa::Tensor::from_host(doc.data(), {257},
                                                                     fa::Device::cuda)}});
  check_attention(c, fa::NoopScore{}, mask, fa::NoopScore{}, DocTwin{doc});
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuRuntime, ::testing::Values(64, 128));

TEST(GpuRuntimeMisc, PagedDecodeAndCacheTimes) {
  if (!fa::cuda_available()) GTEST_SKIP() << "no CUDA device visible: GPU tests skipped";
  const uint64_t seed = fa::gpu_test::fresh_seed();
  std::mt19937_64 rng(seed);
  fa::testing::PagedShape s;
  s.B = 3;
  s.Hq = 8;
  s.Hkv = 2;
  s.Lq = 1;
  s.D = s.Dv = 128;
  s.page_size = 16;
  s.kv_len = {0, 77, 1000};
  const auto in = fa::testing::make_paged_inputs(rng, s, DType::bf16, fa::Device::cuda);
  const std::vector<float> slopes = slopes_for(8);
  const fa::RuntimeScoreMod score(
      kAlibi, {{"slopes", fa::Tensor::from_host(slopes.data(), {8}, DType::f32, fa::Device::cuda)}});
  const fa::RuntimeMaskMod mask(kCausal, {}, kCausalRule);
  fa::AttentionOptions opts;
  opts.enable_gqa = true;
  auto run = [&] {
    fa::Tensor out = fa::gpu_test::poisoned({s.B, s.Hq, s.Lq, s.Dv}, DType::bf16);
    fa::Tensor lse = fa::gpu_test::poisoned({s.B, s.Hq, s.Lq}, DType::f32);
    fa::flex_attention_into(in.q.view(), in.kv, out.view(), lse.view(), score, mask, opts);
    fa::testing::check_paged(in, out.to_host(), lse.to_host(), DType::bf16,
                             fa::testing::resolved_scale(opts, s.D), AlibiTwin{slopes},
                             fa::CausalMask{});
  };
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  run();
  const auto t1 = clock::now();
  fa::clear_runtime_memory_cache();
  run();
  const auto t2 = clock::now();
  const fa::RuntimeCacheStats st = fa::runtime_cache_stats();
  // In-memory: the host's cost per call (enqueue only: 200 calls queued without waiting), beside
  // the same call with compiled-in functors (the prebuilt ALiBi + causal pair).
  fa::Tensor out = fa::Tensor::empty({s.B, s.Hq, s.Lq, s.Dv}, DType::bf16, fa::Device::cuda);
  fa::Tensor lse = fa::Tensor::empty({s.B, s.Hq, s.Lq}, DType::f32, fa::Device::cuda);
  constexpr int kCalls = 200;
  auto enqueue_us = [&](const auto& sc, const auto& mk) {
    fa::flex_attention_into(in.q.view(), in.kv, out.view(), lse.view(), sc, mk, opts);
    fa::synchronize();
    const auto a = clock::now();
    for (int i = 0; i < kCalls; ++i) {
      fa::flex_attention_into(in.q.view(), in.kv, out.view(), lse.view(), sc, mk, opts);
    }
    const auto b = clock::now();
    fa::synchronize();
    return std::chrono::duration<double, std::micro>(b - a).count() / kCalls;
  };
  const double rt_us = enqueue_us(score, mask);
  const double compiled_us = enqueue_us(fa::alibi(8), fa::causal());
  std::printf("[ runtime ] paged decode D=128 bf16: first call %.2f s (compiled or disk), after "
              "forgetting memory %.1f ms (disk loads %lld, compiles %lld); host enqueue per call "
              "%.1f us runtime vs %.1f us compiled in\n",
              std::chrono::duration<double>(t1 - t0).count(),
              std::chrono::duration<double, std::milli>(t2 - t1).count(),
              static_cast<long long>(st.loaded_from_disk), static_cast<long long>(st.compiled),
              rt_us, compiled_us);
  if (!fa::runtime_cache_dir().empty()) EXPECT_EQ(st.compiled, 0);
}

TEST(GpuRuntimeMisc, CaptureOnTheWrongDeviceIsNamed) {
  if (!fa::cuda_available()) GTEST_SKIP() << "no CUDA device visible: GPU tests skipped";
  const std::vector<float> slopes = slopes_for(2);
  const fa::RuntimeScoreMod score(kAlibi,
                                  {{"slopes", fa::Tensor::from_host(slopes.data(), {2}, DType::f32)}});
  const fa::Tensor q = fa::Tensor::empty({1, 2, 8, 64}, DType::bf16, fa::Device::cuda);
  try {
    (void)fa::flex_attention(q, q, q, score);
    ADD_FAILURE() << "no Error";
  } catch (const fa::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("slopes"), std::string::npos) << msg;
    EXPECT_EQ(msg.rfind("flexattn::flex_attention: ", 0), 0u) << msg;
  }
}

}  // namespace
