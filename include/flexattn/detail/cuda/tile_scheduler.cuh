// Which work a CTA of the forward kernel does: its (q-tile, head, batch) from the grid, and the
// kv tiles it visits - the block mask's partial blocks, then its full blocks, each cut into
// BLOCK_N-wide kernel tiles. Skipped blocks are never listed, so never loaded.
#pragma once

#include <cstdint>

#include "kernel_traits_fwd.cuh"
#include "utils.cuh"

namespace flexattn::detail::cuda {

// Grid: x = q tiles, y = query heads, z = batch. Consecutive CTAs share (b, h) and so the same K/V
// (and, for GQA, the heads of one group are neighbours in y), which keeps K/V hot in L2.
// q tiles run in reverse: under causal-like masks the last rows see the most keys, and starting
// the heaviest tiles first keeps the SMs busy to the end instead of finishing on a long tail.
struct FwdTileScheduler {
  static dim3 grid(int num_m_tiles, int heads, int batch) {
    return dim3(static_cast<unsigned>(num_m_tiles), static_cast<unsigned>(heads),
                static_cast<unsigned>(batch));
  }
  struct Tile {
    int m_tile, h, b;
  };
  FLEXATTN_DEV static Tile get() {
    return {static_cast<int>(gridDim.x - 1 - blockIdx.x), static_cast<int>(blockIdx.y),
            static_cast<int>(blockIdx.z)};
  }
};

// Walks the kv tiles of one q-tile. A block-mask kv-block of block_kv columns holds
// block_kv / BLOCK_N kernel tiles; tiles starting at or past Lkv (only in the last block) are
// skipped. The lists are read with one load per block, ahead of use (next() runs one tile early).
template <int kBlockN>
struct KvTileIter {
  struct Tile {
    int n0;        // first kv row of the tile; < 0 when the walk is over
    bool partial;  // mask_mod must be evaluated per element
  };

  const int32_t* part;
  const int32_t* full;
  int n_part, n_total;
  int block_kv, Lkv;

  FLEXATTN_DEV KvTileIter(const FwdParams& p, int b, int h, int m0) {
    const int bm = p.mask_b == 1 ? 0 : b;
    const int hm = p.mask_h == 1 ? 0 : h;
    const int64_t row = (static_cast<int64_t>(bm) * p.mask_h + hm) * p.nqb + m0 / p.block_q;
    n_part = __ldg(p.kv_num + row);
    n_total = n_part + __ldg(p.full_kv_num + row);
    part = p.kv_idx + row * p.nkvb;
    full = p.full_kv_idx + row * p.nkvb;
    block_kv = p.block_kv;
    Lkv = p.Lkv;
  }

  // Tile at list entry i (partial entries first), sub-tile 0.
  FLEXATTN_DEV Tile entry(int i) {
    if (i >= n_total) return {-1, false};
    const bool is_part = i < n_part;
    const int blk = is_part ? __ldg(part + i) : __ldg(full + (i - n_part));
    sub_left_ = block_kv / kBlockN - 1;
    return {blk * block_kv, is_part};
  }
  FLEXATTN_DEV Tile first() {
    entry_ = 0;
    return entry(0);
  }
  // The tile after `cur` (which must be valid).
  FLEXATTN_DEV Tile next(const Tile& cur) {
    const int n0 = cur.n0 + kBlockN;
    if (sub_left_ > 0 && n0 < Lkv) {  // same block, next sub-tile
      --sub_left_;
      return {n0, cur.partial};
    }
    return entry(++entry_);
  }

 private:
  int entry_ = 0;
  int sub_left_ = 0;  // sub-tiles of the current block after the current one
};

}  // namespace flexattn::detail::cuda
