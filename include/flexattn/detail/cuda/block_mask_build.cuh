// create_block_mask on the GPU: the same exact tile classification as the CPU builder
// (block_mask_cpu.h), then the index lists of BlockMaskData (layout in block_mask.h).
//
// Included by dispatch.h under nvcc; include <flexattn/block_mask.h> instead of this file.
//
// Three kernels on the caller's stream, no allocation and no synchronisation:
//   1. classify_tiles_kernel: one warp per tile. Every lane asks the mask_mod's tile rule (the same
//      answer on every lane: no divergence, broadcast loads); a tile the rule leaves `unknown` is
//      evaluated element by element by the 32 lanes together, stopping at the first vote that has
//      seen both a kept and a dropped element. One byte per tile, parked in the q_idx buffer
//      (4 bytes per tile, not written yet).
//   2. row_lists_kernel: one block per (b, h, q-block) row compacts the row's kinds into the
//      partial and full kv lists (warp ballots + a block-wide prefix: ascending by construction).
//   3. column_lists_kernel: one block per (b, h, kv-block) column reads each tile's kind back from
//      the row lists (binary search: they are sorted) and compacts it into the q lists, which
//      overwrite the parked kinds - hence a kernel of its own, after every row is done.
// A scratch grid from the stream-ordered allocator would cost a fresh mapping after every
// synchronisation (the default pool trims to zero), more than the kernels themselves.
#pragma once

#include "../../mods.h"
#include "../device_std.h"

#if !defined(__CUDACC_RTC__)  // the host side: the launches
#include <cuda_runtime.h>

#include <algorithm>

#include "check.cuh"
#include "kernel_ref.cuh"
#endif

namespace flexattn::detail::cuda {

namespace block_mask_impl {

constexpr unsigned kFullWarp = 0xffffffffu;
constexpr int kClassifyWarps = 8;  // warps (tiles in flight) per block of kernel 1
constexpr int kListThreads = 128;  // threads per line in kernels 2 and 3

// Exact kind of rows [q0, q1) x columns [k0, k1), evaluated by the whole warp; all 32 lanes must
// call it. Only in-range indices reach the mask_mod.
template <class MaskMod>
__device__ TileKind scan_tile_warp(const MaskMod& m, int b, int h, int q0, int q1, int k0, int k1) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int rows = q1 - q0, width = k1 - k0;
  // Probe: one element per lane, spread over the rows and (permuted) over the columns, so a tile
  // cut by a boundary in either direction is usually decided by the first vote instead of after
  // the rows before the boundary.
  const int pr = static_cast<int>(static_cast<int64_t>(lane) * rows / 32);
  const int pc = static_cast<int>(static_cast<int64_t>((lane * 13) & 31) * width / 32);
  const bool probe = m(b, h, q0 + pr, k0 + pc);
  bool kept = probe, dropped = !probe;
  if (__any_sync(kFullWarp, kept) && __any_sync(kFullWarp, dropped)) return TileKind::partial;
  // Every element: lane l starts at element l of the row-major tile and steps 32 elements at a
  // time; (r, c) advance without a division. A lane past the last row re-evaluates its row
  // rows - 1 instead of branching around the call: an in-range element cannot change the answer,
  // and branch-free steps let the loads of a mask_mod that reads memory (document ids) overlap.
  const int dr = 32 / width, dc = 32 % width;
  int r = lane / width, c = lane % width;
  for (;;) {
    // A few elements per lane between votes: the votes cost more than a simple mask_mod.
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const bool v = m(b, h, q0 + (r < rows ? r : rows - 1), k0 + c);
      kept = kept || v;
      dropped = dropped || !v;
      r += dr;
      c += dc;
      if (c >= width) {
        c -= width;
        ++r;
      }
    }
    const bool any_kept = __any_sync(kFullWarp, kept);
    const bool any_dropped = __any_sync(kFullWarp, dropped);
    if (any_kept && any_dropped) return TileKind::partial;
    if (!__any_sync(kFullWarp, r < rows)) return any_kept ? TileKind::full : TileKind::empty;
  }
}

// kinds[((b * H + h) * nqb + qb) * nkvb + kb] for every tile. Warp-uniform grid-stride loop.
// Every kernel here takes the translation unit's tag (sm90_unit.cuh): a user's .cu and the library
// instantiate them for the same stock masks, and merged host stubs could launch the other file's
// device code, built for another architecture list.
template <class Unit, class MaskMod>
__global__ void __launch_bounds__(kClassifyWarps * 32)
    classify_tiles_kernel(const MaskMod m, int H, int Lq, int Lkv, int bq, int bkv, int nqb,
                          int nkvb, int64_t tiles, unsigned char* __restrict__ kinds) {
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t t = first; t < tiles; t += step) {
    const int kb = static_cast<int>(t % nkvb);
    const int64_t row = t / nkvb;
    const int qb = static_cast<int>(row % nqb);
    const int64_t bh = row / nqb;
    const int b = static_cast<int>(bh / H), h = static_cast<int>(bh % H);
    // int64 before the min: q0 + bq may pass INT_MAX even though Lq does not.
    const int q0 = qb * bq, k0 = kb * bkv;
    const int64_t q_end = static_cast<int64_t>(q0) + bq, k_end = static_cast<int64_t>(k0) + bkv;
    const int q1 = q_end < Lq ? static_cast<int>(q_end) : Lq;
    const int k1 = k_end < Lkv ? static_cast<int>(k_end) : Lkv;
    TileKind kind = tile_kind_of(m, b, h, q0, q1, k0, k1);
    if (kind == TileKind::unknown) kind = scan_tile_warp(m, b, h, q0, q1, k0, k1);
    if ((threadIdx.x & 31) == 0) kinds[t] = static_cast<unsigned char>(kind);
  }
}

// Compacts one line of `len` tiles, kind_of(i) for i in [0, len), into ascending partial and full
// index lists and their counts. All kThreads threads of the block must call it.
template <int kThreads, class KindOf>
__device__ void compact_line(int len, const KindOf& kind_of, int32_t* pnum, int32_t* pidx,
                             int32_t* fnum, int32_t* fidx) {
  constexpr int kWarps = kThreads / 32;
  __shared__ int warp_partial[kWarps], warp_full[kWarps];
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x / 32);
  const unsigned lanes_below = (1u << lane) - 1u;
  int base_partial = 0, base_full = 0;  // entries written by earlier chunks of this line
  for (int start = 0; start < len; start += kThreads) {
    const int i = start + static_cast<int>(threadIdx.x);
    const TileKind kind = i < len ? kind_of(i) : TileKind::empty;
    const unsigned partial_bits = __ballot_sync(kFullWarp, kind == TileKind::partial);
    const unsigned full_bits = __ballot_sync(kFullWarp, kind == TileKind::full);
    if (lane == 0) {
      warp_partial[warp] = __popc(partial_bits);
      warp_full[warp] = __popc(full_bits);
    }
    __syncthreads();
    int off_partial = base_partial, off_full = base_full;
    for (int w = 0; w < kWarps; ++w) {
      const int p = warp_partial[w], f = warp_full[w];
      off_partial += w < warp ? p : 0;
      off_full += w < warp ? f : 0;
      base_partial += p;
      base_full += f;
    }
    if (kind == TileKind::partial) pidx[off_partial + __popc(partial_bits & lanes_below)] = i;
    if (kind == TileKind::full) fidx[off_full + __popc(full_bits & lanes_below)] = i;
    __syncthreads();  // warp_partial / warp_full are rewritten by the next chunk and line
  }
  if (threadIdx.x == 0) {
    *pnum = base_partial;
    *fnum = base_full;
  }
}

template <int kThreads, class Unit>
__global__ void __launch_bounds__(kThreads)
    row_lists_kernel(const unsigned char* __restrict__ kinds, int64_t rows, int nkvb,
                     int32_t* kv_num, int32_t* kv_idx, int32_t* full_kv_num, int32_t* full_kv_idx) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const unsigned char* line = kinds + row * nkvb;  // (nkvb,)
    compact_line<kThreads>(
        nkvb, [line](int i) { return static_cast<TileKind>(line[i]); }, kv_num + row,
        kv_idx + row * nkvb, full_kv_num + row, full_kv_idx + row * nkvb);
  }
}

// True when `v` is among the first n entries of the ascending list `a`.
__device__ inline bool sorted_contains(const int32_t* a, int n, int v) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (a[mid] < v) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo < n && a[lo] == v;
}

template <int kThreads, class Unit>
__global__ void __launch_bounds__(kThreads)
    column_lists_kernel(int64_t cols, int nqb, int nkvb, const int32_t* kv_num,
                        const int32_t* kv_idx, const int32_t* full_kv_num,
                        const int32_t* full_kv_idx, int32_t* q_num, int32_t* q_idx,
                        int32_t* full_q_num, int32_t* full_q_idx) {
  for (int64_t col = blockIdx.x; col < cols; col += gridDim.x) {
    const int64_t row0 = col / nkvb * nqb;  // first row of this (b, h)
    const int kb = static_cast<int>(col % nkvb);
    const auto kind_of = [=](int qb) {
      const int64_t row = row0 + qb;
      if (sorted_contains(kv_idx + row * nkvb, kv_num[row], kb)) return TileKind::partial;
      if (sorted_contains(full_kv_idx + row * nkvb, full_kv_num[row], kb)) return TileKind::full;
      return TileKind::empty;
    };
    compact_line<kThreads>(nqb, kind_of, q_num + col, q_idx + col * nqb, full_q_num + col,
                           full_q_idx + col * nqb);
  }
}

#if !defined(__CUDACC_RTC__)
// Grid for a grid-stride kernel: enough blocks to cover `work`, capped (the loop covers the rest).
inline unsigned grid_for(int64_t work, int per_block) {
  return static_cast<unsigned>(std::clamp<int64_t>((work + per_block - 1) / per_block, 1, 1 << 20));
}

// The three kernels of Unit: compiled in, or Unit's run-time ones (kernel_ref.cuh).
inline std::string rt_kernel(const char* name, std::initializer_list<std::string> args) {
  return rt_template_id(std::string("flexattn::detail::cuda::block_mask_impl::") + name, args);
}
template <class Unit, class MaskMod>
KernelRef<MaskMod, int, int, int, int, int, int, int, int64_t, unsigned char*> classify_kernel() {
  using Ref = KernelRef<MaskMod, int, int, int, int, int, int, int, int64_t, unsigned char*>;
  if constexpr (RuntimeKernelUnit<Unit>) {
    return runtime_kernel<Ref, Unit>(
        rt_kernel("classify_tiles_kernel", {rt_name<Unit>(), rt_name<MaskMod>()}));
  } else {
    return static_kernel<Ref>(&classify_tiles_kernel<Unit, MaskMod>);
  }
}
template <class Unit>
KernelRef<const unsigned char*, int64_t, int, int32_t*, int32_t*, int32_t*, int32_t*>
row_kernel() {
  using Ref = KernelRef<const unsigned char*, int64_t, int, int32_t*, int32_t*, int32_t*, int32_t*>;
  if constexpr (RuntimeKernelUnit<Unit>) {
    return runtime_kernel<Ref, Unit>(
        rt_kernel("row_lists_kernel", {std::to_string(kListThreads), rt_name<Unit>()}));
  } else {
    return static_kernel<Ref>(&row_lists_kernel<kListThreads, Unit>);
  }
}
template <class Unit>
KernelRef<int64_t, int, int, const int32_t*, const int32_t*, const int32_t*, const int32_t*,
          int32_t*, int32_t*, int32_t*, int32_t*>
column_kernel() {
  using Ref = KernelRef<int64_t, int, int, const int32_t*, const int32_t*, const int32_t*,
                        const int32_t*, int32_t*, int32_t*, int32_t*, int32_t*>;
  if constexpr (RuntimeKernelUnit<Unit>) {
    return runtime_kernel<Ref, Unit>(
        rt_kernel("column_lists_kernel", {std::to_string(kListThreads), rt_name<Unit>()}));
  } else {
    return static_kernel<Ref>(&column_lists_kernel<kListThreads, Unit>);
  }
}
#endif
}  // namespace block_mask_impl

#if !defined(__CUDACC_RTC__)
// Fills every list of `d` (allocated on the GPU by BlockMaskData::allocate) on `stream`
// (a cudaStream_t; nullptr is the default stream). Returns before the kernels finish. `Unit`: the
// calling translation unit's tag (ThisUnit in a user's .cu, LibraryUnit in the library).
template <class Unit, class MaskMod>
void build_block_mask_device(const MaskMod& mask_mod, BlockMaskData& d, void* stream) {
  using namespace block_mask_impl;
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t rows = d.B * d.H * d.nqb, cols = d.B * d.H * d.nkvb, tiles = rows * d.nkvb;
  const auto i32 = [](Buffer& b) { return static_cast<int32_t*>(b.data()); };
  // The kinds are parked in q_idx (4 * tiles bytes) until kernel 3 writes the q lists there.
  auto* kinds = static_cast<unsigned char*>(d.q_idx.data());

  prefetch_kernels<Unit>([] {
    (void)classify_kernel<Unit, MaskMod>();
    (void)row_kernel<Unit>();
    (void)column_kernel<Unit>();
  });
  // Launch errors are the thread's last error too, which each FLEXATTN_CUDA_CHECK_LAUNCH reads
  // (kernel_ref.cuh).
  (void)launch_kernel(classify_kernel<Unit, MaskMod>(), grid_for(tiles, kClassifyWarps),
                      kClassifyWarps * 32, 0, s, false, mask_mod, static_cast<int>(d.H),
                      static_cast<int>(d.q_len), static_cast<int>(d.kv_len), d.block_q, d.block_kv,
                      static_cast<int>(d.nqb), static_cast<int>(d.nkvb), tiles, kinds);
  FLEXATTN_CUDA_CHECK_LAUNCH("create_block_mask: classify_tiles_kernel");
  (void)launch_kernel(row_kernel<Unit>(), grid_for(rows, 1), kListThreads, 0, s, false, kinds,
                      rows, static_cast<int>(d.nkvb), i32(d.kv_num), i32(d.kv_idx),
                      i32(d.full_kv_num), i32(d.full_kv_idx));
  FLEXATTN_CUDA_CHECK_LAUNCH("create_block_mask: row_lists_kernel");
  (void)launch_kernel(column_kernel<Unit>(), grid_for(cols, 1), kListThreads, 0, s, false, cols,
                      static_cast<int>(d.nqb), static_cast<int>(d.nkvb), i32(d.kv_num),
                      i32(d.kv_idx), i32(d.full_kv_num), i32(d.full_kv_idx), i32(d.q_num),
                      i32(d.q_idx), i32(d.full_q_num), i32(d.full_q_idx));
  FLEXATTN_CUDA_CHECK_LAUNCH("create_block_mask: column_lists_kernel");
}
#endif

}  // namespace flexattn::detail::cuda
