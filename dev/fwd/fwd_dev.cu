// Development harness for the sm80 forward kernel (not part of the library build): checks
// launch_fwd_sm80 against a naive fp32 GPU reference on fresh random inputs (outputs poisoned with
// NaN first) and times it. Standalone: builds the block mask on the host, needs no libflexattn.
//   nvcc -std=c++20 -O3 -arch=sm_90 --expt-relaxed-constexpr -Iinclude dev/fwd/fwd_dev.cu
//   see main() for the build macros
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flexattn/detail/cuda/launch_fwd.cuh"
#include "flexattn/mods.h"

using namespace flexattn::detail::cuda;
using flexattn::Alibi, flexattn::CausalMask, flexattn::DocumentMask, flexattn::NoopMask,
    flexattn::NoopScore, flexattn::SlidingWindowMask, flexattn::Softcap;

#define CK(x) check((x), #x)

struct HostMask {
  int nqb, nkvb, bq, bkv;
  std::vector<int> kv_num, kv_idx, full_num, full_idx;
  double density = 0;  // kept fraction of the score matrix
};

template <class M>
HostMask build_mask(const M& m, int Lq, int Lkv, int bq, int bkv) {
  HostMask hm{(Lq + bq - 1) / bq, (Lkv + bkv - 1) / bkv, bq, bkv};
  hm.kv_num.assign(hm.nqb, 0);
  hm.full_num.assign(hm.nqb, 0);
  hm.kv_idx.assign((size_t)hm.nqb * hm.nkvb, 0);
  hm.full_idx.assign((size_t)hm.nqb * hm.nkvb, 0);
  double kept = 0;
  for (int qb = 0; qb < hm.nqb; ++qb) {
    for (int kb = 0; kb < hm.nkvb; ++kb) {
      const int q0 = qb * bq, q1 = std::min(Lq, q0 + bq), k0 = kb * bkv,
                k1 = std::min(Lkv, k0 + bkv);
      const flexattn::TileKind tk = flexattn::detail::tile_kind_of(m, 0, 0, q0, q1, k0, k1);
      long cnt = 0;
      if (tk == flexattn::TileKind::full) {
        cnt = (long)(q1 - q0) * (k1 - k0);
      } else if (tk != flexattn::TileKind::empty) {
        for (int q = q0; q < q1; ++q)
          for (int k = k0; k < k1; ++k) cnt += m(0, 0, q, k) ? 1 : 0;
      }
      kept += cnt;
      const long all = (long)(q1 - q0) * (k1 - k0);
      if (cnt == 0) continue;
      if (cnt == all) {
        hm.full_idx[(size_t)qb * hm.nkvb + hm.full_num[qb]++] = kb;
      } else {
        hm.kv_idx[(size_t)qb * hm.nkvb + hm.kv_num[qb]++] = kb;
      }
    }
  }
  hm.density = kept / ((double)Lq * Lkv);
  return hm;
}

template <class T>
__host__ __device__ T from_f(float x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16(x);
  else return __float2half(x);
}
template <class T>
__host__ __device__ float to_f(T x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(x);
  else return __half2float(x);
}

// Naive reference: one thread per (b, h, q) row, fp32, two passes over kv.
template <class T, class S, class M>
__global__ void ref_kernel(const T* q, const T* k, const T* v, float* out, float* lse, int B,
                           int Hq, int Hkv, int Lq, int Lkv, int D, float scale, S sm, M mm) {
  const long row = blockIdx.x * (long)blockDim.x + threadIdx.x;
  if (row >= (long)B * Hq * Lq) return;
  const int qi = row % Lq, h = (row / Lq) % Hq, b = row / ((long)Lq * Hq);
  const int hk = h / (Hq / Hkv);
  const T* qr = q + row * D;
  const T* kb = k + ((long)b * Hkv + hk) * Lkv * D;
  const T* vb = v + ((long)b * Hkv + hk) * Lkv * D;
  float mx = -INFINITY;
  for (int j = 0; j < Lkv; ++j) {
    if (!mm(b, h, qi, j)) continue;
    float d = 0;
    for (int c = 0; c < D; ++c) d += to_f(qr[c]) * to_f(kb[(long)j * D + c]);
    mx = fmaxf(mx, (float)sm(d * scale, b, h, qi, j));
  }
  float acc[256];
  for (int c = 0; c < D; ++c) acc[c] = 0;
  float sum = 0;
  for (int j = 0; j < Lkv; ++j) {
    if (!mm(b, h, qi, j)) continue;
    float d = 0;
    for (int c = 0; c < D; ++c) d += to_f(qr[c]) * to_f(kb[(long)j * D + c]);
    const float p = expf((float)sm(d * scale, b, h, qi, j) - mx);
    sum += p;
    for (int c = 0; c < D; ++c) acc[c] += p * to_f(vb[(long)j * D + c]);
  }
  for (int c = 0; c < D; ++c) out[row * D + c] = sum > 0 ? acc[c] / sum : 0.f;
  lse[row] = sum > 0 ? mx + logf(sum) : -INFINITY;
}

// What Softcap could compile to on the device: the division by cap as a multiply by its hoisted
// inverse, tanh(y) = 1 - 2 / (exp(2y) + 1) on the special-function unit (ex2 + rcp, ~1e-7 abs).
struct SoftcapFast {
  float cap;
  __host__ __device__ float operator()(float s, int, int, int, int) const {
#if defined(__CUDA_ARCH__)
    const float y = s * (1.0f / cap);
    float e, r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(y * 2.8853900817779268f));
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(e + 1.0f));
    return cap * (1.0f - 2.0f * r);
#else
    return cap * std::tanh(s / cap);
#endif
  }
};

// Fresh pseudo-random normal-ish values on the device (sum of 4 uniforms), for the big bench shapes.
template <class T>
__global__ void fill_random(T* x, long n, unsigned seed) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    unsigned h = (unsigned)i * 2654435761u ^ seed;
    float acc = 0;
    for (int r = 0; r < 4; ++r) {
      h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
      acc += (h & 0xffffff) / 16777216.0f - 0.5f;
    }
    x[i] = from_f<T>(acc * 1.7320508f);
  }
}

struct Shape {
  int B, Hq, Hkv, Lq, Lkv, D;
};

template <class T, int D, class S, class M>
float run_ours(const Shape& sh, const T* q, const T* k, const T* v, T* out, float* lse,
               const HostMask& hm, int* dmask, const S& sm, const M& mm, int reps) {
  FwdParams p{};
  p.q = q, p.k = k, p.v = v, p.out = out, p.lse = lse;
  p.q_sr = D, p.q_sh = (long)sh.Lq * D, p.q_sb = p.q_sh * sh.Hq;
  p.k_sr = D, p.k_sh = (long)sh.Lkv * D, p.k_sb = p.k_sh * sh.Hkv;
  p.v_sr = p.k_sr, p.v_sh = p.k_sh, p.v_sb = p.k_sb;
  p.o_sr = p.q_sr, p.o_sh = p.q_sh, p.o_sb = p.q_sb;
  p.l_sr = 1, p.l_sh = sh.Lq, p.l_sb = (long)sh.Lq * sh.Hq;
  p.Lq = sh.Lq, p.Lkv = sh.Lkv, p.group = sh.Hq / sh.Hkv;
  p.scale = 1.0f / std::sqrt((float)D);
  p.scale_log2 = p.scale * kLog2e;
  const size_t n1 = hm.nqb, n2 = (size_t)hm.nqb * hm.nkvb;
  p.kv_num = dmask, p.full_kv_num = dmask + n1, p.kv_idx = dmask + 2 * n1,
  p.full_kv_idx = dmask + 2 * n1 + n2;
  p.mask_b = 1, p.mask_h = 1, p.nqb = hm.nqb, p.nkvb = hm.nkvb, p.block_q = hm.bq,
  p.block_kv = hm.bkv;
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::vector<float> ts;
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(e0));
    launch_fwd_sm80<D, T>(p, sm, mm, sh.B, sh.Hq, nullptr);
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    ts.push_back(ms);
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

template <class T, int D, class S, class M>
bool check_one(const char* name, Shape sh, const S& sm, const M& mm_host, const M& mm_dev,
               std::mt19937& rng, bool bench_only = false, int reps = 1) {
  const long nq = (long)sh.B * sh.Hq * sh.Lq * D, nk = (long)sh.B * sh.Hkv * sh.Lkv * D;
  std::vector<T> hq(bench_only ? 0 : nq), hk(bench_only ? 0 : nk), hv(bench_only ? 0 : nk);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (auto& x : hq) x = from_f<T>(nd(rng));
  for (auto& x : hk) x = from_f<T>(nd(rng));
  for (auto& x : hv) x = from_f<T>(nd(rng));
  T *q, *k, *v, *o;
  float *lse, *ro, *rl;
  int* dm;
  CK(cudaMalloc(&q, nq * 2));
  CK(cudaMalloc(&k, nk * 2));
  CK(cudaMalloc(&v, nk * 2));
  CK(cudaMalloc(&o, nq * 2));
  CK(cudaMalloc(&lse, (long)sh.B * sh.Hq * sh.Lq * 4));
  if (bench_only) {
    fill_random<<<1024, 256>>>(q, nq, (unsigned)rng());
    fill_random<<<1024, 256>>>(k, nk, (unsigned)rng());
    fill_random<<<1024, 256>>>(v, nk, (unsigned)rng());
    CK(cudaGetLastError());
  } else {
    CK(cudaMemcpy(q, hq.data(), nq * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(k, hk.data(), nk * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(v, hv.data(), nk * 2, cudaMemcpyHostToDevice));
  }
  CK(cudaMemset(o, 0xff, nq * 2));  // NaN in f16 and bf16
  CK(cudaMemset(lse, 0xff, (long)sh.B * sh.Hq * sh.Lq * 4));
  const HostMask hm = build_mask(mm_host, sh.Lq, sh.Lkv, 128, 128);
  std::vector<int> all;
  all.insert(all.end(), hm.kv_num.begin(), hm.kv_num.end());
  all.insert(all.end(), hm.full_num.begin(), hm.full_num.end());
  all.insert(all.end(), hm.kv_idx.begin(), hm.kv_idx.end());
  all.insert(all.end(), hm.full_idx.begin(), hm.full_idx.end());
  CK(cudaMalloc(&dm, all.size() * 4));
  CK(cudaMemcpy(dm, all.data(), all.size() * 4, cudaMemcpyHostToDevice));
  const float ms = run_ours<T, D>(sh, q, k, v, o, lse, hm, dm, sm, mm_dev, reps);
  CK(cudaDeviceSynchronize());
  bool ok = true;
  if (bench_only) {
    const double flops = 4.0 * sh.B * sh.Hq * (double)sh.Lq * sh.Lkv * D * hm.density;
    printf("%-14s D=%3d B=%d H=%d L=%d  %.3f ms  %.1f TFLOP/s (density %.3f)\n", name, D, sh.B,
           sh.Hq, sh.Lq, ms, flops / ms / 1e9, hm.density);
  } else {
    CK(cudaMalloc(&ro, nq * 4));
    CK(cudaMalloc(&rl, (long)sh.B * sh.Hq * sh.Lq * 4));
    const long rows = (long)sh.B * sh.Hq * sh.Lq;
    ref_kernel<<<(rows + 127) / 128, 128>>>(q, k, v, ro, rl, sh.B, sh.Hq, sh.Hkv, sh.Lq, sh.Lkv,
                                            D, 1.0f / std::sqrt((float)D), sm, mm_dev);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<T> ho(nq);
    std::vector<float> hro(nq), hl(rows), hrl(rows);
    CK(cudaMemcpy(ho.data(), o, nq * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hro.data(), ro, nq * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hl.data(), lse, rows * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hrl.data(), rl, rows * 4, cudaMemcpyDeviceToHost));
    double num = 0, den = 0, lerr = 0;
    long bad = 0;
    for (long i = 0; i < nq; ++i) {
      const double a = to_f(ho[i]), r = hro[i];
      if (!std::isfinite(a)) ++bad;
      num += (a - r) * (a - r);
      den += r * r;
    }
    for (long i = 0; i < rows; ++i) {
      if (std::isinf(hrl[i]) || std::isinf(hl[i])) {
        if (hl[i] != hrl[i]) ++bad;
      } else {
        lerr = std::max(lerr, (double)std::fabs(hl[i] - hrl[i]));
        if (!std::isfinite(hl[i])) ++bad;
      }
    }
    const double rel = std::sqrt(num / std::max(den, 1e-30));
    ok = bad == 0 && rel < 1e-2 && lerr < 1e-2;
    printf("%-5s %-14s D=%3d B=%d Hq=%d Hkv=%d Lq=%5d Lkv=%5d  rel %.2e  lse %.2e  bad %ld\n",
           ok ? "ok" : "FAIL", name, D, sh.B, sh.Hq, sh.Hkv, sh.Lq, sh.Lkv, rel, lerr, bad);
    CK(cudaFree(ro));
    CK(cudaFree(rl));
  }
  CK(cudaFree(q));
  CK(cudaFree(k));
  CK(cudaFree(v));
  CK(cudaFree(o));
  CK(cudaFree(lse));
  CK(cudaFree(dm));
  return ok;
}

struct Docs {
  std::vector<int32_t> host;
  int32_t* dev = nullptr;
  Docs(int L, int ndocs) : host(L) {
    for (int i = 0; i < L; ++i) host[i] = (int)((long)i * ndocs / L);
    CK(cudaMalloc(&dev, L * 4));
    CK(cudaMemcpy(dev, host.data(), L * 4, cudaMemcpyHostToDevice));
  }
};

template <class T, int D>
bool check_dim(std::mt19937& rng) {
  bool ok = true;
  const Shape shapes[] = {{1, 2, 2, 1, 1, D},     {2, 4, 2, 17, 129, D}, {1, 2, 1, 127, 1000, D},
                          {1, 3, 3, 1000, 129, D}, {2, 2, 2, 257, 257, D}};
  for (const Shape& sh : shapes) {
    ok &= check_one<T, D>("noop", sh, NoopScore{}, NoopMask{}, NoopMask{}, rng);
    ok &= check_one<T, D>("causal", sh, NoopScore{}, CausalMask{}, CausalMask{}, rng);
    ok &= check_one<T, D>("sliding100", sh, NoopScore{}, SlidingWindowMask{100},
                          SlidingWindowMask{100}, rng);
    Docs docs(std::max(sh.Lq, sh.Lkv), 5);
    ok &= check_one<T, D>("document", sh, NoopScore{}, DocumentMask{docs.host.data()},
                          DocumentMask{docs.dev}, rng);
    ok &= check_one<T, D>("alibi_causal", sh, Alibi{sh.Hq}, CausalMask{}, CausalMask{}, rng);
    ok &= check_one<T, D>("softcap", sh, Softcap{5.0f}, NoopMask{}, NoopMask{}, rng);
    ok &= check_one<T, D>("softcapfast", sh, SoftcapFast{5.0f}, NoopMask{}, NoopMask{}, rng);
    cudaFree(docs.dev);
  }
  return ok;
}

template <class T, int D>
void bench_dim(int L, int B, int H, std::mt19937& rng) {
  const Shape sh{B, H, H, L, L, D};
  const int reps = 20;
  check_one<T, D>("noop", sh, NoopScore{}, NoopMask{}, NoopMask{}, rng, true, reps);
  check_one<T, D>("causal", sh, NoopScore{}, CausalMask{}, CausalMask{}, rng, true, reps);
  check_one<T, D>("sliding1024", sh, NoopScore{}, SlidingWindowMask{1024},
                  SlidingWindowMask{1024}, rng, true, reps);
  Docs docs(L, 16);
  check_one<T, D>("document16", sh, NoopScore{}, DocumentMask{docs.host.data()},
                  DocumentMask{docs.dev}, rng, true, reps);
  check_one<T, D>("alibi_causal", sh, Alibi{H}, CausalMask{}, CausalMask{}, rng, true, reps);
  check_one<T, D>("softcap30", sh, Softcap{30.0f}, NoopMask{}, NoopMask{}, rng, true, reps);
  check_one<T, D>("softcapfast30", sh, SoftcapFast{30.0f}, NoopMask{}, NoopMask{}, rng, true,
                  reps);
  cudaFree(docs.dev);
}

// One binary per head dim keeps each compile short (they build in parallel on the device):
//   -DDEV_CHECK_D=128 -DDEV_T=__nv_bfloat16   checks that head dim
//   -DDEV_BENCH                               times D=128 and D=64 (argv: D L B H)
int main(int argc, char** argv) {
  std::mt19937 rng(1234);
#if defined(DEV_CHECK_D)
  const bool ok = check_dim<DEV_T, DEV_CHECK_D>(rng);
  printf(ok ? "ALL OK D=%d\n" : "SOME FAILED D=%d\n", DEV_CHECK_D);
  return ok ? 0 : 1;
#else
  const int D = argc > 1 ? atoi(argv[1]) : 128;
  const int L = argc > 2 ? atoi(argv[2]) : 16384;
  const int B = argc > 3 ? atoi(argv[3]) : 1;
  const int H = argc > 4 ? atoi(argv[4]) : 16;
  if (D == 64) bench_dim<__nv_bfloat16, 64>(L, B, H, rng);
  else bench_dim<__nv_bfloat16, 128>(L, B, H, rng);
  return 0;
#endif
}
