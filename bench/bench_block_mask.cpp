// create_block_mask build times: median of repeats, B = H = 1, 128 x 128 tiles, at L = 16384 and
// 4096, for the stock masks, causal & document, and an opaque custom mask (no tile rule, so every
// tile is evaluated element by element). On the CPU always; on Device::cuda too when a GPU is
// visible, end to end as a caller sees it (allocation, kernels, and a 4-byte read-back to wait for
// them). Kernel-only GPU times with cudaEvents: bench_block_mask_gpu (a .cu).
//
//   bench_block_mask [repeats]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "documents.h"
#include "flexattn/flexattn.h"

namespace {

// Causal written by hand: no tile_kind, so the builder cannot decide any tile from a rule.
struct OpaqueCausal {
  bool operator()(int, int, int q, int kv) const { return kv <= q; }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median wall time in ms of create_block_mask (plus, on the GPU, a read-back that waits for it).
template <class M>
void time_build(const char* name, const M& mask, int64_t L, flexattn::Device dev, int repeats) {
  flexattn::BlockMaskOptions opts;
  opts.device = dev;
  double sparsity = 0.0;
  std::vector<double> ms;
  for (int r = 0; r <= repeats; ++r) {  // the first run warms caches, the pool and the GPU
    const auto t0 = std::chrono::steady_clock::now();
    const auto bm = flexattn::create_block_mask(mask, 1, 1, L, L, opts);
    if (dev == flexattn::Device::cuda) {
      int32_t n = 0;
      bm.data().full_q_num.copy_to_host(&n, sizeof n);
    }
    const auto t1 = std::chrono::steady_clock::now();
    if (r > 0) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    sparsity = bm.sparsity();
  }
  std::printf("%-6s %-28s L=%-6lld %10.3f ms   sparsity %6.2f%%\n", flexattn::to_string(dev), name,
              static_cast<long long>(L), median(ms), sparsity);
}

void run_device(flexattn::Device dev, int repeats) {
  std::mt19937 rng(12345);
  for (int64_t L : {16384, 4096}) {
    // Document ids live on the device the mask is built on (the mask_mod dereferences them there).
    const std::vector<int32_t> aligned = flexattn::bench::document_ids(L, true, rng),
                               ragged = flexattn::bench::document_ids(L, false, rng);
    const flexattn::Buffer aligned_buf =
        flexattn::Buffer::from_host(aligned.data(), aligned.size() * 4, dev);
    const flexattn::Buffer ragged_buf =
        flexattn::Buffer::from_host(ragged.data(), ragged.size() * 4, dev);
    const auto doc = flexattn::document(static_cast<const int32_t*>(aligned_buf.data()));
    const auto doc_ragged = flexattn::document(static_cast<const int32_t*>(ragged_buf.data()));

    time_build("causal", flexattn::causal(), L, dev, repeats);
    time_build("sliding_window(1024)", flexattn::sliding_window(1024), L, dev, repeats);
    time_build("prefix_lm(L/4)", flexattn::prefix_lm(static_cast<int>(L / 4)), L, dev, repeats);
    time_build("document(16)", doc, L, dev, repeats);
    time_build("document(16, unaligned)", doc_ragged, L, dev, repeats);
    time_build("causal&document(16)", flexattn::and_masks(flexattn::causal(), doc), L, dev,
               repeats);
    time_build("causal&document(16, unal.)", flexattn::and_masks(flexattn::causal(), doc_ragged), L,
               dev, repeats);
    // An opaque functor on the GPU needs nvcc to instantiate the kernel: bench_block_mask_gpu.
    if (dev == flexattn::Device::cpu)
      time_build("opaque causal (no rule)", OpaqueCausal{}, L, dev, repeats);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::max(1, std::atoi(argv[1])) : 21;
  std::printf("create_block_mask, B=H=1, 128x128 tiles, median of %d, %d CPU threads\n", repeats,
              flexattn::detail::cpu::num_threads());
  run_device(flexattn::Device::cpu, repeats);
  if (flexattn::cuda_available()) run_device(flexattn::Device::cuda, repeats);
  return 0;
}
