// What a downstream project writes: its own score_mod, a stock mask, one forward on the CPU,
// checked against a few lines of naive double-precision attention. Shared by the C++ consumer
// (main.cpp, built through find_package or add_subdirectory) and the CUDA one (main.cu, compiled
// by nvcc: the same functor is then a host+device functor).
#pragma once

#include <flexattn/flexattn.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

// A user's own score_mod: generic in T, host+device.
struct TemperatureBias {
  float temperature;
  template <class T>
  FLEXATTN_HD T operator()(T s, int, int h, int q, int kv) const {
    return s / temperature + 0.01f * float(h) * float(q - kv);
  }
};

inline int run_consumer() {
  constexpr int B = 1, H = 2, L = 37, D = 16;
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  std::vector<float> q(B * H * L * D), k(q.size()), v(q.size());
  for (auto* x : {&q, &k, &v})
    for (float& e : *x) e = normal(rng);

  const auto t = [&](const std::vector<float>& x) {
    return flexattn::Tensor::from_host(x.data(), {B, H, L, D}, flexattn::DType::f32);
  };
  const TemperatureBias score{1.5f};
  const auto mask =
      flexattn::create_block_mask(flexattn::causal(), 1, 1, L, L, {.block_q = 16, .block_kv = 16});
  const flexattn::AttentionOutput r = flexattn::flex_attention(t(q), t(k), t(v), score, mask);
  const std::vector<float> out = r.out.to_host();

  double worst = 0.0;
  const double scale = 1.0 / std::sqrt(double(D));
  for (int h = 0; h < H; ++h)
    for (int i = 0; i < L; ++i) {
      std::vector<double> s(i + 1);  // causal: keys 0..i
      double m = -INFINITY, sum = 0.0;
      for (int j = 0; j <= i; ++j) {
        double dot = 0.0;
        for (int e = 0; e < D; ++e) dot += double(q[(h * L + i) * D + e]) * k[(h * L + j) * D + e];
        s[j] = score(scale * dot, 0, h, i, j);
        m = std::fmax(m, s[j]);
      }
      for (double& x : s) sum += (x = std::exp(x - m));
      for (int e = 0; e < D; ++e) {
        double o = 0.0;
        for (int j = 0; j <= i; ++j) o += s[j] / sum * v[(h * L + j) * D + e];
        worst = std::fmax(worst, std::fabs(o - out[(h * L + i) * D + e]));
      }
    }
  std::printf("flexattn consumer: max |out - naive| = %.3g (%.1f%% tiles skipped)\n", worst,
              mask.sparsity());
  return worst < 1e-4 ? 0 : 1;
}
