// create_block_mask on the GPU: B = H = 1, 128 x 128 tiles, L = 16384 and 4096.
//   kernels     build_block_mask_device on preallocated lists, many back to back between two
//               cudaEvents, per build (the three kernels);
//   end to end  median wall time of create_block_mask + cudaStreamSynchronize, as a caller sees
//               it: the eight list allocations included.
// Each mask's lists are checked once against the CPU builder before timing.
//
//   bench_block_mask_gpu [repeats]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

// block_mask.h, not flexattn.h: the latter would also compile attention kernels this file never
// uses (nvcc instantiates them for the inline overloads of attention.h).
#include "flexattn/block_mask.h"

namespace {

// Causal written by hand: no tile rule, so every tile goes through the warp's element scan.
struct OpaqueCausal {
  FLEXATTN_HD bool operator()(int, int, int q, int kv) const { return kv <= q; }
};

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::vector<int32_t> host_ints(const flexattn::Buffer& b) {
  std::vector<int32_t> v(b.bytes() / 4);
  b.copy_to_host(v.data(), b.bytes());
  return v;
}

// Same counts and same valid entries as the CPU builder's lists.
bool same_lists(const flexattn::BlockMaskData& cpu, const flexattn::BlockMaskData& gpu_data) {
  const flexattn::BlockMaskData gpu = gpu_data.to_cpu();
  const flexattn::Buffer* pairs[][4] = {
      {&cpu.kv_num, &cpu.kv_idx, &gpu.kv_num, &gpu.kv_idx},
      {&cpu.full_kv_num, &cpu.full_kv_idx, &gpu.full_kv_num, &gpu.full_kv_idx},
      {&cpu.q_num, &cpu.q_idx, &gpu.q_num, &gpu.q_idx},
      {&cpu.full_q_num, &cpu.full_q_idx, &gpu.full_q_num, &gpu.full_q_idx}};
  for (int l = 0; l < 4; ++l) {
    const auto cn = host_ints(*pairs[l][0]), ci = host_ints(*pairs[l][1]);
    const auto gn = host_ints(*pairs[l][2]), gi = host_ints(*pairs[l][3]);
    const size_t width = ci.size() / cn.size();
    for (size_t line = 0; line < cn.size(); ++line) {
      if (gn[line] != cn[line]) return false;
      for (int32_t j = 0; j < cn[line]; ++j)
        if (gi[line * width + j] != ci[line * width + j]) return false;
    }
  }
  return true;
}

template <class M>
void time_mask(const char* name, const M& cpu_mask, const M& gpu_mask, int64_t L, int repeats,
               cudaStream_t stream) {
  flexattn::BlockMaskOptions opts;
  opts.device = flexattn::Device::cuda;
  opts.stream = stream;
  const auto cpu = flexattn::create_block_mask(cpu_mask, 1, 1, L, L);
  const auto first = flexattn::create_block_mask(gpu_mask, 1, 1, L, L, opts);
  const bool ok = same_lists(cpu.data(), first.data());

  flexattn::BlockMaskData d =
      flexattn::BlockMaskData::allocate(1, 1, L, L, 128, 128, flexattn::Device::cuda);
  // Kernels: `repeats` builds back to back between two events, averaged (the GPU stays busy as
  // long as the host enqueues faster than the kernels run; else this is the enqueue rate).
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  flexattn::detail::cuda::build_block_mask_device<flexattn::detail::cuda::ThisUnit>(gpu_mask, d, stream);  // warm-up
  check(cudaEventRecord(start, stream), "cudaEventRecord");
  for (int r = 0; r < repeats; ++r)
    flexattn::detail::cuda::build_block_mask_device<flexattn::detail::cuda::ThisUnit>(gpu_mask, d, stream);
  check(cudaEventRecord(stop, stream), "cudaEventRecord");
  check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0.0f;
  check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  check(cudaEventDestroy(start), "cudaEventDestroy");
  check(cudaEventDestroy(stop), "cudaEventDestroy");
  const double kernel_us = 1000.0 * ms / repeats;

  // End to end: median of create_block_mask + cudaStreamSynchronize, allocations included.
  std::vector<double> e2e_us;
  for (int r = 0; r <= repeats; ++r) {  // the first round warms caches and clocks
    const auto t0 = std::chrono::steady_clock::now();
    const auto bm = flexattn::create_block_mask(gpu_mask, 1, 1, L, L, opts);
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    const auto t1 = std::chrono::steady_clock::now();
    if (r > 0) e2e_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }  // each round's lists are freed after its timed span
  std::printf(
      "cuda   %-28s L=%-6lld kernels %8.1f us   end to end %8.1f us   sparsity %6.2f%%   "
      "lists %s\n",
      name, static_cast<long long>(L), kernel_us, median(e2e_us), first.sparsity(),
      ok ? "match CPU" : "DIFFER FROM CPU");
}

// 16 documents of equal length, or with boundaries at random positions.
std::vector<int32_t> doc_ids(int64_t L, bool aligned, std::mt19937& rng) {
  std::vector<int64_t> cuts;
  std::uniform_int_distribution<int64_t> pos(1, L - 1);
  for (int i = 1; i < 16; ++i) cuts.push_back(aligned ? L * i / 16 : pos(rng));
  std::sort(cuts.begin(), cuts.end());
  std::vector<int32_t> ids(static_cast<size_t>(L));
  int32_t doc = 0;
  size_t c = 0;
  for (int64_t i = 0; i < L; ++i) {
    while (c < cuts.size() && cuts[c] == i) ++doc, ++c;
    ids[static_cast<size_t>(i)] = doc;
  }
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  if (!flexattn::cuda_available()) {
    std::printf("bench_block_mask_gpu: no CUDA device visible, nothing to time\n");
    return 0;
  }
  const int repeats = argc > 1 ? std::max(1, std::atoi(argv[1])) : 51;
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf("create_block_mask on %s, B=H=1, 128x128 tiles, median of %d\n", prop.name, repeats);
  cudaStream_t stream;
  check(cudaStreamCreate(&stream), "cudaStreamCreate");
  std::mt19937 rng(12345);
  for (int64_t L : {16384, 4096}) {
    const auto aligned = doc_ids(L, true, rng), ragged = doc_ids(L, false, rng);
    const auto dev_aligned =
        flexattn::Buffer::from_host(aligned.data(), aligned.size() * 4, flexattn::Device::cuda);
    const auto dev_ragged =
        flexattn::Buffer::from_host(ragged.data(), ragged.size() * 4, flexattn::Device::cuda);
    const auto doc_h = flexattn::document(aligned.data());
    const auto doc_d = flexattn::document(static_cast<const int32_t*>(dev_aligned.data()));
    const auto rag_h = flexattn::document(ragged.data());
    const auto rag_d = flexattn::document(static_cast<const int32_t*>(dev_ragged.data()));
    const auto causal = flexattn::causal();
    time_mask("causal", causal, causal, L, repeats, stream);
    const auto sw = flexattn::sliding_window(1024);
    time_mask("sliding_window(1024)", sw, sw, L, repeats, stream);
    const auto prefix = flexattn::prefix_lm(static_cast<int>(L / 4));
    time_mask("prefix_lm(L/4)", prefix, prefix, L, repeats, stream);
    time_mask("document(16)", doc_h, doc_d, L, repeats, stream);
    time_mask("document(16, unaligned)", rag_h, rag_d, L, repeats, stream);
    time_mask("causal&document(16)", flexattn::and_masks(causal, doc_h),
              flexattn::and_masks(causal, doc_d), L, repeats, stream);
    time_mask("causal&document(16, unal.)", flexattn::and_masks(causal, rag_h),
              flexattn::and_masks(causal, rag_d), L, repeats, stream);
    time_mask("opaque causal (no rule)", OpaqueCausal{}, OpaqueCausal{}, L, repeats, stream);
  }
  check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  return 0;
}
