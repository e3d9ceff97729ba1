// CPU attention benchmark: forward and backward GFLOP/s of the stock variants, printed beside this
// machine's float32 FMA peak measured by the same program (register-resident FMA chains on every
// worker thread, with the instruction set the kernels use).
//
//   bench_cpu [--B 1] [--H 8] [--L 4096] [--D 64] [--dtype f32|f16|bf16] [--repeats 5]
//             [--block 128] [--variants nomask,causal,sliding,document,prefix,alibi,softcap]
//             [--no-backward]
//   bench_cpu --memory [--L 32768] [--D 64]      peak-RSS increase of one forward, B = H = 1
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
#include <random>
#include <sstream>
#include <string>
#include <thread>
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
  bool l_given = false;
  fa::DType dtype = fa::DType::f32;
  int repeats = 5;
  int block = 128;
  bool backward = true;
  bool memory = false;
  std::vector<std::string> variants = {"nomask", "causal", "sliding", "document",
                                       "prefix", "alibi",  "softcap"};
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "bench_cpu: %s\nusage: bench_cpu [--B n] [--H n] [--L n] [--D n] [--dtype "
               "f32|f16|bf16] [--repeats n] [--block n] [--variants a,b,...] [--no-backward] "
               "[--memory]\n",
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
    } else if (a == "--H") {
      o.H = std::stoll(value());
    } else if (a == "--L") {
      o.L = std::stoll(value());
      o.l_given = true;
    } else if (a == "--D") {
      o.D = std::stoll(value());
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

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (o.memory) return run_memory(o);

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
