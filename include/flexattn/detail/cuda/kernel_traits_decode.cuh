// Tile shapes of the decode kernel (mainloop_decode.cuh) and the arguments it is launched with.
//
// Decoding is a matrix-vector problem: a few query rows against a long K/V, so the kernel is bound
// by reading K/V, not by the tensor cores. Its tile is therefore shaped for bandwidth:
//   - one m16 tile of packed rows: the query heads of a GQA group times the Lq rows (group 4,
//     Lq 1..4 fill it), so each K/V tile is read once for the whole group;
//   - BLOCK_N = 64 keys per stage, cut among the 4 warps (16 keys each): every warp keeps its own
//     online softmax over its keys, and the warps merge once at the end (detail/merge.h). No warp
//     waits on another inside the loop;
//   - a deep cp.async ring (kStages tiles of K and V) so that enough bytes are in flight per SM
//     to cover the memory latency: about 2 x 32 KB per CTA at D = 128, two CTAs per SM.
// Rows are padded by 16 bytes as in the sm80 forward (kernel_traits_fwd.cuh): conflict-free
// ldmatrix and cp.async without a swizzle.
#pragma once

#include "../device_std.h"

#include "mask_lists.cuh"

namespace flexattn::detail::cuda {

template <int kHeadDim_>
struct DecodeConfig {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kRows = 16;  // packed query rows per CTA: one m16 tile
  static constexpr int kBlockN = 64;
  static constexpr int kNWarps = 4;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kKeysPerWarp = kBlockN / kNWarps;
  // Shared-memory ring: 4 stages at D <= 64, 3 at 128 (2 CTAs / SM on an H100 / H200), 2 beyond.
  static constexpr int kStages = kHeadDim <= 64 ? 4 : (kHeadDim <= 128 ? 3 : 2);
  // The names MainloopFwdSm80's products read (they run on this kernel's tiles unchanged).
  static constexpr int kMTiles = 1;
  static constexpr int kNTilesS = kKeysPerWarp / 8;
  static constexpr int kNTilesO = kHeadDim / 8;
  static constexpr int kChunksPerRow = kHeadDim / 8;
  static constexpr int kSmemPitch = kHeadDim + 8;
  static constexpr int kSmemQ = kRows * kSmemPitch;   // elements
  static constexpr int kSmemKV = kBlockN * kSmemPitch;  // one K or one V tile, elements
  // After the loop the ring holds the warps' normalised O and lse for the merge (f32).
  static constexpr int kMergeBytes = kNWarps * kRows * (kHeadDim + 1) * 4;
  static constexpr int kRingBytes = kStages * 2 * kSmemKV * 2;
  static constexpr int kSmemBytes =
      kSmemQ * 2 + (kRingBytes > kMergeBytes ? kRingBytes : kMergeBytes);

  static_assert(kHeadDim % 16 == 0 && kKeysPerWarp % 16 == 0, "mma k16 slices");
  static_assert((kBlockN * kChunksPerRow) % kNThreads == 0, "K/V tile splits evenly");
  static_assert((kRows * kChunksPerRow) % 32 == 0, "Q rows split evenly over a warp");
};

// Everything the decode kernel reads, resolved on the host. Two sources of K/V share it:
//   contiguous  k, v are [B, Hkv, Lkv, D] (k_sb the batch stride); page_table is null;
//   paged       k, v are [num_pages, Hkv, page_size, D] (k_sb the page stride) and key t of
//               sequence b is row t % page_size of page page_table[b][t / page_size].
// Two tile walks: the block mask's lists (`lists`, contiguous calls with a BlockMask) or the
// mask_mod's tile rule over the keys [0, kv_len[b]) (paged calls).
struct DecodeParams : MaskLists {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  int64_t q_sb, q_sh, q_sr;
  int64_t k_sb, k_sh, k_sr;
  int64_t v_sb, v_sh, v_sr;
  int64_t o_sb, o_sh, o_sr;
  int64_t l_sb, l_sh, l_sr;
  const int32_t* page_table;  // null: contiguous
  int64_t pt_sb, pt_sp;       // batch and page strides of page_table
  int page_size, num_pages;
  int page_shift;             // log2(page_size) for a power of two, else -1
  const int32_t* kv_len;      // null: every sequence has Lkv keys
  int64_t kl_s;
  int Lq, Lkv;                // Lkv: the contiguous length, or the paged capacity
  int group;                  // Hq / Hkv
  int heads_per_tile;         // query heads packed into one tile (group, or 1)
  int m_blocks;               // ceil(heads_per_tile * Lq / kRows)
  int splits;                 // CTAs per (m-block, head tile, batch) along the keys
  bool lists;
  float scale, scale_log2;
  // splits > 1: the parts, [splits, B, Hq, Lq, D] and [splits, B, Hq, Lq] f32 (contiguous).
  float* part_out;
  float* part_lse;
  int B, Hq;
};

}  // namespace flexattn::detail::cuda
