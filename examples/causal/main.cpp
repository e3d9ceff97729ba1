// Causal self-attention, forward and backward, on the CPU.
#include <flexattn/flexattn.h>

#include <cstdio>
#include <random>
#include <vector>

int main() {
  const int64_t B = 1, H = 4, L = 512, D = 64;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  auto random = [&](std::vector<int64_t> shape) {
    std::vector<float> x(size_t(shape[0] * shape[1] * shape[2] * shape[3]));
    for (float& v : x) v = normal(rng);
    return flexattn::Tensor::from_host(x.data(), shape, flexattn::DType::f32);
  };
  flexattn::Tensor q = random({B, H, L, D}), k = random({B, H, L, D}), v = random({B, H, L, D});

  // Tiles above the diagonal are skipped; only diagonal tiles evaluate the mask per element.
  auto mask = flexattn::create_block_mask(flexattn::causal(), 1, 1, L, L);
  auto [out, lse] = flexattn::flex_attention(q, k, v, mask);

  flexattn::Tensor dout = random({B, H, L, D});
  auto grads = flexattn::flex_attention_backward(q, k, v, out, lse, dout, mask);

  std::printf("causal: %.1f%% of tiles skipped, out[0] = %f, dq[0] = %f\n", mask.sparsity(),
              out.to_host()[0], grads.dq.to_host()[0]);
}
