// Tile shapes of the Hopper (sm_90a) forward kernel and the tensor maps it is launched with.
//
// Roles (FlashAttention-3's warp specialisation): warpgroup 0 loads - one thread issues the
// tensor-memory-access copies of Q and of each K / V tile into a ring of shared-memory stages,
// and warps 1-3 check the V tiles of partial kv tiles for NaN / inf (masked_products.cuh);
// warpgroups 1 and 2 compute, each owning 64 query rows (the M of one wgmma) for the whole kernel.
// Loader and math warpgroups meet only at mbarriers: `full` (the copy landed) and `empty` (every
// math warp is done reading the stage), so the two math warpgroups drift apart freely and one's
// softmax overlaps the other's matrix products.
//
// Registers: S (64 x BLOCK_N) is BLOCK_N / 2 floats per thread, O (64 x D) D / 2, P in 16 bits
// BLOCK_N / 4; the loader warpgroup (the copies and the V checker) keeps 24 registers and hands
// the rest to the math warpgroups (24 x 128 + 240 x 256 = 64512 of the SM's 65536). ptxas fits D = 128 with BLOCK_N = 128 in
// the 168 of the entry cap already, without spills, for every stock variant. One CTA per SM.
//
// Shared memory: Q (128 x D) + stages x (K + V) (BLOCK_N x D each), 128-byte swizzled
// (wgmma.cuh), plus 1 KB of alignment slack and the barriers.
//  D    BLOCK_M x BLOCK_N  stages  smem
//  64   128 x 128          2       81 KB
//  128  128 x 128          2       161 KB  (BLOCK_N = 128 matches the default BlockMask blocks)
// Other head dims take the sm80 kernel on Hopper too.
#pragma once

#include "kernel_traits_fwd.cuh"
#include "tensor_map.h"

namespace flexattn::detail::cuda {

template <int kHeadDim_, int kBlockN_, int kStages_>
struct FwdTraitsSm90 {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kMathWarpgroups = 2;
  static constexpr int kMathWarps = 4 * kMathWarpgroups;
  static constexpr int kNThreads = 128 * (1 + kMathWarpgroups);
  // HAZARD: the launch gives every thread 168 registers (65536 / 384, rounded down to 8): the
  // math warpgroups can claim only what the loader warpgroup gives back, 128 x (168 - 24) =
  // 256 x (240 - 168). A larger loader share leaves the math warps waiting in setmaxnreg forever.
  static constexpr int kLoaderRegs = 24;
  static constexpr int kMathRegs = 240;
  static constexpr int kRowsPerWarpgroup = 64;
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kKvBytes = kBlockN * kHeadDim * 2;  // one K or one V stage
  static constexpr int kOffK = kQBytes;
  static constexpr int kOffV = kOffK + kStages * kKvBytes;
  static constexpr int kOffBars = kOffV + kStages * kKvBytes;
  // q_full, k_full / k_empty / v_full / v_empty / v_checked per stage
  static constexpr int kNumBars = 1 + 5 * kStages;
  static constexpr int kOffVBad = kOffBars + 8 * kNumBars;  // per stage: the V checker's answer
  static constexpr int kSmemBytes = 1024 + kOffVBad + 4 * kStages;

  static_assert(kHeadDim % 64 == 0, "head dim in 64-element column blocks");
  static_assert(kBlockN == 64 || kBlockN == 128, "wgmma N of S = Q K^T");
  static_assert(kHeadDim == 64 || kHeadDim == 128, "wgmma N of O = P V");
  static_assert(kLoaderRegs * 128 + kMathRegs * 128 * kMathWarpgroups <= 65536, "register file");
};

template <int D>
struct FwdConfigSm90 {
  static constexpr bool kAvailable = false;
};
template <>
struct FwdConfigSm90<64> : FwdTraitsSm90<64, 128, 2> {
  static constexpr bool kAvailable = true;
};
template <>
struct FwdConfigSm90<128> : FwdTraitsSm90<128, 128, 2> {
  static constexpr bool kAvailable = true;
};

// The copies' descriptions, passed by value as a __grid_constant__ kernel parameter (the copy
// unit reads them from the parameter space).
struct FwdTileMaps {
  CUtensorMap q, k, v;
};

}  // namespace flexattn::detail::cuda
