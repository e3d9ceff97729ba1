// Products in which a masked (q, kv) pair must add exactly nothing (issue 8, item 8): O += P V in
// the forward and dQ = dS K in the backward, where P = 0 and dS = 0 at masked pairs but the key's
// V or K may hold garbage - a paged KV cache's unused rows, NaN or inf - and a tensor core computes
// 0 * NaN = NaN. (S = Q K^T is safe: masking overwrites the scores; dK += dS^T Q and dV += P^T dO
// see only the query side; dP = dO V^T is cleaned by the select in bwd::dscore.)
//
// The fast paths stay as they are. Only tiles that can hold a masked pair (partial or ragged) are
// checked, cheaply: the forward tests the V tile it is about to multiply for non-finite elements
// (tile_has_nonfinite, one pass over shared memory shared out among threads: sm80 combines it in
// the barrier the kernel takes anyway, sm90 has idle loader warps do it ahead of the math warps);
// the backward tests its fresh dQ accumulator (any_nonfinite). A hit sends that tile through the
// exact form here, scalar FMAs that skip every zero of P / dS. It is slow (about a hundred times
// the tensor-core product) and runs only where garbage sits: finite garbage (stale rows, zeros)
// never gets here.
//
// Fragments use the C layout of utils.cuh: register (mi, ni, r) of lane (g = lane / 4, t = lane % 4)
// is row 16 mi + g + 8 (r / 2), column 8 ni + 2 t + r % 2 of the warp's tile.
#pragma once

#include "../device_std.h"

#include "utils.cuh"

namespace flexattn::detail::cuda {

// Whether one of the 16-bit values in `w` is NaN or inf (its exponent bits all set).
template <class T>
FLEXATTN_DEV bool has_nonfinite(uint4 w) {
  static_assert(is_half_type<T>, "has_nonfinite: T is __half or __nv_bfloat16");
  constexpr uint32_t e = fstd::is_same_v<T, __half> ? 0x7c00u : 0x7f80u;
  auto bad = [](uint32_t x) { return (x & e) == e || ((x >> 16) & e) == e; };
  return bad(w.x) || bad(w.y) || bad(w.z) || bad(w.w);
}

// This thread's share of a tile in shared memory (`bytes`, a multiple of 16 * threads): chunks
// part, part + threads, ... Combine the threads' answers before use.
template <class T>
FLEXATTN_DEV bool tile_has_nonfinite(const unsigned char* tile, int bytes, int part, int threads) {
  bool bad = false;
  for (int i = part; i < bytes / 16; i += threads) {
    bad = bad || has_nonfinite<T>(reinterpret_cast<const uint4*>(tile)[i]);
  }
  return bad;
}

// Whether any lane of the warp holds a NaN or inf accumulator (x * 0 is 0 unless x is not finite).
template <int MI, int NI>
FLEXATTN_DEV bool any_nonfinite(const float (&acc)[MI][NI][4]) {
  float z = 0.0f;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) z = fmaf(acc[mi][ni][r], 0.0f, z);
  return __any_sync(0xffffffffu, z != z);
}

// o += P V over the kv tile, skipping p == 0: P the warp's probabilities (MT x NT fragments, the
// scores' layout), v_at(kv, col) one element of the V tile as a float. Warp-uniform call: P moves
// between the lanes of a quad by shuffles, one kv column at a time; each V element is read once
// per m16 tile and used at once (few registers beside O and P).
template <int MT, int NT, int NTO, class VAt>
FLEXATTN_DEV void add_pv_exact(float (&o)[MT][NTO][4], const float (&p)[MT][NT][4],
                               const VAt& v_at) {
  const int lane = static_cast<int>(threadIdx.x % 32), t = lane % 4, quad = lane & ~3;
#pragma unroll
  for (int ni = 0; ni < NT; ++ni) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
#pragma unroll 1
      for (int src = 0; src < 4; ++src) {  // the quad lane that holds column kv
        const int kv = ni * 8 + 2 * src + c;
#pragma unroll
        for (int mi = 0; mi < MT; ++mi) {
          const float p0 = __shfl_sync(0xffffffffu, p[mi][ni][c], quad | src);
          const float p1 = __shfl_sync(0xffffffffu, p[mi][ni][2 + c], quad | src);
          if (p0 == 0.0f && p1 == 0.0f) continue;
#pragma unroll
          for (int nd = 0; nd < NTO; ++nd) {
#pragma unroll
            for (int cc = 0; cc < 2; ++cc) {
              const float x = v_at(kv, nd * 8 + 2 * t + cc);
              if (p0 != 0.0f) o[mi][nd][cc] = fmaf(p0, x, o[mi][nd][cc]);
              if (p1 != 0.0f) o[mi][nd][2 + cc] = fmaf(p1, x, o[mi][nd][2 + cc]);
            }
          }
        }
      }
    }
  }
}

// sum over j < n of a_at(j) * b_at(j), skipping j where a == 0 (one element of dQ = dS K: a row
// of dS, a column of K, from shared memory as floats). Scalar, rolled: few registers, slow.
template <class AAt, class BAt>
FLEXATTN_DEV float exact_dot(int n, const AAt& a_at, const BAt& b_at) {
  float acc = 0.0f;
#pragma unroll 1
  for (int j = 0; j < n; ++j) {
    const float a = a_at(j);
    if (a != 0.0f) acc = fmaf(a, b_at(j), acc);
  }
  return acc;
}

}  // namespace flexattn::detail::cuda
