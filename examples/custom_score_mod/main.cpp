// A custom score_mod: a per-head learned-style bias table plus tanh soft-capping, written once,
// generic in T so the backward pass differentiates it through flexattn::Dual.
#include <flexattn/flexattn.h>

#include <cstdio>
#include <random>
#include <vector>

struct BiasedSoftcap {
  const float* head_bias;  // one bias per query head
  float cap;
  template <class T>
  FLEXATTN_HD T operator()(T score, int /*b*/, int h, int q_idx, int kv_idx) const {
    const float distance = float(q_idx - kv_idx);
    return cap * flexattn::tanh((score + head_bias[h] - 0.01f * distance) / cap);
  }
};

int main() {
  const int64_t H = 4, L = 257, D = 32;
  std::vector<float> bias = {0.5f, -0.25f, 0.0f, 1.0f};
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> x(size_t(H * L * D));
  auto random = [&] {
    for (float& v : x) v = normal(rng);
    return flexattn::Tensor::from_host(x.data(), {1, H, L, D}, flexattn::DType::f32);
  };
  flexattn::Tensor q = random(), k = random(), v = random(), dout = random();

  BiasedSoftcap score_mod{bias.data(), 20.0f};
  auto mask = flexattn::create_block_mask(flexattn::causal(), 1, 1, L, L);
  auto [out, lse] = flexattn::flex_attention(q, k, v, score_mod, mask);
  auto g = flexattn::flex_attention_backward(q, k, v, out, lse, dout, score_mod, mask);
  std::printf("custom score_mod: out[0] = %f, dk[0] = %f\n", out.to_host()[0], g.dk.to_host()[0]);
}
