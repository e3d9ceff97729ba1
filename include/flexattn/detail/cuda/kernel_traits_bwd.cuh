// Tile shapes of the sm80 backward kernel, one per head dim, and the arguments it is launched with.
//
// A CTA owns one kv tile of BLOCK_N rows (K, V resident in shared memory, dK, dV accumulating in
// registers) and walks the q tiles of BLOCK_M rows that the block mask lists for it. Per q tile it
// runs five warp GEMMs, each with its own split of the 8 warps (W = warps, all sizes in rows):
//   S  = Q K^T, dP = dO V^T   (BLOCK_M, BLOCK_N)  kSdpWarpsM along M x rest along N
//   dV += P^T dO, dK += dS^T Q (BLOCK_N, D)       kDkvWarpsN along N x rest along D
//   dQ  = dS K                 (BLOCK_M, D)        kDqWarpsM along M x rest along D
// P and dS go through shared memory (bf16/f16) because they are read transposed by the dV / dK
// GEMMs. dK and dV stay in registers for the whole kernel: (BLOCK_N x D x 2) / threads floats per
// thread, the largest register cost, which is what bounds BLOCK_N x D.
//
// Shared memory, row-major tiles with a pitch padded by 16 bytes (conflict-free ldmatrix and
// ldmatrix.trans for every D without a swizzle, as in the forward): K, V (BLOCK_N, D);
// Q in kStagesQ and dO in kStagesDo buffers (BLOCK_M, D); P and dS (BLOCK_M, BLOCK_N).
// Two stages let the next q tile load while this one computes; one stage loads it behind the
// GEMM that last reads the buffer (dO after dV, Q after dK), which hides less of the latency.
//
//  D    BLOCK_M x BLOCK_N  warps  S/dP  dK,dV  dQ     stages Q/dO  smem     dK+dV floats
//  32   64 x 128           8      2x4   4x2    4x2    2 / 2        75 KB    32
//  64   128 x 128          8      2x4   4x2    4x2    2 / 1        158 KB   64
//  96   64 x 128           8      2x4   4x2    4x2    2 / 2        141 KB   96
//  128  64 x 128           8      2x4   4x2    2x4    2 / 1        157 KB   128
//  192  64 x 64            8      4x2   4x2    4x2    2 / 1        146 KB   96
//  256  64 x 64            8      4x2   4x2    4x2    1 / 1        154 KB   128
// Every config fits the 163 KB an A100 CTA may use (the H100 allows 227 KB) and needs ~255
// registers a thread (1 CTA of 8 warps per SM). D = 64 takes BLOCK_M = 128 (S and dP are then 64
// floats each): measured ~187 vs ~159 TFLOP/s with BLOCK_M = 64 on an H100 (L = 16k, no mask).
// A second dO stage for D = 128 (174 KB, H100 only) measured within 1%: not worth losing the A100.
// BLOCK_M divides the default block_q of 128; a mask whose block_q is not a multiple of BLOCK_M or
// whose block_kv is not a multiple of BLOCK_N is still run correctly, densely (launch_bwd.cuh).
#pragma once

#include "../device_std.h"

#include "../../config.h"
#include "launch_record.h"
#include "mask_lists.cuh"

namespace flexattn::detail::cuda {

// How a main kernel lays out dq_accum ([B, Hq, Lq_pad, D] f32), which the postprocess reads back:
// groups of kTileRows rows (kTileRows divides BLOCK_M) are contiguous, and index(r, c, D) is the
// position of (row r of the group, column c) inside its group. Two adjacent columns c, c + 1 (c
// even) are adjacent in memory in every layout.
//   DqRowMajor   the sm80 kernel: f32 atomics row by row
//   DqTileSm90   the sm90 kernel (mainloop_bwd_sm90.cuh): a 64-row q tile in the order the
//                wgmma accumulators leave the registers (thread tid's fragment ni is the float4
//                at ni * 2 D + tid, tid < 2 D), so that the staging stores in shared memory are
//                conflict-free and one bulk reduction adds the whole tile
struct DqRowMajor {
  static constexpr int kTileRows = 1;
  FLEXATTN_HD static int index(int r, int c, int D) { return r * D + c; }
};
template <int kHeadDim_>
struct DqTileSm90 {
  static constexpr int kTileRows = 64;
  static constexpr int kHeadDim = kHeadDim_;
  // Accumulator (fragment ni, register k) of thread tid = 128 wg + 32 warp + 4 g + t holds row
  // 16 warp + g + 8 (k / 2) and column 64 wg + 8 ni + 2 t + k % 2.
  FLEXATTN_HD static int index(int r, int c, int /*D*/) {
    const int wg = c / 64, ni = (c % 64) / 8, t = (c % 8) / 2;
    const int warp = r / 16, g = r % 8, half = (r % 16) / 8;
    const int tid = 128 * wg + 32 * warp + 4 * g + t;
    return (ni * 2 * kHeadDim + tid) * 4 + 2 * half + c % 2;
  }
};

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, int kSdpWarpsM_,
          int kDkvWarpsN_, int kDqWarpsM_, int kStagesQ_, int kStagesDo_, int kMinBlocksPerSm_>
struct BwdTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kStagesQ = kStagesQ_;
  static constexpr int kStagesDo = kStagesDo_;
  static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;

  // S / dP: warp tile (kSdpRows, kSdpCols)
  static constexpr int kSdpWarpsM = kSdpWarpsM_;
  static constexpr int kSdpRows = kBlockM / kSdpWarpsM;
  static constexpr int kSdpCols = kBlockN / (kNWarps / kSdpWarpsM);
  static constexpr int kSdpMI = kSdpRows / 16, kSdpNI = kSdpCols / 8;
  // dK / dV: warp tile (kDkvRows kv rows, kDkvCols head-dim columns)
  static constexpr int kDkvWarpsN = kDkvWarpsN_;
  static constexpr int kDkvRows = kBlockN / kDkvWarpsN;
  static constexpr int kDkvCols = kHeadDim / (kNWarps / kDkvWarpsN);
  static constexpr int kDkvMI = kDkvRows / 16, kDkvNI = kDkvCols / 8;
  // dQ: warp tile (kDqRows, kDqCols)
  static constexpr int kDqWarpsM = kDqWarpsM_;
  static constexpr int kDqRows = kBlockM / kDqWarpsM;
  static constexpr int kDqCols = kHeadDim / (kNWarps / kDqWarpsM);
  static constexpr int kDqMI = kDqRows / 16, kDqNI = kDqCols / 8;

  static constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks of 16-bit elements
  static constexpr int kPitch = kHeadDim + 8;         // elements, Q / dO / K / V rows
  static constexpr int kPitchS = kBlockN + 8;         // elements, P / dS rows
  // Element offsets of each region in the dynamic shared memory.
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + kBlockN * kPitch;
  static constexpr int kOffQ = kOffV + kBlockN * kPitch;
  static constexpr int kOffDo = kOffQ + kStagesQ * kBlockM * kPitch;
  static constexpr int kOffP = kOffDo + kStagesDo * kBlockM * kPitch;
  static constexpr int kOffDs = kOffP + kBlockM * kPitchS;
  static constexpr int kSmemElems = kOffDs + kBlockM * kPitchS;
  static constexpr int kSmemBytes = kSmemElems * 2;
  using DqLayout = DqRowMajor;
  static constexpr bool kDqFirstStores = false;  // element-wise atomics: zeroed accumulator

  static_assert(kHeadDim % 16 == 0 && kBlockN % 16 == 0 && kBlockM % 16 == 0, "k16 slices");
  static_assert(kNWarps % kSdpWarpsM == 0 && kNWarps % kDkvWarpsN == 0 &&
                    kNWarps % kDqWarpsM == 0,
                "warp splits");
  static_assert(kSdpRows % 16 == 0 && kDkvRows % 16 == 0 && kDqRows % 16 == 0, "m16 tiles");
  static_assert(kSdpNI % 2 == 0 && kDkvNI % 2 == 0 && kDqNI % 2 == 0,
                "B fragments load two n8 tiles at once");
  static_assert(kStagesQ == 1 || kStagesQ == 2, "Q stages");
  static_assert(kStagesDo == 1 || kStagesDo == 2, "dO stages");
};

template <int D>
struct BwdConfig;
template <>
struct BwdConfig<32> : BwdTraits<32, 64, 128, 8, 2, 4, 4, 2, 2, 1> {};
template <>
struct BwdConfig<64> : BwdTraits<64, 128, 128, 8, 2, 4, 4, 2, 1, 1> {};
template <>
struct BwdConfig<96> : BwdTraits<96, 64, 128, 8, 2, 4, 4, 2, 2, 1> {};
template <>
struct BwdConfig<128> : BwdTraits<128, 64, 128, 8, 2, 4, 2, 2, 1, 1> {};
template <>
struct BwdConfig<192> : BwdTraits<192, 64, 64, 8, 4, 4, 4, 2, 1, 1> {};
template <>
struct BwdConfig<256> : BwdTraits<256, 64, 64, 8, 4, 4, 4, 1, 1, 1> {};

// Everything the backward kernels read, resolved on the host. Strides in elements; lengths fit
// int (the functors take int indices). Workspaces are f32, [B, Hq, Lq_pad(, D)] contiguous.
struct BwdParams : MaskLists {  // the backward walks the transposed lists
  const void* q;
  const void* k;
  const void* v;
  const void* out;
  const void* dout;
  const float* lse;
  void* dq;
  void* dk;
  void* dv;
  int64_t q_sb, q_sh, q_sr;
  int64_t k_sb, k_sh, k_sr;
  int64_t v_sb, v_sh, v_sr;
  int64_t o_sb, o_sh, o_sr;
  int64_t do_sb, do_sh, do_sr;
  int64_t l_sb, l_sh, l_sr;
  int64_t dq_sb, dq_sh, dq_sr;
  int64_t dk_sb, dk_sh, dk_sr;
  int64_t dv_sb, dv_sh, dv_sr;
  int B, Hq, Hkv, group;  // group = Hq / Hkv
  int Lq, Lkv, D;
  int Lq_pad;             // rows of every workspace per (b, h): a multiple of BLOCK_M (and of
                          // block_q when the mask is walked sparsely)
  float scale;            // s = scale * q.k (natural units)
  float scale_log2;       // scale * log2(e)

  // workspaces
  float* dq_accum;        // [B, Hq, Lq_pad, D]  sum over kv tiles of dS K (unscaled)
  float* lse2;            // [B, Hq, Lq_pad]     lse * log2(e); +inf for empty rows and padding
  float* delta;           // [B, Hq, Lq_pad]     rowsum(dO * O); 0 on padding
  int* dq_sem;            // [B, Hq, Lq_pad / BLOCK_M] deterministic mode: dQ adds done per q tile
  int* dq_rank;           // [Bm, Hm, nqb, nkvb] deterministic + sparse: kernel kv tiles listed for
                          //   q-block qb after kv-block nb (their dQ adds come first)
  DqStallRecord* dq_stall;  // deterministic: where a stalled dQ order is reported (launch_record.h)

  bool sparse;            // false: mask blocks not multiples of the tiles; every q tile is
                          //   visited with mask_mod evaluated per element
  bool deterministic;
  bool dq_first_stores;   // deterministic, and the main kernel's first CTA in a q tile's order
                          //   stores its dQ tile instead of adding it: dq_accum is not zeroed,
                          //   and the postprocess writes zeros where no CTA came (dq_sem == 0)
  int num_n_tiles;        // kernel kv tiles: ceil(Lkv / BLOCK_N)
};

}  // namespace flexattn::detail::cuda
