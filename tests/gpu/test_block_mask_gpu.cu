// create_block_mask on Device::cuda against the CPU builder (itself checked against brute force in
// tests/test_block_mask.cpp): every count and every valid list entry must be identical, for the
// stock masks and their combinations, mask_mods without a tile rule (a struct and an extended
// lambda, so every tile goes through the warp's element scan), per-head masks, ragged lengths,
// Lq != Lkv, several block sizes, B/H broadcast, and the benchmark's L = 16384 shapes.
// Compiled by nvcc, so these calls instantiate the GPU builder for each functor right here.
// block_mask.h, not flexattn.h: the latter would also compile attention kernels this file never
// uses (nvcc instantiates them for the inline overloads of attention.h).
#include <flexattn/block_mask.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace {

using flexattn::BlockMaskData;
using flexattn::Device;
using flexattn::TileKind;

// Skips cleanly where the build or the machine has no CUDA device.
class BlockMaskGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!flexattn::cuda_available()) GTEST_SKIP() << "no CUDA device visible: GPU tests skipped";
  }
};

// A fresh seed per test (printed on failure); FLEXATTN_TEST_SEED pins it to reproduce one.
uint64_t fresh_seed() {
  if (const char* env = std::getenv("FLEXATTN_TEST_SEED")) return std::strtoull(env, nullptr, 10);
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}

std::vector<int32_t> ints(const flexattn::Buffer& b) {
  std::vector<int32_t> v(b.bytes() / 4);
  b.copy_to_host(v.data(), b.bytes());
  return v;
}

// Counts and the valid prefix of every list of `gpu` equal those of `cpu`.
void expect_same_lists(const BlockMaskData& cpu, const BlockMaskData& gpu_data) {
  const BlockMaskData gpu = gpu_data.to_cpu();
  ASSERT_EQ(gpu.nqb, cpu.nqb);
  ASSERT_EQ(gpu.nkvb, cpu.nkvb);
  struct List {
    const flexattn::Buffer *cn, *ci, *gn, *gi;
    int64_t width;
    const char* name;
  };
  const List lists[] = {
      {&cpu.kv_num, &cpu.kv_idx, &gpu.kv_num, &gpu.kv_idx, cpu.nkvb, "partial kv"},
      {&cpu.full_kv_num, &cpu.full_kv_idx, &gpu.full_kv_num, &gpu.full_kv_idx, cpu.nkvb, "full kv"},
      {&cpu.q_num, &cpu.q_idx, &gpu.q_num, &gpu.q_idx, cpu.nqb, "partial q"},
      {&cpu.full_q_num, &cpu.full_q_idx, &gpu.full_q_num, &gpu.full_q_idx, cpu.nqb, "full q"}};
  for (const List& l : lists) {
    const auto cn = ints(*l.cn), ci = ints(*l.ci), gn = ints(*l.gn), gi = ints(*l.gi);
    ASSERT_EQ(cn.size(), gn.size()) << l.name;
    for (size_t line = 0; line < cn.size(); ++line) {
      ASSERT_EQ(gn[line], cn[line]) << l.name << " count, line " << line;
      for (int32_t j = 0; j < cn[line]; ++j) {
        const size_t at = line * size_t(l.width) + size_t(j);
        ASSERT_EQ(gi[at], ci[at]) << l.name << " entry " << j << ", line " << line;
      }
    }
  }
  EXPECT_DOUBLE_EQ(gpu.sparsity(), cpu.sparsity());
}

// `cpu_mask` and `gpu_mask` are the same mask_mod except for where their data (doc ids) lives.
template <class M>
void check_gpu(const M& cpu_mask, const M& gpu_mask, int64_t B, int64_t H, int64_t Lq, int64_t Lkv,
               int bq, int bkv) {
  SCOPED_TRACE(::testing::Message() << "B=" << B << " H=" << H << " Lq=" << Lq << " Lkv=" << Lkv
                                    << " block " << bq << "x" << bkv);
  flexattn::BlockMaskOptions gpu_opts{bq, bkv, Device::cuda};
  const auto cpu = flexattn::create_block_mask(cpu_mask, B, H, Lq, Lkv, {bq, bkv});
  const auto gpu = flexattn::create_block_mask(gpu_mask, B, H, Lq, Lkv, gpu_opts);
  ASSERT_EQ(gpu.device(), Device::cuda);
  expect_same_lists(cpu.data(), gpu.data());
}
template <class M>
void check_gpu(const M& mask, int64_t B, int64_t H, int64_t Lq, int64_t Lkv, int bq, int bkv) {
  check_gpu(mask, mask, B, H, Lq, Lkv, bq, bkv);
}

// Document ids of random lengths on both devices (boundaries anywhere inside tiles).
struct Docs {
  std::vector<int32_t> host;
  flexattn::Buffer dev;
  Docs(int64_t n, std::mt19937_64& rng) : host(size_t(n)) {
    std::uniform_int_distribution<int64_t> len(1, std::max<int64_t>(1, n / 5));
    int32_t doc = 0;
    for (int64_t i = 0; i < n; ++doc)
      for (int64_t e = std::min(n, i + len(rng)); i < e; ++i) host[size_t(i)] = doc;
    dev = flexattn::Buffer::from_host(host.data(), host.size() * 4, Device::cuda);
  }
  flexattn::DocumentMask cpu() const { return flexattn::document(host.data()); }
  flexattn::DocumentMask gpu() const {
    return flexattn::document(static_cast<const int32_t*>(dev.data()));
  }
};

// No tile rule: every tile is evaluated element by element.
struct OpaqueCausal {
  FLEXATTN_HD bool operator()(int, int, int q, int kv) const { return kv <= q; }
};
// Pseudo-random, structured at 8 elements (so tiles of 16+ are empty, full and partial) and
// different per (b, h).
struct CoarseRandom {
  uint32_t salt;
  FLEXATTN_HD bool operator()(int b, int h, int q, int kv) const {
    uint32_t x = uint32_t((q / 8) * 7919 + (kv / 8) * 104729 + b * 31 + h * 17) ^ salt;
    x *= 0x9E3779B1u;
    x ^= x >> 15;
    x *= 0x85EBCA77u;
    return (x ^ (x >> 13)) % 3 == 0;
  }
};
// A per-(b, h) sliding window with an exact tile rule.
struct PerHeadWindow {
  FLEXATTN_HD int width(int b, int h) const { return 3 + 40 * h + 7 * b; }
  FLEXATTN_HD bool operator()(int b, int h, int q, int kv) const {
    return q - kv >= 0 && q - kv <= width(b, h);
  }
  FLEXATTN_HD TileKind tile_kind(int b, int h, int q0, int q1, int k0, int k1) const {
    return flexattn::detail::diagonal_band_tile(q0, q1, k0, k1, 0, width(b, h));
  }
};

// An extended __host__ __device__ lambda as the mask_mod. (nvcc wants its enclosing function
// public and free, so not a TEST body.)
void check_extended_lambda(int64_t Lq, int64_t Lkv, int bq, int bkv) {
  const auto lambda = [] __host__ __device__(int, int h, int q, int kv) {
    return (q + 3 * kv + h) % 7 != 0;  // nearly every tile partial: the early exit
  };
  check_gpu(lambda, 1, 2, Lq, Lkv, bq, bkv);
}

const std::pair<int64_t, int64_t> kLengths[] = {{1, 1},       {17, 17},   {127, 129}, {129, 127},
                                                {1000, 1000}, {1000, 17}, {17, 1000}};
const std::pair<int, int> kBlocks[] = {{16, 16},   {32, 32}, {64, 64},
                                       {128, 128}, {16, 64}, {128, 32}};

TEST_F(BlockMaskGpu, StockMasksMatchCpu) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (auto [Lq, Lkv] : kLengths) {
    const Docs docs(std::max(Lq, Lkv), rng);
    for (auto [bq, bkv] : kBlocks) {
      check_gpu(flexattn::noop_mask(), 1, 1, Lq, Lkv, bq, bkv);
      check_gpu(flexattn::causal(), 1, 1, Lq, Lkv, bq, bkv);
      check_gpu(flexattn::sliding_window(5), 1, 1, Lq, Lkv, bq, bkv);
      check_gpu(flexattn::prefix_lm(300), 1, 1, Lq, Lkv, bq, bkv);
      check_gpu(docs.cpu(), docs.gpu(), 1, 1, Lq, Lkv, bq, bkv);
      check_gpu(flexattn::and_masks(flexattn::causal(), docs.cpu()),
                flexattn::and_masks(flexattn::causal(), docs.gpu()), 1, 1, Lq, Lkv, bq, bkv);
      check_gpu(flexattn::or_masks(flexattn::not_mask(docs.cpu()), flexattn::sliding_window(7)),
                flexattn::or_masks(flexattn::not_mask(docs.gpu()), flexattn::sliding_window(7)), 1,
                1, Lq, Lkv, bq, bkv);
    }
  }
}

TEST_F(BlockMaskGpu, MasksWithoutTileRuleMatchCpu) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  const CoarseRandom coarse{uint32_t(seed)};
  for (auto [Lq, Lkv] : kLengths)
    for (auto [bq, bkv] : kBlocks) {
      check_gpu(OpaqueCausal{}, 1, 1, Lq, Lkv, bq, bkv);
      check_gpu(coarse, 2, 3, Lq, Lkv, bq, bkv);
      check_extended_lambda(Lq, Lkv, bq, bkv);
      check_gpu(flexattn::and_masks(PerHeadWindow{}, flexattn::not_mask(coarse)), 2, 3, Lq, Lkv, bq,
                bkv);
    }
}

TEST_F(BlockMaskGpu, BroadcastAndPerHead) {
  check_gpu(PerHeadWindow{}, 1, 5, 300, 300, 64, 64);
  check_gpu(PerHeadWindow{}, 4, 1, 300, 300, 64, 64);
  check_gpu(PerHeadWindow{}, 2, 4, 1000, 129, 16, 64);
  check_gpu(flexattn::causal(), 3, 2, 300, 257, 64, 32);
}

// The benchmark's shapes, B = H = 1 and a batched one.
TEST_F(BlockMaskGpu, LargeShapesMatchCpu) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const Docs docs(16384, rng);
  check_gpu(flexattn::causal(), 1, 1, 16384, 16384, 128, 128);
  check_gpu(flexattn::sliding_window(1024), 1, 1, 16384, 16384, 128, 128);
  check_gpu(flexattn::and_masks(flexattn::causal(), docs.cpu()),
            flexattn::and_masks(flexattn::causal(), docs.gpu()), 1, 1, 16384, 16384, 128, 128);
  check_gpu(OpaqueCausal{}, 1, 1, 16384, 16384, 128, 128);
  check_gpu(PerHeadWindow{}, 2, 8, 4096, 4096, 128, 64);
}

// The library's prebuilt instantiation (what a .cpp caller gets) agrees with this TU's own.
TEST_F(BlockMaskGpu, PrebuiltPathMatches) {
  for (auto [Lq, Lkv] : kLengths) {
    flexattn::BlockMaskData d =
        flexattn::BlockMaskData::allocate(1, 1, Lq, Lkv, 64, 32, Device::cuda);
    flexattn::detail::cuda::build_block_mask_prebuilt(flexattn::causal(), d, nullptr);
    const auto cpu = flexattn::create_block_mask(flexattn::causal(), 1, 1, Lq, Lkv, {64, 32});
    expect_same_lists(cpu.data(), d);
  }
}

}  // namespace
