// Non-template elementwise primitives of the CPU backward pass (src/cpu/bwd_kernels.cpp), compiled
// once inside the library with an AVX-512 variant chosen at run time (the same choice as the tile
// products in kernels.h, so FLEXATTN_CPU_ISA narrows both). The attention_bwd.h template, which a
// user's translation unit instantiates without ISA flags, calls these for the vector work of a tile.
//
// Every routine is deterministic: the same inputs give the same bits on a given machine, whatever
// thread calls it.
#pragma once

#include <cstdint>

namespace flexattn::detail::cpu {

// Probabilities of an M x N score tile, in place: s[m][n] = exp(scale * s[m][n] - lse[m]).
// A row with lse[m] = -inf (every key masked) becomes all zeros: the -inf - -inf NaN trap is
// handled here, not by the caller. s = -inf (a masked score, with scale > 0) gives exactly 0.
void bwd_probs(float* s, int64_t lds, int M, int N, const float* lse, float scale);

// Score gradients of an M x N tile, in place over the probabilities:
//   p[m][n] = scale * p[m][n] * (dp[m][n] - delta[m])          (g == nullptr)
//   p[m][n] = scale * p[m][n] * (dp[m][n] - delta[m]) * g[m][n] where p != 0, else 0
// g is d(score_mod)/d(score); it is ignored where p == 0 so an inf/NaN derivative at a masked or
// underflowed score cannot leak into the gradients.
void bwd_dscores(float* p, int64_t ldp, const float* dp, int64_t lddp, const float* g, int64_t ldg,
                 int M, int N, const float* delta, float scale);

// y[i] += x[i]
void bwd_add(float* y, const float* x, int64_t n);

}  // namespace flexattn::detail::cpu
