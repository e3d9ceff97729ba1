// Which main kernel runs (detail/cuda/launch_record.h), and the backward's dQ order depending on
// nothing but the lists it walks. Host-compiled: the library's prebuilt stock variants run.
#include <cuda_runtime.h>
#include <flexattn/detail/cuda/launch_record.h>
#include <flexattn/flexattn.h>
#include <gtest/gtest.h>

#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_check.h"

namespace fa = flexattn;
using fa::DType;
using fa::Device;
using fa::gpu_test::GpuTest;

namespace {

// The Hopper kernels take head dims 64 and 128 on a compute-capability 9.0 GPU (the library is
// built with sm_90a code: run_all.sh builds for 90a), unless FLEXATTN_CUDA_SM80=1 forces the sm80
// kernels; every other case runs the sm80 kernels.
TEST_F(GpuTest, TheExpectedKernelRuns) {
  std::cout << "  head dim 64 runs " << fa::gpu_test::expected_kernel("fwd", 64) << "\n";
  for (const int64_t D : {32, 64, 96, 128, 192, 256}) {
    SCOPED_TRACE("D=" + std::to_string(D));
    std::mt19937_64 rng(fa::gpu_test::fresh_seed());
    const auto q = fa::gpu_test::random_input({1, 2, 200, D}, DType::bf16, rng);
    const auto dout = fa::gpu_test::random_input({1, 2, 200, D}, DType::bf16, rng);
    fa::BlockMaskOptions bo;
    bo.device = Device::cuda;
    const auto bm = fa::create_block_mask(fa::causal(), 1, 1, 200, 200, bo);
    const std::string fwd = fa::gpu_test::expected_kernel("fwd", D);
    const std::string bwd = fa::gpu_test::expected_kernel("bwd", D);
    fa::AttentionOutput o;
    try {
      o = fa::flex_attention(q.t, q.t, q.t, bm);
    } catch (const fa::Error& e) {
      // A head dim the library was not built for (FLEXATTN_CUDA_HEAD_DIMS) is not a failure here.
      if (std::string(e.what()).find("FLEXATTN_CUDA_HEAD_DIMS") == std::string::npos) throw;
      std::cout << "  D=" << D << " not prebuilt: skipped\n";
      continue;
    }
    EXPECT_EQ(fa::detail::cuda::last_launch(), fwd);
    fa::flex_attention_backward(q.t, q.t, q.t, o.out, o.lse, dout.t, bm);
    EXPECT_EQ(fa::detail::cuda::last_launch(), bwd);
    fa::AttentionOptions nd;
    nd.deterministic = false;
    fa::flex_attention_backward(q.t, q.t, q.t, o.out, o.lse, dout.t, bm, nd);
    EXPECT_EQ(fa::detail::cuda::last_launch(), bwd);
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// The deterministic backward walks the TRANSPOSED lists (q-blocks per kv-block) and counts the
// dQ order's ranks from those same lists (bwd_preprocess.cuh), so it reads nothing of the forward
// lists. Overwriting them - here with a dense mask's: ranks counted from those would wait for kv
// tiles that never come - must change no bit of the gradients.
TEST_F(GpuTest, DeterministicBackwardReadsOnlyTheTransposedLists) {
  for (const int64_t D : {64, 128}) {
    SCOPED_TRACE("D=" + std::to_string(D));
    std::mt19937_64 rng(fa::gpu_test::fresh_seed());
    const int64_t B = 2, Hq = 4, Hkv = 2, L = 1000;
    const auto q = fa::gpu_test::random_input({B, Hq, L, D}, DType::bf16, rng);
    const auto k = fa::gpu_test::random_input({B, Hkv, L, D}, DType::bf16, rng);
    const auto v = fa::gpu_test::random_input({B, Hkv, L, D}, DType::bf16, rng);
    const auto dout = fa::gpu_test::random_input({B, Hq, L, D}, DType::bf16, rng);
    fa::BlockMaskOptions bo;
    bo.device = Device::cuda;
    const auto causal = fa::create_block_mask(fa::causal(), 1, 1, L, L, bo);
    const auto dense = fa::create_block_mask(fa::noop_mask(), 1, 1, L, L, bo);
    const auto tampered = fa::create_block_mask(fa::causal(), 1, 1, L, L, bo);
    fa::AttentionOptions opts;
    opts.enable_gqa = true;
    const auto o = fa::flex_attention(q.t, k.t, v.t, causal, opts);
    {
      // A copy shares the lists' storage: write the dense forward lists into `tampered`'s - the
      // counts, and of each row's indices the ones its count lists (the rest were never written:
      // copying them would read uninitialised memory, which compute-sanitizer's initcheck flags).
      fa::BlockMaskData t = tampered.data();
      const fa::BlockMaskData& d = dense.data();
      for (auto [dn, sn, di, si] : {std::tuple{&t.kv_num, &d.kv_num, &t.kv_idx, &d.kv_idx},
                                    {&t.full_kv_num, &d.full_kv_num, &t.full_kv_idx,
                                     &d.full_kv_idx}}) {
        ASSERT_EQ(dn->bytes(), sn->bytes());
        ASSERT_EQ(di->bytes(), si->bytes());
        ASSERT_EQ(cudaMemcpy(dn->data(), sn->data(), sn->bytes(), cudaMemcpyDeviceToDevice),
                  cudaSuccess);
        const size_t rows = sn->bytes() / sizeof(int32_t);
        const size_t width = si->bytes() / sizeof(int32_t) / rows;
        std::vector<int32_t> counts(rows);
        ASSERT_EQ(cudaMemcpy(counts.data(), sn->data(), sn->bytes(), cudaMemcpyDeviceToHost),
                  cudaSuccess);
        for (size_t r = 0; r < rows; ++r) {
          if (counts[r] == 0) continue;
          ASSERT_EQ(cudaMemcpy(static_cast<int32_t*>(di->data()) + r * width,
                               static_cast<const int32_t*>(si->data()) + r * width,
                               size_t(counts[r]) * sizeof(int32_t), cudaMemcpyDeviceToDevice),
                    cudaSuccess);
        }
      }
    }
    const auto g = fa::flex_attention_backward(q.t, k.t, v.t, o.out, o.lse, dout.t, causal, opts);
    const auto gt =
        fa::flex_attention_backward(q.t, k.t, v.t, o.out, o.lse, dout.t, tampered, opts);
    for (const auto& [a, b] : {std::pair{&g.dq, &gt.dq}, {&g.dk, &gt.dk}, {&g.dv, &gt.dv}}) {
      const auto ha = a->to_host(), hb = b->to_host();
      ASSERT_EQ(ha.size(), hb.size());
      EXPECT_EQ(0, std::memcmp(ha.data(), hb.data(), ha.size() * sizeof(float)))
          << "a gradient changed when only the forward lists did";
    }
  }
}

}  // namespace
