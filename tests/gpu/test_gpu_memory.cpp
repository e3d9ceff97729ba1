// The front door on the GPU allocates stream-ordered and never synchronises (items 12 and 16 of
// the reliability issue): every allocation goes through the allocator of set_cuda_allocator (or
// the library's pool) on the caller's stream, the dense mask of the overloads without a block
// mask is built once and waited for through an event on other streams, and host copies of an
// output wait for the stream it was made on. A spin kernel ahead of each call makes a missing
// order visible: a call that synchronised would return only after the spin, and one that read
// data before its stream produced it would give different bits than the same call run alone.
#include <cuda_runtime.h>
#include <flexattn/flexattn.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gpu_check.h"
#include "gpu_spin.h"

namespace flexattn::gpu_test {
namespace {

class GpuMemory : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess);
    ASSERT_EQ(cudaStreamCreateWithFlags(&other_, cudaStreamNonBlocking), cudaSuccess);
    std::mt19937_64 rng(fresh_seed());
    q_ = random_input({1, 4, 777, 64}, DType::bf16, rng);
    k_ = random_input({1, 4, 777, 64}, DType::bf16, rng);
    v_ = random_input({1, 4, 777, 64}, DType::bf16, rng);
    dout_ = random_input({1, 4, 777, 64}, DType::bf16, rng);
  }
  void TearDown() override {
    if (stream_ != nullptr) {
      cudaStreamSynchronize(stream_);
      cudaStreamSynchronize(other_);
      cudaStreamDestroy(stream_);
      cudaStreamDestroy(other_);
    }
  }
  // Tensors made in a test are destroyed before TearDown destroys the streams.
  cudaStream_t stream_ = nullptr, other_ = nullptr;
  Input q_, k_, v_, dout_;
};

// Bit patterns of a tensor, read after its stream's work (copy_to_host waits for it).
std::vector<float> bits(const Tensor& t) { return t.to_host(); }

void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  size_t diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  EXPECT_EQ(diff, 0u) << what << ": " << diff << " of " << a.size() << " elements differ";
}

TEST_F(GpuMemory, FrontDoorNeverSynchronises) {
  const auto mask_opts = BlockMaskOptions{.device = Device::cuda, .stream = stream_};
  const auto mask = create_block_mask(causal(), 1, 1, 777, 777, mask_opts);
  const AttentionOptions opts{.stream = stream_};
  // Warm-up: first-use work (module loading, kernel attributes, the dense mask of this shape).
  {
    auto o = flex_attention(q_.t, k_.t, v_.t, mask, opts);
    auto d = flex_attention(q_.t, k_.t, v_.t, opts);
    auto g = flex_attention_backward(q_.t, k_.t, v_.t, o.out, o.lse, dout_.t, mask, opts);
    ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  }
  // Every front door: with the block mask and without, forward and backward.
  struct Results {
    AttentionOutput o, dense;
    AttentionGrads g, g_dense;
  };
  auto run = [&] {
    Results r{flex_attention(q_.t, k_.t, v_.t, mask, opts), flex_attention(q_.t, k_.t, v_.t, opts),
              {}, {}};
    r.g = flex_attention_backward(q_.t, k_.t, v_.t, r.o.out, r.o.lse, dout_.t, mask, opts);
    r.g_dense =
        flex_attention_backward(q_.t, k_.t, v_.t, r.dense.out, r.dense.lse, dout_.t, opts);
    return r;
  };
  const Results ref = run();
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);

  spin_on_stream(stream_, 1500.0);
  const Results got = run();
  // Every call returned while the spin still ran: none of them waited for the stream.
  EXPECT_EQ(cudaStreamQuery(stream_), cudaErrorNotReady)
      << "a front-door call synchronised with its stream";
  // Host copies wait for the outputs' stream by themselves.
  expect_same_bits(bits(got.o.out), bits(ref.o.out), "out");
  expect_same_bits(bits(got.o.lse), bits(ref.o.lse), "lse");
  expect_same_bits(bits(got.dense.out), bits(ref.dense.out), "out (dense mask)");
  expect_same_bits(bits(got.g.dq), bits(ref.g.dq), "dq");
  expect_same_bits(bits(got.g.dk), bits(ref.g.dk), "dk");
  expect_same_bits(bits(got.g.dv), bits(ref.g.dv), "dv");
  expect_same_bits(bits(got.g_dense.dq), bits(ref.g_dense.dq), "dq (dense mask)");
  expect_same_bits(bits(got.g_dense.dv), bits(ref.g_dense.dv), "dv (dense mask)");
}

TEST_F(GpuMemory, DenseMaskBuiltOnOneStreamIsWaitedForOnAnother) {
  // A shape no other test uses, so its dense mask is built here, behind a spin on stream_.
  std::mt19937_64 rng(fresh_seed());
  const Input q = random_input({1, 2, 1111, 64}, DType::bf16, rng);
  const Input k = random_input({1, 2, 1531, 64}, DType::bf16, rng);
  const Input v = random_input({1, 2, 1531, 64}, DType::bf16, rng);
  spin_on_stream(stream_, 500.0);
  const AttentionOutput first = flex_attention(q.t, k.t, v.t, AttentionOptions{.stream = stream_});
  // other_ does not wait for stream_ unless the library orders it after the mask's build.
  const AttentionOutput second = flex_attention(q.t, k.t, v.t, AttentionOptions{.stream = other_});
  expect_same_bits(bits(second.out), bits(first.out), "out on the second stream");
  expect_same_bits(bits(second.lse), bits(first.lse), "lse on the second stream");
}

// Counts what the library allocates and hands back, on which stream.
struct Counting {
  std::atomic<int> live{0}, allocations{0}, wrong_stream{0};
  void* expected_stream = nullptr;
};

void* counting_alloc(size_t bytes, int, void* stream, void* ctx) {
  auto* c = static_cast<Counting*>(ctx);
  void* p = nullptr;
  if (cudaMallocAsync(&p, bytes, static_cast<cudaStream_t>(stream)) != cudaSuccess) return nullptr;
  ++c->live;
  ++c->allocations;
  if (stream != c->expected_stream) ++c->wrong_stream;
  return p;
}
void counting_free(void* p, size_t, int, void* stream, void* ctx) {
  auto* c = static_cast<Counting*>(ctx);
  cudaFreeAsync(p, static_cast<cudaStream_t>(stream));
  --c->live;
}

TEST_F(GpuMemory, HostAllocatorServesEveryAllocation) {
  const auto mask =
      create_block_mask(causal(), 1, 1, 777, 777, {.device = Device::cuda, .stream = stream_});
  Counting counts;
  counts.expected_stream = stream_;
  set_cuda_allocator({counting_alloc, counting_free, &counts});
  {
    const AttentionOptions opts{.stream = stream_};
    const AttentionOutput o = flex_attention(q_.t, k_.t, v_.t, mask, opts);
    const AttentionGrads g =
        flex_attention_backward(q_.t, k_.t, v_.t, o.out, o.lse, dout_.t, mask, opts);
    // out, lse; dq, dk, dv and the backward's workspace (already handed back).
    EXPECT_EQ(counts.allocations.load(), 6);
    EXPECT_EQ(counts.live.load(), 5);
    EXPECT_FALSE(std::isnan(bits(g.dq)[0]));
  }
  set_cuda_allocator({});
  EXPECT_EQ(counts.live.load(), 0) << "an allocation was not handed back";
  EXPECT_EQ(counts.wrong_stream.load(), 0) << "an allocation was not on the call's stream";
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
}

// Outputs made on a stream may outlive it: their blocks go back to that stream's cache without a
// CUDA call (cudaFreeAsync on a destroyed stream crashed here), and release_cached_memory hands
// every cached block back.
TEST_F(GpuMemory, TensorsOutliveTheirStream) {
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  std::vector<float> expected;
  {
    AttentionOutput o = flex_attention(q_.t, k_.t, v_.t, AttentionOptions{.stream = s});
    AttentionGrads g =
        flex_attention_backward(q_.t, k_.t, v_.t, o.out, o.lse, dout_.t, AttentionOptions{.stream = s});
    expected = bits(g.dq);
    ASSERT_EQ(cudaStreamDestroy(s), cudaSuccess);
  }  // o and g die after their stream
  const AttentionOutput o = flex_attention(q_.t, k_.t, v_.t, AttentionOptions{.stream = stream_});
  const AttentionGrads g = flex_attention_backward(q_.t, k_.t, v_.t, o.out, o.lse, dout_.t,
                                                   AttentionOptions{.stream = stream_});
  expect_same_bits(bits(g.dq), expected, "dq after the first stream was destroyed");
  release_cached_memory();
  const AttentionOutput again = flex_attention(q_.t, k_.t, v_.t, AttentionOptions{.stream = stream_});
  expect_same_bits(bits(again.out), bits(o.out), "out after release_cached_memory");
}

// i32 index tensors on the GPU: int32 copies both ways, bit for bit (no conversion).
TEST_F(GpuMemory, Int32TensorsRoundTrip) {
  std::mt19937 rng(std::random_device{}());
  std::vector<int32_t> src(1000);
  for (int32_t& x : src) x = int32_t(rng());
  const Tensor t = Tensor::from_host(src.data(), {10, 100}, Device::cuda);
  EXPECT_EQ(t.dtype(), DType::i32);
  EXPECT_EQ(t.device(), Device::cuda);
  std::vector<int32_t> back(src.size(), 0);
  t.copy_to_host(back.data());
  EXPECT_EQ(back, src);
  EXPECT_THROW((void)t.to_host(), Error);
}

}  // namespace
}  // namespace flexattn::gpu_test
