// create_block_mask on the CPU: classifies every (q-block, kv-block) tile of every (b, h) exactly
// and writes the index lists of BlockMaskData (layout in block_mask.h).
//
// Included by block_mask.h after BlockMaskData is defined; include <flexattn/block_mask.h> instead
// of this file.
//
// Each tile is decided by the mask_mod's tile rule where it has one (tile_kind_of, mods.h: exact
// when it answers empty/partial/full), else element by element. Last tiles may be ragged: a tile
// covers rows [q0, min(q0 + block_q, Lq)) and columns [k0, min(k0 + block_kv, Lkv)), and is
// classified over those in-range elements only - the mask_mod never sees an index past the end.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../mods.h"
#include "cpu/kernels.h"

namespace flexattn::detail::cpu {

// Number of kept elements of row q over columns [k0, k1). A plain counting loop (a sum
// reduction, no early exit) so that the compiler vectorises it for a simple mask_mod. GCC does at
// -O3; -O2's cheap cost model leaves it scalar (about 3x slower for an opaque causal mask).
template <class MaskMod>
FLEXATTN_FORCEINLINE int count_kept_in_row(const MaskMod& m, int b, int h, int q, int k0, int k1) {
  int n = 0;
  for (int kv = k0; kv < k1; ++kv) n += m(b, h, q, kv) ? 1 : 0;
  return n;
}

// Exact kind of the tile rows [q0, q1) x columns [k0, k1) by evaluating its elements row by row,
// stopping as soon as both a kept and a dropped element have been seen.
template <class MaskMod>
TileKind scan_tile(const MaskMod& m, int b, int h, int q0, int q1, int k0, int k1) {
  const int width = k1 - k0;
  bool kept = false, dropped = false;
  for (int q = q0; q < q1; ++q) {
    const int n = count_kept_in_row(m, b, h, q, k0, k1);
    kept = kept || n > 0;
    dropped = dropped || n < width;
    if (kept && dropped) return TileKind::partial;
  }
  return kept ? TileKind::full : TileKind::empty;
}

template <class MaskMod>
TileKind classify_tile(const MaskMod& m, int b, int h, int q0, int q1, int k0, int k1) {
  const TileKind t = tile_kind_of(m, b, h, q0, q1, k0, k1);
  return t == TileKind::unknown ? scan_tile(m, b, h, q0, q1, k0, k1) : t;
}

// Fills every list of `d` (already allocated on the CPU by BlockMaskData::allocate).
// Pass 1, threads over (b, h, q-block) rows: classify the row's tiles, write the row's partial and
// full kv lists, and keep the kinds in a byte grid (O(tiles), never O(Lq * Lkv)).
// Pass 2, threads over (b, h, kv-block) columns: the transposed q lists from that grid. Scanning
// q-blocks in order makes every list ascending without a sort.
template <class MaskMod>
void build_block_mask(const MaskMod& m, BlockMaskData& d) {
  const int64_t H = d.H, nqb = d.nqb, nkvb = d.nkvb;
  const int64_t Lq = d.q_len, Lkv = d.kv_len;
  const int64_t bq = d.block_q, bkv = d.block_kv;
  std::vector<unsigned char> kinds(static_cast<size_t>(d.B * H * nqb * nkvb));  // (B*H*nqb, nkvb)

  int32_t* kv_num = static_cast<int32_t*>(d.kv_num.data());
  int32_t* kv_idx = static_cast<int32_t*>(d.kv_idx.data());
  int32_t* full_kv_num = static_cast<int32_t*>(d.full_kv_num.data());
  int32_t* full_kv_idx = static_cast<int32_t*>(d.full_kv_idx.data());
  parallel_for(d.B * H * nqb, [&](int64_t row, int) {
    const int b = static_cast<int>(row / (H * nqb));
    const int h = static_cast<int>(row / nqb % H);
    const int64_t qb = row % nqb;
    // int64 before the min: q0 + block_q may pass INT_MAX even though Lq does not.
    const int q0 = static_cast<int>(qb * bq);
    const int q1 = static_cast<int>(std::min(qb * bq + bq, Lq));
    unsigned char* kind_row = kinds.data() + row * nkvb;  // (nkvb,)
    int32_t* partial = kv_idx + row * nkvb;               // (nkvb,)
    int32_t* full = full_kv_idx + row * nkvb;             // (nkvb,)
    int32_t np = 0, nf = 0;
    for (int64_t kb = 0; kb < nkvb; ++kb) {
      const int k0 = static_cast<int>(kb * bkv);
      const int k1 = static_cast<int>(std::min(kb * bkv + bkv, Lkv));
      const TileKind t = classify_tile(m, b, h, q0, q1, k0, k1);
      kind_row[kb] = static_cast<unsigned char>(t);
      if (t == TileKind::partial) partial[np++] = static_cast<int32_t>(kb);
      if (t == TileKind::full) full[nf++] = static_cast<int32_t>(kb);
    }
    kv_num[row] = np;
    full_kv_num[row] = nf;
  });

  int32_t* q_num = static_cast<int32_t*>(d.q_num.data());
  int32_t* q_idx = static_cast<int32_t*>(d.q_idx.data());
  int32_t* full_q_num = static_cast<int32_t*>(d.full_q_num.data());
  int32_t* full_q_idx = static_cast<int32_t*>(d.full_q_idx.data());
  parallel_for(d.B * H * nkvb, [&](int64_t col, int) {
    const int64_t bh = col / nkvb, kb = col % nkvb;
    const unsigned char* kind_col = kinds.data() + bh * nqb * nkvb + kb;  // stride nkvb
    int32_t* partial = q_idx + col * nqb;                                 // (nqb,)
    int32_t* full = full_q_idx + col * nqb;                               // (nqb,)
    int32_t np = 0, nf = 0;
    for (int64_t qb = 0; qb < nqb; ++qb) {
      const auto t = static_cast<TileKind>(kind_col[qb * nkvb]);
      if (t == TileKind::partial) partial[np++] = static_cast<int32_t>(qb);
      if (t == TileKind::full) full[nf++] = static_cast<int32_t>(qb);
    }
    q_num[col] = np;
    full_q_num[col] = nf;
  });
}

}  // namespace flexattn::detail::cpu
