// Which work a CTA does. Forward: its (q-tile, head, batch) from the grid, and the kv tiles it
// visits. Decode: its (m-block, head tile, batch, split) and the share of the keys its split
// walks (DecodeKvWalk below).
//
// Forward: which work a CTA of the forward kernel does: its (q-tile, head, batch) from the grid, and the
// kv tiles it visits - the block mask's partial blocks, then its full blocks, each cut into
// BLOCK_N-wide kernel tiles. Skipped blocks are never listed, so never loaded.
#pragma once

#include "../device_std.h"

#include "../../mods.h"
#include "kernel_traits_decode.cuh"
#include "kernel_traits_fwd.cuh"
#include "utils.cuh"

namespace flexattn::detail::cuda {

// Grid: x = q tiles, y = query heads, z = batch. Consecutive CTAs share (b, h) and so the same K/V
// (and, for GQA, the heads of one group are neighbours in y), which keeps K/V hot in L2.
// q tiles run in reverse: under causal-like masks the last rows see the most keys, and starting
// the heaviest tiles first keeps the SMs busy to the end instead of finishing on a long tail.
struct FwdTileScheduler {
  FLEXATTN_HD static dim3 grid(int num_m_tiles, int heads, int batch) {
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

// ---- decode ---------------------------------------------------------------------------------------
// Grid: x = split * m_blocks + m-block, y = head tile (heads_per_tile query heads sharing one kv
// head), z = batch. The splits of one (head tile, batch) are neighbours, so their K/V ranges are
// read close together in time.
struct DecodeTileScheduler {
  FLEXATTN_HD static dim3 grid(int m_blocks, int splits, int head_tiles, int batch) {
    return dim3(static_cast<unsigned>(m_blocks * splits), static_cast<unsigned>(head_tiles),
                static_cast<unsigned>(batch));
  }
  struct Tile {
    int m_block, head_tile, b, split;
  };
  FLEXATTN_DEV static Tile get(int m_blocks) {
    const int x = static_cast<int>(blockIdx.x);
    return {x % m_blocks, static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.z),
            x / m_blocks};
  }
};

// The keys of one decode CTA as kernel tiles of kBlockN, in the walk's flat numbering f:
//   lists  f -> entry f / subs of the block mask's lists (partial entries first), sub-tile f % subs
//   rule   f -> keys [f * kBlockN, ...) classified by the mask_mod's tile rule over the CTA's rows
// A split takes an even share of [lo, hi): all of the lists, or under a rule the span from the
// first to the last tile that is not empty (a sliding window's few tiles are shared out among
// every split instead of landing on one). Tiles that are empty, or start at or past the
// sequence's end, are skipped by next().
template <int kBlockN, class MaskMod>
struct DecodeKvWalk {
  struct Tile {
    int f;         // flat index; >= end when the walk is over
    int n0;        // first key
    bool partial;  // mask_mod must be evaluated per element
  };

  const MaskMod& mask;
  int b, h_lo, h_hi, q_lo, q_hi;  // the CTA's heads and logical query rows (inclusive)
  int kv_end;                     // keys [0, kv_end) exist
  // lists
  const int32_t* part = nullptr;
  const int32_t* full = nullptr;
  int n_part = 0, subs = 1, block_kv = 0;
  bool lists;
  int begin = 0, end = 0;

  // Tile kind of keys [k0, k1) for every head of the CTA: empty if empty for all, full if full for
  // all, else partial (exact per element). Without a tile rule every tile is partial.
  FLEXATTN_DEV TileKind classify(int k0, int k1) const {
    if constexpr (fstd::is_same_v<MaskMod, NoopMask>) {
      return TileKind::full;
    } else if constexpr (HasTileRule<MaskMod>) {
      bool all_empty = true, all_full = true;
      for (int h = h_lo; h <= h_hi; ++h) {
        const TileKind k = mask.tile_kind(b, h, q_lo, q_hi + 1, k0, k1);
        all_empty = all_empty && k == TileKind::empty;
        all_full = all_full && k == TileKind::full;
      }
      return all_empty ? TileKind::empty : (all_full ? TileKind::full : TileKind::partial);
    } else {
      return TileKind::partial;
    }
  }

  // The tile at flat index f, or {f, -1, ..} when it is skipped.
  FLEXATTN_DEV Tile at(int f) const {
    if (lists) {
      const int e = f / subs;
      const int blk = e < n_part ? __ldg(part + e) : __ldg(full + (e - n_part));
      const int n0 = blk * block_kv + (f % subs) * kBlockN;
      return {f, n0 < kv_end ? n0 : -1, e < n_part};
    }
    const int n0 = f * kBlockN;
    const int n1 = n0 + kBlockN < kv_end ? n0 + kBlockN : kv_end;
    const TileKind k = classify(n0, n1);
    return {f, k == TileKind::empty ? -1 : n0, k != TileKind::full};
  }
  // Under a tile rule, every thread of the CTA together (a barrier inside): [lo, hi) from the
  // first to the last of tiles [0, tiles) that are not empty, lo = hi = 0 when all are. `span`:
  // 4 ints of shared memory.
  // Two passes, so that a long context costs each thread about one rule call, not tiles /
  // threads of them (a sliding-window step at 128k keys, 2048 tiles: 22.1 -> 19.8 us on an
  // H200): chunks of ceil(tiles / threads) tiles first, one per thread (an `empty` answer is
  // exact for any range; a rule that scans its range, as the document mask's does, reads no more
  // per thread than one call per tile did), then the tiles of the first and the last chunk that
  // is not empty, one per thread. Where such a chunk holds no kept tile after all (its answer
  // was partial or unknown), its own edge stands: the span may include empty tiles, which next()
  // skips, and never leaves out a kept one.
  template <int kThreads>
  FLEXATTN_DEV void rule_span(int tiles, int* span, int& lo, int& hi) const {
    // Chunks of at most kThreads / 2 tiles, so that the second pass is one tile per thread.
    const int chunk = min((tiles + kThreads - 1) / kThreads, kThreads / 2);
    const int tid = static_cast<int>(threadIdx.x);
    const int chunks = (tiles + chunk - 1) / chunk;
    if (tid == 0) span[0] = chunks, span[1] = -1, span[2] = tiles, span[3] = -1;
    __syncthreads();
    for (int c = tid; c < chunks; c += kThreads) {
      const int k0 = c * chunk * kBlockN;
      const int k1 = min(k0 + chunk * kBlockN, kv_end);
      if (classify(k0, k1) != TileKind::empty) atomicMin(&span[0], c), atomicMax(&span[1], c);
    }
    __syncthreads();
    const int c_lo = span[0], c_hi = span[1];
    if (c_hi < 0) {  // every chunk is empty
      lo = hi = 0;
      return;
    }
    // Threads [0, chunk) look for the first kept tile of chunk c_lo, the next `chunk` threads
    // for the last kept tile of chunk c_hi (the same chunk when c_lo == c_hi).
    if (tid < 2 * chunk) {
      const bool first = tid < chunk;
      const int f = (first ? c_lo : c_hi) * chunk + tid % chunk;
      if (f < tiles && at(f).n0 >= 0) {
        if (first) atomicMin(&span[2], f);
        else atomicMax(&span[3], f);
      }
    }
    __syncthreads();
    lo = span[2] < tiles ? span[2] : c_lo * chunk;
    hi = span[3] >= 0 ? span[3] + 1 : min((c_hi + 1) * chunk, tiles);
  }

  // The first tile at flat index >= f that is not skipped.
  FLEXATTN_DEV Tile from(int f) const {
    for (; f < end; ++f) {
      const Tile t = at(f);
      if (t.n0 >= 0) return t;
    }
    return {end, -1, false};
  }
};

}  // namespace flexattn::detail::cuda
