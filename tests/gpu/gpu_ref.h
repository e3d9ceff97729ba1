// The naive same-precision attention that calibrates the GPU tests' tolerance.
//
// naive_attention() is the textbook algorithm as a framework runs it in f16/bf16 (FlashAttention's
// test reference with upcast=False): every matmul, the score_mod and the softmax produce values
// rounded to the low dtype (fp32-or-better accumulation inside). Its error against the float64
// oracle (reference/reference.h) sets the bound: GPU error <= k x naive error + atol.
// The score_mod derivative is a central difference in double, as in the oracle.
//
// Work is split over (batch, kv head) groups on host threads: each task owns the dK/dV rows of its
// kv head, so GQA's reduction over query heads needs no locking.
#pragma once

#include <flexattn/flexattn.h>

#include "reference/helpers.h"
#include "reference/reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

namespace flexattn::gpu_test {

// Naive results in the layouts of the tensors: [B,H,L,D] and lse [B,Hq,Lq]. Needs Dv == D.
struct NaiveResult {
  std::vector<double> out, lse, dq, dk, dv;
};

// Runs fn(i) for i in [0, n) on up to hardware_concurrency threads.
template <class F>
void parallel_tasks(int64_t n, F&& fn) {
  const int64_t workers =
      std::max<int64_t>(1, std::min<int64_t>(n, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int64_t w = 0; w < workers; ++w) {
    pool.emplace_back([&, w] {
      for (int64_t i = w; i < n; i += workers) fn(i);
    });
  }
  for (auto& t : pool) t.join();
}

// q/k/v/dout: host copies (already rounded to the dtype the GPU saw), contiguous [B,H,L,D].
// dout may be empty: then only the forward is computed.
template <class ScoreMod, class MaskMod>
NaiveResult naive_attention(const reference::Shape& s, float scale, const std::vector<float>& q,
                            const std::vector<float>& k, const std::vector<float>& v,
                            const std::vector<float>& dout, const ScoreMod& score_mod,
                            const MaskMod& mask_mod, DType dt) {
  auto rnd = [&](double x) { return double(reference::round_to(dt, float(x))); };
  const bool bwd = !dout.empty();
  const int64_t D = s.D, Lq = s.Lq, Lkv = s.Lkv, G = s.Hq / s.Hkv;
  NaiveResult r;
  r.out.assign(size_t(s.B * s.Hq * Lq * D), 0.0);
  r.lse.assign(size_t(s.B * s.Hq * Lq), 0.0);
  if (bwd) {
    r.dq.assign(r.out.size(), 0.0);
    r.dk.assign(size_t(s.B * s.Hkv * Lkv * D), 0.0);
    r.dv.assign(r.dk.size(), 0.0);
  }
  const double ninf = -std::numeric_limits<double>::infinity();

  parallel_tasks(s.B * s.Hkv, [&](int64_t task) {
    const int64_t b = task / s.Hkv, hk = task % s.Hkv;
    const float* K = &k[size_t((b * s.Hkv + hk) * Lkv * D)];
    const float* V = &v[size_t((b * s.Hkv + hk) * Lkv * D)];
    std::vector<double> dk_acc(size_t(Lkv * D), 0.0), dv_acc(size_t(Lkv * D), 0.0);
    std::vector<double> raw(static_cast<size_t>(Lkv)), p(raw.size()), dp(raw.size());
    std::vector<char> keep(raw.size());
    for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
      for (int64_t i = 0; i < Lq; ++i) {
        const size_t row = size_t((b * s.Hq + h) * Lq + i);
        const float* Q = &q[row * size_t(D)];
        // scores: raw (before score_mod, for its derivative) and modified
        double m = ninf;
        for (int64_t j = 0; j < Lkv; ++j) {
          keep[size_t(j)] = mask_mod(int(b), int(h), int(i), int(j)) ? 1 : 0;
          if (!keep[size_t(j)]) continue;
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) dot += double(Q[d]) * double(K[j * D + d]);
          raw[size_t(j)] = rnd(rnd(dot) * scale);
          p[size_t(j)] = rnd(double(score_mod(raw[size_t(j)], int(b), int(h), int(i), int(j))));
          m = std::max(m, p[size_t(j)]);
        }
        if (m == ninf) {  // every key masked: out 0, lse -inf, no gradient flows
          r.lse[row] = ninf;
          continue;
        }
        double sum = 0.0;
        for (int64_t j = 0; j < Lkv; ++j) {
          p[size_t(j)] = keep[size_t(j)] ? std::exp(p[size_t(j)] - m) : 0.0;
          sum += p[size_t(j)];
        }
        r.lse[row] = m + std::log(sum);
        for (int64_t j = 0; j < Lkv; ++j) p[size_t(j)] = rnd(p[size_t(j)] / sum);
        double* O = &r.out[row * size_t(D)];
        for (int64_t j = 0; j < Lkv; ++j) {
          if (p[size_t(j)] == 0.0) continue;
          for (int64_t d = 0; d < D; ++d) O[d] += p[size_t(j)] * double(V[j * D + d]);
        }
        for (int64_t d = 0; d < D; ++d) O[d] = rnd(O[d]);
        if (!bwd) continue;

        // backward of this row: dP = dO.V^T, dS = P (dP - rowsum(P dP)), chain through score_mod
        const float* dO = &dout[row * size_t(D)];
        double delta = 0.0;
        for (int64_t j = 0; j < Lkv; ++j) {
          if (!keep[size_t(j)]) continue;
          double acc = 0.0;
          for (int64_t d = 0; d < D; ++d) acc += double(dO[d]) * double(V[j * D + d]);
          dp[size_t(j)] = rnd(acc);
          delta += p[size_t(j)] * dp[size_t(j)];
        }
        double* dQ = &r.dq[row * size_t(D)];
        for (int64_t j = 0; j < Lkv; ++j) {
          if (!keep[size_t(j)]) continue;
          const double ds_mod = rnd(p[size_t(j)] * (dp[size_t(j)] - delta));
          const double x = raw[size_t(j)];
          const double hstep = 1e-5 * (1.0 + std::fabs(x));
          const double deriv = (double(score_mod(x + hstep, int(b), int(h), int(i), int(j))) -
                                double(score_mod(x - hstep, int(b), int(h), int(i), int(j)))) /
                               (2.0 * hstep);
          const double ds = rnd(rnd(ds_mod * deriv) * scale);
          for (int64_t d = 0; d < D; ++d) {
            dQ[d] += ds * double(K[j * D + d]);
            dk_acc[size_t(j * D + d)] += ds * double(Q[d]);
            dv_acc[size_t(j * D + d)] += p[size_t(j)] * double(dO[d]);
          }
        }
        for (int64_t d = 0; d < D; ++d) dQ[d] = rnd(dQ[d]);
      }
    }
    if (bwd) {
      const size_t base = size_t((b * s.Hkv + hk) * Lkv * D);
      for (size_t e = 0; e < dk_acc.size(); ++e) {
        r.dk[base + e] = rnd(dk_acc[e]);
        r.dv[base + e] = rnd(dv_acc[e]);
      }
    }
  });
  return r;
}

}  // namespace flexattn::gpu_test
