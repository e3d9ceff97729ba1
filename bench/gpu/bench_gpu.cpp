// flexattn's side of the GPU peer benchmark (bench/gpu_peers.py times the peers, bench/merge_gpu.py
// puts both in one table). Host-compiled: the stock variants run the library's prebuilt kernels,
// the very code a user's .cu instantiates for the same functors.
//
//   flexattn_bench_gpu [--quick] [--csv PATH] [--dims 64,128] [--lens 16384,8192,2048]
//                      [--tokens 16384] [--heads 16] [--variants noop,causal,...] [--no-bwd]
//                      [--no-mask-build] [--no-front-door] [--budget-s 240] [--bwd-modes det,nd]
//                      [--rows prefill,decode] [--decode-variants noop,sliding_window]
//                      [--no-runtime]
//
// Per (variant, D, L) with B = tokens / L, H = heads, bf16: forward, backward (the default,
// deterministic) and backward with deterministic = false, each the median of CUDA-event timings
// after warm-up, on random non-zero inputs; inputs rotate over several sets when one set would fit
// in L2. TFLOP/s count 4*B*H*L^2*D*density forward and 2.5x that backward (design.md section 4),
// density = kept fraction of the score matrix. Also the GPU create_block_mask time at L=16384.
// Rows fwd / bwd time the *_into layer on caller-owned buffers; fwd_front / bwd_front time the
// front door (flex_attention / flex_attention_backward returning fresh tensors) on the same inputs.
//
// Runtime twins (issue 11): the variants that stock_variants.h also writes as source are timed a
// second time as RuntimeScoreMod / RuntimeMaskMod (NVRTC-compiled, same kernels): dirs fwd_rt,
// fwd_front_rt, bwd_rt, bwd_nd_rt, bwd_front_rt; merge_gpu.py tables them against the compiled-in
// rows (issue 11's target: within 3%). --no-runtime leaves them out.
//
// Decode rows (--rows decode; issue 9's H200 shapes, fixed, see bench_decode): Lq = 1 through the
// front door, on contiguous K/V and on a PagedKV, timed the same way; their figure is the K/V
// read bandwidth, TB/s = bytes of the K and V rows attended / time. --rows picks prefill (the
// variants x shapes above), decode, or both (the default); --quick changes only the prefill rows.
// Each decode row also prints the GPU's own time per call (calls queued behind a held stream, so
// the host's validation, allocation and launches are out of it) and the host's enqueue time.
#include <cuda_runtime.h>
#include <flexattn/flexattn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "tools/stock_variants.h"

namespace fa = flexattn;
namespace gt = flexattn::stock;

namespace {

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

struct Args {
  std::vector<int> dims = {128, 64};
  std::vector<int64_t> lens = {16384, 8192, 2048};
  int64_t tokens = 16384;
  int64_t heads = 16;
  std::vector<std::string> variants = gt::bench_variants();
  bool bwd = true, mask_build = true, front_door = true;
  bool runtime = true;  // --no-runtime: no rows of the runtime twins (issue 11)
  std::vector<std::string> bwd_modes = {"det", "nd"};  // deterministic, non-deterministic
  double budget_s = 240.0;
  std::string csv;
  bool prefill = true, decode = true;  // --rows
  std::vector<std::string> decode_variants = {"noop", "sliding_window"};  // the decode rows kept
};

template <class T>
std::vector<T> split_list(const std::string& s) {
  std::vector<T> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if constexpr (std::is_same_v<T, std::string>) {
      out.push_back(item);
    } else {
      out.push_back(T(std::stoll(item)));
    }
  }
  return out;
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument("missing value after " + s);
      return argv[++i];
    };
    if (s == "--quick") {
      a.dims = {128};
      a.lens = {16384};
    } else if (s == "--csv") {
      a.csv = next();
    } else if (s == "--dims") {
      a.dims = split_list<int>(next());
    } else if (s == "--lens") {
      a.lens = split_list<int64_t>(next());
    } else if (s == "--tokens") {
      a.tokens = std::stoll(next());
    } else if (s == "--heads") {
      a.heads = std::stoll(next());
    } else if (s == "--variants") {
      a.variants = split_list<std::string>(next());
    } else if (s == "--no-bwd") {
      a.bwd = false;
    } else if (s == "--bwd-modes") {
      a.bwd_modes = split_list<std::string>(next());
      for (const auto& m : a.bwd_modes) {
        if (m != "det" && m != "nd") throw std::invalid_argument("--bwd-modes takes det and nd");
      }
    } else if (s == "--no-runtime") {
      a.runtime = false;
    } else if (s == "--no-front-door") {
      a.front_door = false;
    } else if (s == "--no-mask-build") {
      a.mask_build = false;
    } else if (s == "--budget-s") {
      a.budget_s = std::stod(next());
    } else if (s == "--decode-variants") {
      a.decode_variants = split_list<std::string>(next());
    } else if (s == "--rows") {
      a.prefill = a.decode = false;
      for (const auto& r : split_list<std::string>(next())) {
        if (r == "prefill") a.prefill = true;
        else if (r == "decode") a.decode = true;
        else throw std::invalid_argument("--rows takes prefill and decode; got " + r);
      }
    } else {
      throw std::invalid_argument("unknown argument " + s);
    }
  }
  return a;
}

// Median over reps of the mean time of `inner` back-to-back calls between two CUDA events; `inner`
// makes each sample >= 2 ms so launch overhead hides behind queued work (as in gpu_peers.py).
// fn(i) runs call i (i picks the rotating input set).
double median_ms(const std::function<void(int)>& fn, int warmup = 3, double target_ms = 300.0,
                 int min_reps = 5, int max_reps = 30) {
  cudaEvent_t a, b;
  cuda_check(cudaEventCreate(&a), "cudaEventCreate");
  cuda_check(cudaEventCreate(&b), "cudaEventCreate");
  int call = 0;
  for (int i = 0; i < warmup; ++i) fn(call++);
  cuda_check(cudaDeviceSynchronize(), "warm-up");
  auto sample = [&](int inner) {
    cuda_check(cudaEventRecord(a, nullptr), "cudaEventRecord");
    for (int i = 0; i < inner; ++i) fn(call++);
    cuda_check(cudaEventRecord(b, nullptr), "cudaEventRecord");
    cuda_check(cudaEventSynchronize(b), "cudaEventSynchronize");
    float ms = 0.0f;
    cuda_check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
    return double(ms) / inner;
  };
  const double est = std::max(sample(1), 1e-3);
  const int inner = std::max(1, int(std::ceil(2.0 / est)));
  const int reps = std::clamp(int(target_ms / (est * inner)), min_reps, max_reps);
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) t.push_back(sample(inner));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

// The GPU's own time per call, without the host: a host function holds the stream for 100 ms
// while `calls` calls are enqueued behind it, so they then run back to back; returns
// {GPU ms per call, host enqueue us per call}. Where the eager median_ms is well above the
// first, a call is bound by its host side (validation, allocation, launches), not the kernels.
std::pair<double, double> queued_ms(const std::function<void(int)>& fn, int calls) {
  cudaEvent_t a, b;
  cuda_check(cudaEventCreate(&a), "cudaEventCreate");
  cuda_check(cudaEventCreate(&b), "cudaEventCreate");
  cuda_check(cudaLaunchHostFunc(
                 nullptr,
                 [](void*) {
                   const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
                   while (std::chrono::steady_clock::now() < until) {
                   }
                 },
                 nullptr),
             "cudaLaunchHostFunc");
  cuda_check(cudaEventRecord(a, nullptr), "cudaEventRecord");
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) fn(i);
  const double host_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  cuda_check(cudaEventRecord(b, nullptr), "cudaEventRecord");
  cuda_check(cudaEventSynchronize(b), "cudaEventSynchronize");
  float ms = 0.0f;
  cuda_check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return {double(ms) / calls, host_us / calls};
}

// Random values ~ uniform with unit variance, never all zero; xorshift keeps 100M values cheap.
std::vector<float> random_host(size_t n, uint64_t seed) {
  std::vector<float> x(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& e : x) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    e = (float(s >> 40) / float(1 << 24) - 0.5f) * 3.4641016f;
  }
  return x;
}

// One CSV row. Prefill: L = Lq = Lkv, H = Hq = Hkv, tbps 0. Decode: L = Lkv, H = Hq, Hkv its
// own column, tbps the K/V read bandwidth; tflops counts 4 * B * Hq * keys * D there.
struct Row {
  std::string variant;
  int D = 0;
  int64_t L = 0, B = 0, H = 0;
  std::string dir;
  double ms = 0.0, tflops = 0.0, density = 0.0;
  int64_t Hkv = 0;  // 0: H
  double tbps = 0.0;
};

class CsvOut {
 public:
  explicit CsvOut(const std::string& path) : f_(path.empty() ? nullptr : std::fopen(path.c_str(), "w")) {
    if (!path.empty() && !f_) throw std::runtime_error("cannot write " + path);
    if (f_) std::fprintf(f_, "impl,variant,D,L,B,H,dir,ms,tflops,density,hkv,tbps\n");
  }
  ~CsvOut() {
    if (f_) std::fclose(f_);
  }
  void comment(const std::string& s) {
    if (f_) std::fprintf(f_, "# %s\n", s.c_str());
  }
  void add(const Row& r) {
    const int64_t hkv = r.Hkv ? r.Hkv : r.H;
    if (r.tbps > 0.0) {
      std::printf("ours  %-15s D=%-3d L=%-6lld B=%-3lld Hkv=%-2lld %-15s %9.4f ms %6.2f TB/s\n",
                  r.variant.c_str(), r.D, (long long)r.L, (long long)r.B, (long long)hkv,
                  r.dir.c_str(), r.ms, r.tbps);
    } else {
      std::printf("ours  %-15s D=%-3d L=%-6lld B=%-3lld %-10s %9.3f ms %8.1f TFLOP/s\n",
                  r.variant.c_str(), r.D, (long long)r.L, (long long)r.B, r.dir.c_str(), r.ms,
                  r.tflops);
    }
    std::fflush(stdout);
    if (f_) {
      std::fprintf(f_, "ours,%s,%d,%lld,%lld,%lld,%s,%.6f,%.3f,%.6f,%lld,%.4f\n",
                   r.variant.c_str(), r.D, (long long)r.L, (long long)r.B, (long long)r.H,
                   r.dir.c_str(), r.ms, r.tflops, r.density, (long long)hkv, r.tbps);
      std::fflush(f_);
    }
  }

 private:
  std::FILE* f_;
};

// One (D, L) shape: input sets on the GPU plus output buffers, shared by every variant.
struct ShapeBufs {
  int64_t B, H, L, D;
  std::vector<fa::Tensor> q, k, v, dout, out, lse;
  fa::Tensor dq, dk, dv;
};

ShapeBufs make_shape(int64_t B, int64_t H, int64_t L, int64_t D, size_t l2_bytes) {
  ShapeBufs s{B, H, L, D, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  const std::vector<int64_t> shape = {B, H, L, D};
  const size_t n = size_t(B * H * L * D);
  const size_t set_bytes = 3 * n * 2;  // q, k, v in bf16
  // Rotate over enough sets that one call's inputs are out of L2 when the next set is read.
  const int sets = set_bytes >= l2_bytes ? 1 : int(std::min<size_t>(4, 3 * l2_bytes / set_bytes + 1));
  for (int i = 0; i < sets; ++i) {
    for (auto* vec : {&s.q, &s.k, &s.v, &s.dout}) {
      const auto x = random_host(n, uint64_t(vec->size() + 1) * 1000 + uint64_t(i) * 7 + uint64_t(D));
      vec->push_back(fa::Tensor::from_host(x.data(), shape, fa::DType::bf16, fa::Device::cuda));
    }
    s.out.push_back(fa::Tensor::empty(shape, fa::DType::bf16, fa::Device::cuda));
    s.lse.push_back(fa::Tensor::empty({B, H, L}, fa::DType::f32, fa::Device::cuda));
  }
  s.dq = fa::Tensor::empty(shape, fa::DType::bf16, fa::Device::cuda);
  s.dk = fa::Tensor::empty(shape, fa::DType::bf16, fa::Device::cuda);
  s.dv = fa::Tensor::empty(shape, fa::DType::bf16, fa::Device::cuda);
  return s;
}

// Rows of one (score, mask) pair on shape s: fwd (+ fwd_front), bwd / bwd_nd (+ bwd_front), each
// dir followed by `suffix` ("" for the compiled-in variant, "_rt" for its runtime twin).
template <class Score, class Mask>
void time_pair(const std::string& variant, const std::string& suffix, const Score& score,
               const Mask& mask, ShapeBufs& s, const Args& args, double density, CsvOut& csv) {
  const double fwd_flops = 4.0 * double(s.B * s.H) * double(s.L) * double(s.L) * double(s.D) * density;
  const int sets = int(s.q.size());
  fa::BlockMaskOptions bo;
  bo.device = fa::Device::cuda;
  const auto bm = fa::create_block_mask(mask, 1, 1, s.L, s.L, bo);
  auto row = [&](const std::string& dir, double ms, double flops) {
    csv.add(Row{variant, int(s.D), s.L, s.B, s.H, dir + suffix, ms, flops / (ms * 1e-3) / 1e12,
                density});
  };
  const double fwd_ms = median_ms([&](int i) {
    const int j = i % sets;
    fa::flex_attention_into(s.q[j].view(), s.k[j].view(), s.v[j].view(), s.out[j].view(),
                            s.lse[j].view(), score, bm);
  });
  row("fwd", fwd_ms, fwd_flops);
  // The front door users call: outputs allocated per call (stream-ordered, from the library's
  // pool), the block mask checked; the target is within 5% of the lower layer above.
  if (args.front_door) {
    row("fwd_front", median_ms([&](int i) {
          const int j = i % sets;
          const fa::AttentionOutput o = fa::flex_attention(s.q[j], s.k[j], s.v[j], score, bm);
        }),
        fwd_flops);
  }
  if (!args.bwd) return;
  // out/lse of every set now hold that set's forward results (the warm-up ran each set).
  for (const std::string& mode : args.bwd_modes) {
    const bool det = mode == "det";
    fa::AttentionOptions opts;
    opts.deterministic = det;
    const double ms = median_ms([&](int i) {
      const int j = i % sets;
      fa::flex_attention_backward_into(s.q[j].view(), s.k[j].view(), s.v[j].view(),
                                       s.out[j].view(), s.lse[j].view(), s.dout[j].view(),
                                       s.dq.view(), s.dk.view(), s.dv.view(), score, bm, opts);
    });
    row(det ? "bwd" : "bwd_nd", ms, 2.5 * fwd_flops);
    if (args.front_door && det) {
      row("bwd_front", median_ms([&](int i) {
            const int j = i % sets;
            const fa::AttentionGrads g = fa::flex_attention_backward(
                s.q[j], s.k[j], s.v[j], s.out[j], s.lse[j], s.dout[j], score, bm, opts);
          }),
          2.5 * fwd_flops);
    }
  }
}

// The runtime twin of a stock variant (stock_variants.h's sources) as f(score, mask): a
// RuntimeScoreMod / RuntimeMaskMod, or NoopScore / NoopMask where the variant has no such mod.
template <class F>
void with_runtime_twin(const gt::RuntimeSources& src, F&& f) {
  auto with_mask = [&](const auto& score) {
    if (src.mask.empty()) {
      f(score, fa::NoopMask{});
    } else {
      f(score, fa::RuntimeMaskMod(src.mask, {}, src.tile_kind));
    }
  };
  if (src.score.empty()) {
    with_mask(fa::NoopScore{});
  } else {
    with_mask(fa::RuntimeScoreMod(src.score));
  }
}

void bench_variant(const std::string& variant, ShapeBufs& s, const Args& args, CsvOut& csv) {
  const std::vector<int32_t> doc_host = gt::equal_documents(s.L, 16);
  fa::Buffer doc_dev =
      fa::Buffer::from_host(doc_host.data(), doc_host.size() * sizeof(int32_t), fa::Device::cuda);
  gt::VariantParams p;
  p.num_heads = int(s.H);
  p.doc_ids = static_cast<const int32_t*>(doc_dev.data());
  const double density = gt::kept_fraction(variant, s.L, s.L, p, doc_host.data());
  gt::visit_variant(variant, p, [&](auto score, auto mask, auto) {
    time_pair(variant, "", score, mask, s, args, density, csv);
  });
  // Issue 11: the same variant from source, compiled at run time into the same kernels. The
  // first calls compile (or load from the disk cache): their time is printed, not tabled.
  if (args.runtime && gt::has_runtime_sources(variant)) {
    with_runtime_twin(gt::runtime_sources(variant, p), [&](const auto& score, const auto& mask) {
      const auto t0 = std::chrono::steady_clock::now();
      fa::BlockMaskOptions bo;
      bo.device = fa::Device::cuda;
      const auto bm = fa::create_block_mask(mask, 1, 1, s.L, s.L, bo);
      fa::flex_attention_into(s.q[0].view(), s.k[0].view(), s.v[0].view(), s.out[0].view(),
                              s.lse[0].view(), score, bm);
      fa::synchronize();
      const auto t1 = std::chrono::steady_clock::now();
      fa::flex_attention_backward_into(s.q[0].view(), s.k[0].view(), s.v[0].view(),
                                       s.out[0].view(), s.lse[0].view(), s.dout[0].view(),
                                       s.dq.view(), s.dk.view(), s.dv.view(), score, bm);
      fa::synchronize();
      const auto t2 = std::chrono::steady_clock::now();
      const fa::RuntimeCacheStats st = fa::runtime_cache_stats();
      std::printf("ours  %-15s D=%-3lld runtime twin: first block mask + forward %.2f s, first "
                  "backward %.2f s (cache so far: %lld compiled, %lld from disk)\n",
                  variant.c_str(), (long long)s.D,
                  std::chrono::duration<double>(t1 - t0).count(),
                  std::chrono::duration<double>(t2 - t1).count(), (long long)st.compiled,
                  (long long)st.loaded_from_disk);
      Args rt_args = args;  // the deterministic backward only: the budget covers both sets
      rt_args.bwd_modes = {"det"};
      time_pair(variant, "_rt", score, mask, s, rt_args, density, csv);
    });
  }
}

// ---- decode (issue 9) ---------------------------------------------------------------------------
// The H200 targets, bf16, D = 128, Hq = 32, Hkv = 8, Lq = 1 (gpu_peers.py times the peers
// on the same shapes; keep the constants equal there):
//   (a) B = 8, Lkv = 32768       (b) B = 1, Lkv = 131072
//   paged: page 16 and page 128 at (a), page 128 at (b), pages in a shuffled order
//   sliding window 4096 at (b) (the newest query at position Lkv - 1 keeps keys Lkv-4097..Lkv-1)
// dir "decode" is flex_attention(q, k, v) on contiguous K/V, "decode_paged<P>" is
// flex_attention(q, PagedKV) with page size P. The window runs on the paged path only: the
// contiguous overloads put the one query at q_idx 0 (there is no position offset), where a window
// keeps one key; the paged call puts it at kv_len - 1. Its baseline is the paged no-mask row at
// the same shape (the target: >= 10x faster).
constexpr int64_t kDecodeHq = 32, kDecodeHkv = 8, kDecodeD = 128;
constexpr int kDecodeWindow = 4096;  // gpu_peers.py's DECODE_WINDOW

// Bytes of the K and V rows the call attends (bf16): what TB/s counts, on both sides.
double decode_bytes(int64_t B, int64_t keys) {
  return double(B) * double(keys) * double(kDecodeHkv) * 2.0 * double(kDecodeD) * 2.0;
}

// B sequences of L tokens over B * L / P pages in a shuffled order, `sets` different shuffles.
std::vector<fa::Tensor> shuffled_tables(int64_t B, int64_t L, int64_t P, int sets,
                                        std::mt19937_64& rng) {
  std::vector<int32_t> ids(size_t(B * L / P));
  std::iota(ids.begin(), ids.end(), 0);
  std::vector<fa::Tensor> tables;
  for (int i = 0; i < sets; ++i) {
    std::shuffle(ids.begin(), ids.end(), rng);
    tables.push_back(fa::Tensor::from_host(ids.data(), {B, L / P}, fa::Device::cuda));
  }
  return tables;
}

// Returns the number of rows that failed (each is reported and the others still run: the paged
// rows must not hide the contiguous ones).
int bench_decode(size_t l2_bytes, const std::vector<std::string>& variants, CsvOut& csv) {
  const int64_t Hq = kDecodeHq, Hkv = kDecodeHkv, D = kDecodeD;
  int failures = 0;
  fa::AttentionOptions opts;
  opts.enable_gqa = true;
  std::mt19937_64 rng(9);
  struct Shape {
    int64_t B, L;
    std::vector<int64_t> pages;
  };
  for (const Shape& sh : {Shape{8, 32768, {16, 128}}, Shape{1, 131072, {128}}}) {
    const int64_t B = sh.B, L = sh.L;
    // Times fn(i) and writes the row, or reports the failure and goes on.
    auto row = [&](const char* variant, const std::string& dir, int64_t keys,
                   const std::function<void(int)>& fn) {
      if (std::find(variants.begin(), variants.end(), variant) == variants.end()) return;
      try {
        const double ms = median_ms(fn);
        const auto [gpu_ms, host_us] = queued_ms(fn, 100);
        std::printf("      %s %s B=%lld: GPU alone %.4f ms per call, host enqueue %.1f us per call\n",
                    variant, dir.c_str(), (long long)B, gpu_ms, host_us);
        csv.add(Row{variant, int(D), L, B, Hq, dir, ms,
                    4.0 * double(B * Hq) * double(keys) * double(D) / (ms * 1e-3) / 1e12,
                    double(keys) / double(L), Hkv, decode_bytes(B, keys) / (ms * 1e-3) / 1e12});
      } catch (const std::exception& e) {
        std::printf("ours  %-15s D=%-3lld L=%-6lld B=%-3lld %s FAILED: %s\n", variant,
                    (long long)D, (long long)L, (long long)B, dir.c_str(), e.what());
        ++failures;
      }
    };
    // One host copy of K and V serves the contiguous tensors and every page size: the same
    // B * Hkv * L * D values, only the shape differs (random values need no layout).
    const size_t n = size_t(B * Hkv * L * D);
    const std::vector<float> kh = random_host(n, 91 + uint64_t(B));
    const std::vector<float> vh = random_host(n, 92 + uint64_t(B));
    const std::vector<float> qh = random_host(size_t(B * Hq * D), 93 + uint64_t(B));
    const fa::Tensor q = fa::Tensor::from_host(qh.data(), {B, Hq, 1, D}, fa::DType::bf16,
                                               fa::Device::cuda);
    {  // contiguous: at least 537 MB read per call, no rotation needed against L2
      const fa::Tensor k = fa::Tensor::from_host(kh.data(), {B, Hkv, L, D}, fa::DType::bf16,
                                                 fa::Device::cuda);
      const fa::Tensor v = fa::Tensor::from_host(vh.data(), {B, Hkv, L, D}, fa::DType::bf16,
                                                 fa::Device::cuda);
      row("noop", "decode", L,
          [&](int) { const fa::AttentionOutput o = fa::flex_attention(q, k, v, opts); });
    }
    const std::vector<int32_t> lens(static_cast<size_t>(B), int32_t(L));
    const fa::Tensor kv_len = fa::Tensor::from_host(lens.data(), {B}, fa::Device::cuda);
    for (int64_t P : sh.pages) {
      const std::string dir = "decode_paged" + std::to_string(P);
      const fa::Tensor kp = fa::Tensor::from_host(kh.data(), {B * L / P, Hkv, P, D},
                                                  fa::DType::bf16, fa::Device::cuda);
      const fa::Tensor vp = fa::Tensor::from_host(vh.data(), {B * L / P, Hkv, P, D},
                                                  fa::DType::bf16, fa::Device::cuda);
      const fa::PagedKV cache{kp, vp, shuffled_tables(B, L, P, 1, rng)[0], kv_len};
      row("noop", dir, L,
          [&](int) { const fa::AttentionOutput o = fa::flex_attention(q, cache, opts); });
      if (B != 1) continue;
      // The window reads ~17 MB, which L2 would hold from one call to the next: the calls take
      // turns over page tables of different shuffles, so consecutive calls read different pages
      // (as gpu_peers.py rotates copies of K/V for the same row).
      const int64_t keys = kDecodeWindow + 1;
      const double bytes = decode_bytes(B, keys);
      const int sets =
          bytes >= double(l2_bytes) ? 1 : int(std::min(8.0, 3.0 * double(l2_bytes) / bytes + 1.0));
      std::vector<fa::PagedKV> caches;
      for (const fa::Tensor& t : shuffled_tables(B, L, P, sets, rng)) {
        caches.push_back({kp, vp, t, kv_len});
      }
      const auto window = fa::sliding_window(kDecodeWindow);
      row("sliding_window", dir, keys, [&](int i) {
        const fa::AttentionOutput o = fa::flex_attention(q, caches[size_t(i % sets)], window, opts);
      });
    }
  }
  return failures;
}

// GPU create_block_mask at L = 16384, 128x128 tiles, B = H = 1: host wall time of the whole call
// (allocation included) until the GPU is done, median of 20.
void bench_mask_build(CsvOut& csv) {
  const int64_t L = 16384;
  const std::vector<int32_t> doc_host = gt::equal_documents(L, 16);
  fa::Buffer doc_dev =
      fa::Buffer::from_host(doc_host.data(), doc_host.size() * sizeof(int32_t), fa::Device::cuda);
  fa::BlockMaskOptions bo;
  bo.device = fa::Device::cuda;
  auto time_build = [&](const char* name, auto mask) {
    std::vector<double> t;
    for (int i = 0; i < 23; ++i) {
      cuda_check(cudaDeviceSynchronize(), "sync");
      const auto t0 = std::chrono::steady_clock::now();
      const auto bm = fa::create_block_mask(mask, 1, 1, L, L, bo);
      cuda_check(cudaDeviceSynchronize(), "sync");
      const auto t1 = std::chrono::steady_clock::now();
      if (i >= 3) t.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
    const double ms = t[t.size() / 2];
    std::printf("ours  block mask %-10s L=%lld on the GPU: %.1f us (median of %zu)\n", name,
                (long long)L, ms * 1e3, t.size());
    csv.add(Row{name, 0, L, 1, 1, "block_mask", ms, 0.0, 0.0});
  };
  time_build("causal", fa::causal());
  time_build("document", fa::document(static_cast<const int32_t*>(doc_dev.data())));
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parse(argc, argv);
    if (!fa::cuda_available()) {
      std::fprintf(stderr, "bench_gpu: no CUDA device visible\n");
      return 3;
    }
    cudaDeviceProp prop{};
    cuda_check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    std::printf("bench_gpu on %s (%d SMs, L2 %d MB)\n", prop.name, prop.multiProcessorCount,
                prop.l2CacheSize >> 20);
    CsvOut csv(args.csv);
    csv.comment(std::string("device ") + prop.name);
    const auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    int failures = 0;
    // Decode first: its rows are few and fixed, so the prefill rows' budget never skips them.
    if (args.decode) {
      try {
        failures += bench_decode(size_t(prop.l2CacheSize), args.decode_variants, csv);
      } catch (const std::exception& e) {  // setting up the inputs failed
        std::printf("ours  decode FAILED: %s\n", e.what());
        ++failures;
      }
    }
    if (args.mask_build && args.prefill) {
      try {
        bench_mask_build(csv);
      } catch (const std::exception& e) {
        std::printf("ours  block mask build FAILED: %s\n", e.what());
        ++failures;
      }
    }
    const std::vector<int> prefill_dims = args.prefill ? args.dims : std::vector<int>{};
    for (int D : prefill_dims) {
      for (int64_t L : args.lens) {
        const int64_t B = std::max<int64_t>(1, args.tokens / L);
        if (elapsed() > args.budget_s) {
          std::printf("ours  D=%d L=%lld skipped: time budget %.0f s spent\n", D, (long long)L,
                      args.budget_s);
          continue;
        }
        ShapeBufs s = make_shape(B, args.heads, L, D, size_t(prop.l2CacheSize));
        for (const auto& variant : args.variants) {
          try {
            bench_variant(variant, s, args, csv);
          } catch (const std::exception& e) {
            std::printf("ours  %-15s D=%-3d L=%-6lld FAILED: %s\n", variant.c_str(), D,
                        (long long)L, e.what());
            ++failures;
          }
        }
      }
    }
    std::printf("bench_gpu: done in %.1f s, %d failures\n", elapsed(), failures);
    return failures ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu: %s\n", e.what());
    return 2;
  }
}
