// CPU attention benchmark: forward and backward GFLOP/s of the stock variants, printed beside this
// machine's float32 FMA peak measured by the same program (register-resident FMA chains on every
// worker thread, with the instruction set the kernels use).
//
//   bench_cpu [--B 1] [--H 8] [--L 4096] [--D 64] [--dtype f32|f16|bf16] [--repeats 5]
//             [--block 128] [--variants nomask,causal,sliding,document,prefix,alibi,softcap,relbias]
//             [--no-backward]
//   bench_cpu --memory [--L 32768] [--D 64]      peak-RSS increase of one forward, B = H = 1
//   bench_cpu --decode [--B 8] [--H 32] [--Hkv 8] [--L 32768] [--D 128] [--pages 16,128]
//             one decode step (Lq = 1, no mask) over a paged KV cache (pages in random order) and
//             over contiguous K / V, as bytes of K + V read per second beside a memcpy of the
//             same byte count measured in the same program
//
// FLOPs: forward 4 * B * H * Lq * Lkv * D * density, backward 2.5x that, where density is the
// exact kept fraction of the score matrix. Times are medians of `repeats` runs after one warm-up;
// block masks are built outside the timed region. The peak is measured before and after the runs;
// the lines printed during the runs use the first reading, the final table the higher one.
// Threads: FLEXATTN_NUM_THREADS (default: all). A benchmark, not a test: it never fails on speed.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "documents.h"
#include "flexattn/detail/cpu/kernels.h"
#include "flexattn/detail/kept_fraction.h"
#include "flexattn/flexattn.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace fa = flexattn;
namespace cpu = flexattn::detail::cpu;

struct Options {
  int64_t B = 1, H = 8, L = 4096, D = 64;
  int64_t Hkv = 0;  // --decode only; 0: 8
  bool l_given = false, b_given = false, h_given = false, d_given = false;
  fa::DType dtype = fa::DType::f32;
  int repeats = 5;
  int block = 128;
  bool backward = true;
  bool memory = false;
  bool decode = false;
  std::vector<int64_t> pages = {16, 128};  // --decode page sizes
  std::vector<std::string> variants = {"nomask", "causal", "sliding", "document",
                                       "prefix", "alibi",  "softcap"};
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "bench_cpu: %s\nusage: bench_cpu [--B n] [--H n] [--L n] [--D n] [--dtype "
               "f32|f16|bf16] [--repeats n] [--block n] [--variants a,b,...] [--no-backward] "
               "[--memory] [--decode [--Hkv n] [--pages a,b,...]]\n",
               why);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value after " + a).c_str());
      return argv[++i];
    };
    if (a == "--B") {
      o.B = std::stoll(value());
      o.b_given = true;
    } else if (a == "--H") {
      o.H = std::stoll(value());
      o.h_given = true;
    } else if (a == "--Hkv") {
      o.Hkv = std::stoll(value());
    } else if (a == "--L") {
      o.L = std::stoll(value());
      o.l_given = true;
    } else if (a == "--D") {
      o.D = std::stoll(value());
      o.d_given = true;
    } else if (a == "--repeats") {
      o.repeats = std::max(1, std::stoi(value()));
    } else if (a == "--block") {
      o.block = std::stoi(value());
    } else if (a == "--dtype") {
      const std::string d = value();
      if (d == "f32") {
        o.dtype = fa::DType::f32;
      } else if (d == "f16") {
        o.dtype = fa::DType::f16;
      } else if (d == "bf16") {
        o.dtype = fa::DType::bf16;
      } else {
        usage("dtype must be f32, f16 or bf16");
      }
    } else if (a == "--variants") {
      o.variants.clear();
      std::stringstream ss(value());
      for (std::string v; std::getline(ss, v, ',');) o.variants.push_back(v);
    } else if (a == "--no-backward") {
      o.backward = false;
    } else if (a == "--memory") {
      o.memory = true;
    } else if (a == "--decode") {
      o.decode = true;
    } else if (a == "--pages") {
      o.pages.clear();
      std::stringstream ss(value());
      for (std::string v; std::getline(ss, v, ',');) o.pages.push_back(std::stoll(v));
    } else {
      usage(("unknown argument " + a).c_str());
    }
  }
  if (o.B < 1 || o.H < 1 || o.L < 1 || o.D < 1 || o.block < 1) usage("sizes must be >= 1");
  return o;
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Peak float32 GFLOP/s: every worker runs independent register-resident FMA chains at once; the
// best of a few 0.2 s rounds.
double fma_peak_gflops() {
  const int threads = cpu::num_threads();
  cpu::fma_chain_flops(1 << 20);  // clocks up, code paged in
  double best = 0.0;
  for (int round = 0; round < 5; ++round) {
    const int64_t iters = int64_t{1} << 24;
    std::vector<double> flops(static_cast<size_t>(threads));
    std::vector<std::thread> pool;
    const auto t0 = Clock::now();
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back(
          [&flops, t, iters] { flops[static_cast<size_t>(t)] = cpu::fma_chain_flops(iters); });
    }
    for (auto& th : pool) th.join();
    const double s = seconds_since(t0);
    double total = 0.0;
    for (double f : flops) total += f;
    best = std::max(best, total / s * 1e-9);
  }
  return best;
}

fa::Tensor random_tensor(std::vector<int64_t> shape, fa::DType dtype, std::mt19937& rng) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  std::vector<float> host(static_cast<size_t>(n));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& x : host) x = dist(rng);
  return fa::Tensor::from_host(host.data(), std::move(shape), dtype);
}

struct Row {
  std::string name;
  double density = 0.0, fwd_s = 0.0, bwd_s = 0.0, fwd_gflops = 0.0, bwd_gflops = 0.0;
};

struct Inputs {
  fa::Tensor q, k, v, dout;
};

// Issue 13's pair: a T5-style bias[h][bucket(q - kv)] (32 buckets), read as a constant table
// or as a learnable Param whose gradient the backward computes (target: <= 1.2x the constant's
// backward time).
FLEXATTN_HD inline int bench_bucket(int d) { return (d < -15 ? -15 : (d > 16 ? 16 : d)) + 15; }
struct ConstRelBias {
  const float* table;
  template <class T>
  T operator()(T s, int, int h, int q, int kv) const {
    return s + table[h * 32 + bench_bucket(q - kv)];
  }
};
struct LearnedRelBias {
  fa::Param table;
  template <class T>
  T operator()(T s, int, int h, int q, int kv) const {
    return s + table(h, bench_bucket(q - kv));
  }
  auto params() const { return fa::params(table); }
};

template <class ScoreMod, class MaskMod>
Row measure(const std::string& name, const Options& o, const Inputs& in, ScoreMod score_mod,
            MaskMod mask_mod, double peak) {
  fa::BlockMaskOptions bo;
  bo.block_q = bo.block_kv = o.block;
  const auto mask = fa::create_block_mask(mask_mod, 1, 1, o.L, o.L, bo);
  Row r;
  r.name = name;
  // The stock masks here do not depend on b or h, so the (1, 1) mask gives the exact density.
  r.density = fa::detail::kept_fraction(mask.data(), mask_mod, 1, 1);
  const double fwd_flops =
      4.0 * double(o.B * o.H) * double(o.L) * double(o.L) * double(o.D) * r.density;

  fa::AttentionOutput res = fa::flex_attention(in.q, in.k, in.v, score_mod, mask);  // warm-up
  std::vector<double> times;
  for (int i = 0; i < o.repeats; ++i) {
    const auto t0 = Clock::now();
    res = fa::flex_attention(in.q, in.k, in.v, score_mod, mask);
    times.push_back(seconds_since(t0));
  }
  r.fwd_s = median(times);
  r.fwd_gflops = fwd_flops / r.fwd_s * 1e-9;
  std::printf("  %-10s density %.4f  forward  %9.2f ms  %7.1f GFLOP/s  %5.1f%% of peak\n",
              name.c_str(), r.density, r.fwd_s * 1e3, r.fwd_gflops, 100.0 * r.fwd_gflops / peak);
  std::fflush(stdout);

  if (o.backward) {
    fa::AttentionGrads g =
        fa::flex_attention_backward(in.q, in.k, in.v, res.out, res.lse, in.dout, score_mod, mask);
    times.clear();
    for (int i = 0; i < o.repeats; ++i) {
      const auto t0 = Clock::now();
      g = fa::flex_attention_backward(in.q, in.k, in.v, res.out, res.lse, in.dout, score_mod, mask);
      times.push_back(seconds_since(t0));
    }
    r.bwd_s = median(times);
    r.bwd_gflops = 2.5 * fwd_flops / r.bwd_s * 1e-9;
    std::printf("  %-10s                 backward %9.2f ms  %7.1f GFLOP/s  %5.1f%% of peak\n",
                name.c_str(), r.bwd_s * 1e3, r.bwd_gflops, 100.0 * r.bwd_gflops / peak);
    std::fflush(stdout);
  }
  return r;
}

long max_rss_kb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;  // kilobytes on Linux
}

int run_memory(Options o) {
  if (!o.l_given) o.L = 32768;
  std::mt19937 rng(7);
  // Everything the call takes as input exists before the first reading, and a tiny call has
  // started the thread pool, so the difference is what one forward adds: outputs and scratch.
  {
    const fa::Tensor t = random_tensor({1, 1, 16, o.D}, o.dtype, rng);
    fa::flex_attention(t, t, t);
  }
  const fa::Tensor q = random_tensor({1, 1, o.L, o.D}, o.dtype, rng);
  const fa::Tensor k = random_tensor({1, 1, o.L, o.D}, o.dtype, rng);
  const fa::Tensor v = random_tensor({1, 1, o.L, o.D}, o.dtype, rng);
  const auto mask = fa::create_block_mask(fa::noop_mask(), 1, 1, o.L, o.L);
  const long before = max_rss_kb();
  const auto t0 = Clock::now();
  const fa::AttentionOutput r = fa::flex_attention(q, k, v, mask);
  const double s = seconds_since(t0);
  const long after = max_rss_kb();
  const double inputs_mb = 3.0 * double(o.L * o.D) * double(fa::dtype_size(o.dtype)) / 1048576.0;
  const double out_mb =
      (double(o.L * o.D) * double(fa::dtype_size(o.dtype)) + 4.0 * double(o.L)) / 1048576.0;
  std::printf("memory: forward B=1 H=1 L=%lld D=%lld %s, %d threads, %.2f s\n", (long long)o.L,
              (long long)o.D, fa::to_string(o.dtype), cpu::num_threads(), s);
  std::printf(
      "  inputs %.1f MB (allocated before), outputs %.1f MB; an L x L f32 matrix would be %.0f "
      "MB\n",
      inputs_mb, out_mb, double(o.L) * double(o.L) * 4.0 / 1048576.0);
  std::printf("  peak RSS before %.1f MB, after %.1f MB: the forward added %.1f MB\n",
              before / 1024.0, after / 1024.0, (after - before) / 1024.0);
  volatile float sink = static_cast<const float*>(r.lse.data())[0];
  (void)sink;
  return 0;
}

// ---- decode -------------------------------------------------------------------------------------
// One decode step reads every byte of K and V once, so its figure is K + V bytes per second, set
// beside the rate this program copies the same number of bytes with memcpy (bytes copied / s, on
// every worker: each byte is read once and written once).

// MemAvailable in bytes, or 0 when /proc/meminfo does not say.
int64_t available_bytes() {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (f == nullptr) return 0;
  char line[256];
  long long kb = 0;
  while (std::fgets(line, sizeof line, f)) {
    if (std::sscanf(line, "MemAvailable: %lld kB", &kb) == 1) break;
  }
  std::fclose(f);
  return int64_t{kb} * 1024;
}

// n uniform values in [-1, 1) of `dtype` at dst: a xorshift per slice on every worker, fast enough
// for GiBs (std::normal_distribution would take tens of seconds) and never zeros.
void fill_random(void* dst, fa::DType dtype, int64_t n, uint64_t seed) {
  constexpr int64_t kSlice = 4096;
  const size_t es = fa::dtype_size(dtype);
  cpu::parallel_for((n + kSlice - 1) / kSlice, [&](int64_t slice, int) {
    float buf[kSlice];
    uint64_t x = (seed + uint64_t(slice)) * 0x9E3779B97F4A7C15ull | 1;
    const int64_t len = std::min(kSlice, n - slice * kSlice);
    for (int64_t i = 0; i < len; ++i) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      buf[i] = float(int32_t(x >> 32)) * 0x1p-31f;
    }
    cpu::store_row(buf, static_cast<char*>(dst) + slice * kSlice * int64_t(es), dtype, len);
  });
}

fa::Tensor random_fast(std::vector<int64_t> shape, fa::DType dtype, uint64_t seed) {
  fa::Tensor t = fa::Tensor::empty(std::move(shape), dtype);
  fill_random(t.data(), dtype, t.numel(), seed);
  return t;
}

// The same K / V as a paged cache: every sequence's pages drawn from one shuffled pool, so
// consecutive pages of a sequence are far apart in memory. Rows past L in a last partial page are
// zeroed (never read).
fa::PagedKV paged_copy(const fa::Tensor& k, const fa::Tensor& v, int64_t ps, std::mt19937& rng) {
  const int64_t B = k.size(0), H = k.size(1), L = k.size(2), D = k.size(3), Dv = v.size(3);
  const int64_t per_seq = (L + ps - 1) / ps, num_pages = B * per_seq;
  const size_t es = fa::dtype_size(k.dtype());
  std::vector<int32_t> table(static_cast<size_t>(num_pages));
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
  std::shuffle(table.begin(), table.end(), rng);
  const std::vector<int32_t> len(static_cast<size_t>(B), static_cast<int32_t>(L));
  fa::PagedKV c{fa::Tensor::empty({num_pages, H, ps, D}, k.dtype()),
                fa::Tensor::empty({num_pages, H, ps, Dv}, v.dtype()),
                fa::Tensor::from_host(table.data(), {B, per_seq}),
                fa::Tensor::from_host(len.data(), {B})};
  auto copy = [&](const fa::Tensor& src, fa::Tensor& dst, int64_t w, int64_t slot) {
    const int64_t b = slot / per_seq, p = slot % per_seq, rows = std::min(ps, L - p * ps);
    const auto* s = static_cast<const char*>(src.data());
    auto* d = static_cast<char*>(dst.data());
    for (int64_t h = 0; h < H; ++h) {
      char* page = d + ((table[size_t(slot)] * H + h) * ps) * w * int64_t(es);
      std::memcpy(page, s + ((b * H + h) * L + p * ps) * w * int64_t(es), size_t(rows * w) * es);
      std::memset(page + rows * w * int64_t(es), 0, size_t((ps - rows) * w) * es);
    }
  };
  cpu::parallel_for(num_pages, [&](int64_t slot, int) {
    copy(k, c.k_pages, D, slot);
    copy(v, c.v_pages, Dv, slot);
  });
  return c;
}

template <class F>
double median_seconds(int repeats, F&& f) {
  f();  // warm-up: pages touched, the contiguous overload's dense mask built
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = Clock::now();
    f();
    times.push_back(seconds_since(t0));
  }
  return median(times);
}

double max_abs_diff(const fa::Tensor& a, const fa::Tensor& b) {
  const std::vector<float> x = a.to_host(), y = b.to_host();
  double m = 0.0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, double(std::fabs(x[i] - y[i])));
  return m;
}

int run_decode(Options o) {
  if (!o.b_given) o.B = 8;
  if (!o.h_given) o.H = 32;
  if (!o.l_given) o.L = 32768;
  if (!o.d_given) o.D = 128;
  const int64_t Hkv = o.Hkv > 0 ? o.Hkv : std::min<int64_t>(8, o.H);
  if (o.H % Hkv != 0) usage("--H must be a multiple of --Hkv");
  for (int64_t ps : o.pages) {
    if (ps < 1) usage("--pages must be >= 1");
  }
  const int64_t es = int64_t(fa::dtype_size(o.dtype));
  auto kv_bytes = [&](int64_t L) { return 2 * o.B * Hkv * L * o.D * es; };
  // Resident at once: contiguous K / V, one paged copy, the memcpy destination (3x K + V).
  const int64_t avail = available_bytes();
  if (avail > 0 && 3 * kv_bytes(o.L) > avail / 10 * 8) {
    const int64_t full = o.L;
    while (o.L > 1024 && 3 * kv_bytes(o.L) > avail / 10 * 8) o.L /= 2;
    std::printf("decode: 3 x K+V at L=%lld (%.2f GiB) does not fit in 80%% of the %.2f GiB "
                "available; measuring L=%lld\n",
                (long long)full, 3.0 * double(kv_bytes(full)) / 1073741824.0,
                double(avail) / 1073741824.0, (long long)o.L);
  }
  const int64_t bytes = kv_bytes(o.L);
  std::printf("decode: B=%lld Hq=%lld Hkv=%lld Lkv=%lld D=%lld %s, Lq=1, no mask, %d threads "
              "(%s); K+V %.3f GiB per step, median of %d\n",
              (long long)o.B, (long long)o.H, (long long)Hkv, (long long)o.L, (long long)o.D,
              fa::to_string(o.dtype), cpu::num_threads(), cpu::isa_name(),
              double(bytes) / 1073741824.0, o.repeats);

  const fa::Tensor q = random_fast({o.B, o.H, 1, o.D}, o.dtype, 1);
  const fa::Tensor k = random_fast({o.B, Hkv, o.L, o.D}, o.dtype, 2);
  const fa::Tensor v = random_fast({o.B, Hkv, o.L, o.D}, o.dtype, 3);
  fa::AttentionOptions opts;
  opts.enable_gqa = o.H != Hkv;

  // Measured before and after the rows: on a shared machine the higher reading is the better
  // estimate of what the memory can do, and the closing table's ratios use it.
  auto memcpy_gbs = [&] {
    const std::unique_ptr<char[]> dst(new char[size_t(bytes)]);
    constexpr int64_t kPiece = int64_t{1} << 24;  // 16 MiB per work item
    const int64_t half = bytes / 2, pieces = (half + kPiece - 1) / kPiece;
    const double s = median_seconds(o.repeats, [&] {
      cpu::parallel_for(2 * pieces, [&](int64_t i, int) {
        const auto* src = static_cast<const char*>(i < pieces ? k.data() : v.data());
        const int64_t off = (i % pieces) * kPiece, n = std::min(kPiece, half - off);
        std::memcpy(dst.get() + (i < pieces ? 0 : half) + off, src + off, size_t(n));
      });
    });
    const double gbs = double(bytes) / s * 1e-9;
    std::printf("  %-22s %9.2f ms  %7.2f GB/s\n", "memcpy (same bytes)", s * 1e3, gbs);
    std::fflush(stdout);
    return gbs;
  };
  double copy_gbs = memcpy_gbs();
  std::vector<std::pair<std::string, double>> rows;  // (name, GB/s of K+V)
  auto report = [&](const std::string& name, double s, double diff) {
    const double gbs = double(bytes) / s * 1e-9;
    rows.emplace_back(name, gbs);
    std::printf("  %-22s %9.2f ms  %7.2f GB/s of K+V  %5.1f%% of memcpy", name.c_str(), s * 1e3,
                gbs, 100.0 * gbs / copy_gbs);
    if (diff >= 0.0) std::printf("  (max |out - contiguous| %.1e)", diff);
    std::printf("\n");
    std::fflush(stdout);
  };

  fa::AttentionOutput ref;
  report("contiguous", median_seconds(o.repeats, [&] { ref = fa::flex_attention(q, k, v, opts); }),
         -1.0);
  std::mt19937 rng(5);
  for (int64_t ps : o.pages) {
    const fa::PagedKV cache = paged_copy(k, v, ps, rng);
    fa::AttentionOutput r;
    const double s = median_seconds(o.repeats, [&] { r = fa::flex_attention(q, cache, opts); });
    report("paged, page " + std::to_string(ps), s, max_abs_diff(r.out, ref.out));
  }
  copy_gbs = std::max(copy_gbs, memcpy_gbs());

  std::printf("\n| decode step | GB/s of K+V | / memcpy %.2f GB/s |\n|---|---|---|\n", copy_gbs);
  for (const auto& [name, gbs] : rows) {
    std::printf("| %s | %.2f | %.2f |\n", name.c_str(), gbs, gbs / copy_gbs);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (o.memory) return run_memory(o);
  if (o.decode) return run_decode(o);

  double peak = fma_peak_gflops();
  std::printf("bench_cpu: %d threads, kernels %s, fp32 FMA peak %.1f GFLOP/s (measured)\n",
              cpu::num_threads(), cpu::isa_name(), peak);
  std::printf("shape B=%lld H=%lld L=%lld D=%lld %s, block %d, median of %d\n", (long long)o.B,
              (long long)o.H, (long long)o.L, (long long)o.D, fa::to_string(o.dtype), o.block,
              o.repeats);

  std::mt19937 rng(1234);
  Inputs in{random_tensor({o.B, o.H, o.L, o.D}, o.dtype, rng),
            random_tensor({o.B, o.H, o.L, o.D}, o.dtype, rng),
            random_tensor({o.B, o.H, o.L, o.D}, o.dtype, rng),
            random_tensor({o.B, o.H, o.L, o.D}, o.dtype, rng)};
  // Device-side (here: host) document ids must outlive every call that uses the mask.
  const std::vector<int32_t> docs = flexattn::bench::document_ids(o.L, false, rng);
  std::vector<float> bias_values(size_t(o.H * 32));
  for (float& x : bias_values) x = std::normal_distribution<float>(0.0f, 0.5f)(rng);
  const fa::Tensor bias = fa::Tensor::from_host(bias_values.data(), {o.H, 32}, fa::DType::f32);
  fa::Tensor bias_grad = fa::Tensor::empty({o.H, 32}, fa::DType::f32);

  std::vector<Row> rows;
  for (const std::string& v : o.variants) {
    if (v == "nomask") {
      rows.push_back(measure(v, o, in, fa::NoopScore{}, fa::noop_mask(), peak));
    } else if (v == "causal") {
      rows.push_back(measure(v, o, in, fa::NoopScore{}, fa::causal(), peak));
    } else if (v == "sliding") {
      rows.push_back(
          measure("sliding1024", o, in, fa::NoopScore{}, fa::sliding_window(1024), peak));
    } else if (v == "document") {
      rows.push_back(
          measure("document16", o, in, fa::NoopScore{}, fa::document(docs.data()), peak));
    } else if (v == "prefix") {
      rows.push_back(measure("prefix1024", o, in, fa::NoopScore{}, fa::prefix_lm(1024), peak));
    } else if (v == "alibi") {
      rows.push_back(measure("alibi+causal", o, in, fa::alibi(int(o.H)), fa::causal(), peak));
    } else if (v == "softcap") {
      rows.push_back(measure("softcap30", o, in, fa::softcap(30.0f), fa::noop_mask(), peak));
    } else if (v == "relbias") {  // the constant table, then the same table learnable
      rows.push_back(measure("relbias+causal", o, in, ConstRelBias{bias_values.data()},
                             fa::causal(), peak));
      rows.push_back(measure("relbias_learned+causal", o, in,
                             LearnedRelBias{fa::Param(bias, bias_grad)}, fa::causal(), peak));
    } else {
      usage(("unknown variant " + v).c_str());
    }
  }

  // Measured again after the runs: on a shared machine the higher of the two readings is the
  // better estimate of what the cores can do, and the table's percentages use it.
  const double peak_end = fma_peak_gflops();
  std::printf("fp32 FMA peak again after the runs: %.1f GFLOP/s\n", peak_end);
  peak = std::max(peak, peak_end);

  std::printf("\n| variant | density | fwd ms | fwd GFLOP/s | fwd %% peak |");
  if (o.backward) std::printf(" bwd ms | bwd GFLOP/s | bwd %% peak |");
  std::printf("\n|---|---|---|---|---|%s\n", o.backward ? "---|---|---|" : "");
  for (const Row& r : rows) {
    std::printf("| %s | %.4f | %.1f | %.1f | %.1f |", r.name.c_str(), r.density, r.fwd_s * 1e3,
                r.fwd_gflops, 100.0 * r.fwd_gflops / peak);
    if (o.backward) {
      std::printf(" %.1f | %.1f | %.1f |", r.bwd_s * 1e3, r.bwd_gflops,
                  100.0 * r.bwd_gflops / peak);
    }
    std::printf("\n");
  }
  const Row* nomask = nullptr;
  const Row* causal = nullptr;
  for (const Row& r : rows) {
    if (r.name == "nomask") nomask = &r;
    if (r.name == "causal") causal = &r;
  }
  std::printf("fp32 FMA peak %.1f GFLOP/s on %d threads (%s)\n", peak, cpu::num_threads(),
              cpu::isa_name());
  if (nomask && causal) {
    std::printf("causal / no-mask time: forward %.3f", causal->fwd_s / nomask->fwd_s);
    if (o.backward) std::printf(", backward %.3f", causal->bwd_s / nomask->bwd_s);
    std::printf("\n");
  }
  return 0;
}
