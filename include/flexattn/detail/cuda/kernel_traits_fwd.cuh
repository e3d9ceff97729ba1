// Tile shapes of the sm80 forward kernel, one per head dim, and the arguments it is launched with.
//
// Layout shared by every head dim: a CTA owns BLOCK_M query rows; warp w owns rows
// [w * ROWS_PER_WARP, (w + 1) * ROWS_PER_WARP) for the whole kernel (its S, P and O fragments,
// its softmax statistics, its slice of Q in shared memory), so warps only meet at the K / V tiles.
// ROWS_PER_WARP = 32 (two m16 tiles) halves the shared-memory traffic of the K / V fragments
// against 16 rows, which matters on H100 where ldmatrix bandwidth, not mma.sync, bounds a warp;
// it costs registers: O is ROWS_PER_WARP * D / 32 floats per thread and S is
// ROWS_PER_WARP * BLOCK_N / 32. The 255-register ceiling picks the shapes below.
//
// Shared memory: Q (BLOCK_M, D), one K tile and one V tile (BLOCK_N, D) each. Rows are padded by
// 16 bytes: the row pitch is then an odd number of 16-byte chunks, so the 8 row addresses of one
// ldmatrix (and 8 consecutive 16-byte cp.async writes) land in 8 different bank groups - no bank
// conflicts, without a swizzle that would have to special-case D = 96. The output tile is staged
// through Q's region (each warp writes only its own rows, which only it ever read).
//
// Pipeline ("two stages", FlashAttention-2's schedule): the load of V[j] flies while S = Q K[j]^T
// is computed, the load of K[j+1] while softmax and O += P V[j] are. One K and one V buffer keep
// D = 128 at 52 KB, so two CTAs fit on an SM of an A100 (164 KB) as well as an H100 (227 KB);
// registers, not shared memory, cap the CTAs per SM.
#pragma once

#include "../device_std.h"

#include "mask_lists.cuh"

namespace flexattn::detail::cuda {

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, int kMinBlocksPerSm_>
struct FwdTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;  // __launch_bounds__ occupancy hint
  static constexpr int kRowsPerWarp = kBlockM / kNWarps;
  static constexpr int kMTiles = kRowsPerWarp / 16;  // m16 tiles per warp
  static constexpr int kNTilesS = kBlockN / 8;       // n8 tiles of S (kv columns)
  static constexpr int kNTilesO = kHeadDim / 8;      // n8 tiles of O (head-dim columns)
  static constexpr int kChunksPerRow = kHeadDim / 8; // 16-byte chunks of 16-bit elements
  static constexpr int kSmemPitch = kHeadDim + 8;    // elements; see the padding note above
  static constexpr int kSmemQ = kBlockM * kSmemPitch;  // elements
  static constexpr int kSmemK = kBlockN * kSmemPitch;
  static constexpr int kSmemV = kBlockN * kSmemPitch;
  static constexpr int kSmemBytes = (kSmemQ + kSmemK + kSmemV) * 2;

  static_assert(kHeadDim % 16 == 0 && kBlockN % 16 == 0, "mma k16 slices");
  static_assert(kRowsPerWarp == 16 || kRowsPerWarp == 32, "a warp owns one or two m16 tiles");
  static_assert((kBlockM * kChunksPerRow) % kNThreads == 0, "Q tile splits evenly over threads");
  static_assert((kBlockN * kChunksPerRow) % kNThreads == 0, "K/V tile splits evenly");
  static_assert((kRowsPerWarp * kChunksPerRow) % 32 == 0, "output rows split evenly over a warp");
};

// Per head dim. Registers: `nvcc -Xptxas -v`, sm_90, for noop / causal / document / ALiBi /
// softcap; every config below has 0 spill bytes. Shapes were picked on an H100 (dev/fwd):
// at D = 128, 128 x 32 beat 128 x 64 (which spilled ~160 B) by 5-7% on every variant, and both
// 64 x 64 with 3 CTAs / SM and 8 warps x 16 rows were slower (double K/V fragment traffic).
//  D    BLOCK_M x BLOCK_N  warps  O+S floats  regs      smem    CTAs/SM
//  32   128 x 64           4      32 + 64     178-217   30 KB   2
//  64   128 x 64           4      64 + 64     237-252   36 KB   2  (128 kv columns spilled)
//  96   128 x 32           4      96 + 32     223-238   40 KB   2  (64 columns spilled 8-36 B)
//  128  128 x 32           4      128 + 32    254-255   52 KB   2
//  192  128 x 64           8      96 + 32     241-253   102 KB  1  (32 rows / warp: 192 + 64)
//  256  128 x 32           8      128 + 16    240-242   101 KB  1  (64 columns spilled 164 B)
// BLOCK_M = 128 for all, so the default BlockMask blocks (128 x 128) tile exactly; a mask's
// block_q must be a multiple of BLOCK_M and its block_kv of BLOCK_N (launch_fwd.cuh checks).
template <int D>
struct FwdConfig;
template <>
struct FwdConfig<32> : FwdTraits<32, 128, 64, 4, 2> {};
template <>
struct FwdConfig<64> : FwdTraits<64, 128, 64, 4, 2> {};
template <>
struct FwdConfig<96> : FwdTraits<96, 128, 32, 4, 2> {};
template <>
struct FwdConfig<128> : FwdTraits<128, 128, 32, 4, 2> {};
template <>
struct FwdConfig<192> : FwdTraits<192, 128, 64, 8, 1> {};
template <>
struct FwdConfig<256> : FwdTraits<256, 128, 32, 8, 1> {};

// Everything the kernel reads, resolved on the host. Strides are in elements; lengths fit int
// (the functors take int indices). The block-mask lists are int32 device arrays (BlockMaskData).
struct FwdParams : MaskLists {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  int64_t q_sb, q_sh, q_sr;  // batch, head, row strides of q [B, Hq, Lq, D]
  int64_t k_sb, k_sh, k_sr;  // of k [B, Hkv, Lkv, D]
  int64_t v_sb, v_sh, v_sr;  // of v [B, Hkv, Lkv, D]
  int64_t o_sb, o_sh, o_sr;  // of out [B, Hq, Lq, D]
  int64_t l_sb, l_sh, l_sr;  // of lse [B, Hq, Lq]
  int Lq, Lkv;
  int group;                 // Hq / Hkv: query head h reads kv head h / group
  float scale;               // natural units: s = scale * q.k
  float scale_log2;          // scale * log2(e), for score_mod-free variants
};

}  // namespace flexattn::detail::cuda
