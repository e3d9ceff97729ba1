// Document packing: several sequences in one batch row attend only within themselves (and
// causally). The document ids live on the tensors' device.
#include <flexattn/flexattn.h>

#include <cstdio>
#include <random>
#include <vector>

int main() {
  const int64_t H = 8, L = 1000, D = 64;
  std::vector<int32_t> doc_ids(L);
  const int64_t ends[] = {120, 450, 451, 800, L};  // five documents of uneven length
  for (int64_t i = 0, d = 0; i < L; ++i) {
    while (i >= ends[d]) ++d;
    doc_ids[size_t(i)] = int32_t(d);
  }
  auto mask_mod = flexattn::and_masks(flexattn::causal(), flexattn::document(doc_ids.data()));
  auto mask = flexattn::create_block_mask(mask_mod, 1, 1, L, L, {.block_q = 64, .block_kv = 64});
  std::printf("%s\nsparsity %.1f%%\n", mask.to_string().c_str(), mask.sparsity());

  std::mt19937 rng(2);
  std::normal_distribution<float> normal;
  std::vector<float> x(size_t(H * L * D));
  auto random = [&] {
    for (float& v : x) v = normal(rng);
    return flexattn::Tensor::from_host(x.data(), {1, H, L, D}, flexattn::DType::bf16);
  };
  flexattn::Tensor q = random(), k = random(), v = random();
  auto [out, lse] = flexattn::flex_attention(q, k, v, mask);
  std::printf("out is %s [1, %lld, %lld, %lld]\n", flexattn::to_string(out.dtype()), (long long)H,
              (long long)L, (long long)D);
}
