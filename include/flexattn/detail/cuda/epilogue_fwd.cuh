// Forward epilogue: one warp writes its rows of out (normalised O, in q's dtype) and lse.
//
// The C fragments hold 2 scattered columns per lane; written straight to global memory they would
// be 4-byte stores 8 rows apart. They are staged through shared memory instead (the warp's own
// rows of the Q tile, which only this warp read) and leave as 16-byte stores, a row's chunks on
// consecutive lanes. Rows past Lq are not written. The staging layout is the kernel's Q layout:
//   PaddedRows<kPitch>         the sm80 kernel's rows padded to an odd number of 16-byte chunks
//   Swizzled128<kTileRows>     the sm90 kernel's 128-byte swizzle (wgmma.cuh), column blocks of 64
//                              elements kTileRows rows apart; the warp's first row must be a
//                              multiple of 8 (the swizzle phase)
// Both put the 8 rows g = 0..7 of one fragment store in distinct bank groups: no conflicts.
#pragma once

#include "utils.cuh"

namespace flexattn::detail::cuda {

template <int kPitch>
struct PaddedRows {
  // Element offset of (row r, column c) from the warp's first row; c % 8 + 2 <= 8 for a pair.
  FLEXATTN_DEV static int offset(int r, int c) { return r * kPitch + c; }
};

template <int kTileRows>
struct Swizzled128 {
  FLEXATTN_DEV static int offset(int r, int c) {
    return (c / 64) * kTileRows * 64 + r * 64 + ((((c % 64) / 8) ^ (r % 8)) * 8) + c % 8;
  }
};

// o: normalised accumulators of this warp's kRowsPerWarp rows; lse: natural log per lane row.
// s_rows: the warp's first row of the staging tile; out_rows: pointer to global row `row0` of out
// (row stride o_sr); lse_rows: pointer to lse[row0] (stride l_sr).
template <class T, int kRowsPerWarp, int kHeadDim, class Staging, int MT, int NTO>
FLEXATTN_DEV void store_out_lse(const float (&o)[MT][NTO][4], const float (&lse)[2 * MT],
                                T* s_rows, T* out_rows, int64_t o_sr, float* lse_rows,
                                int64_t l_sr, int rows_left) {
  const int lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = mi * 16 + g + 8 * half;
#pragma unroll
      for (int nd = 0; nd < NTO; ++nd) {
        *reinterpret_cast<uint32_t*>(s_rows + Staging::offset(r, nd * 8 + 2 * t)) =
            thread::pack2<T>(o[mi][nd][2 * half], o[mi][nd][2 * half + 1]);
      }
    }
  }
  __syncwarp();
  // Shared -> global, 16 bytes a lane.
  constexpr int kChunks = kHeadDim / 8;
  constexpr int kIters = kRowsPerWarp * kChunks / 32;
  static_assert((kRowsPerWarp * kChunks) % 32 == 0, "output rows split evenly over a warp");
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int idx = it * 32 + lane;
    const int r = idx / kChunks, c = idx % kChunks;
    if (r < rows_left) {
      *reinterpret_cast<uint4*>(out_rows + r * o_sr + c * 8) =
          *reinterpret_cast<const uint4*>(s_rows + Staging::offset(r, c * 8));
    }
  }
  if (t == 0) {
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = mi * 16 + g + 8 * half;
        if (r < rows_left) lse_rows[r * l_sr] = lse[2 * mi + half];
      }
    }
  }
}

}  // namespace flexattn::detail::cuda
