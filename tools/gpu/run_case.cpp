// Runs cases written by tools/gpu/check_vs_torch.py through flexattn on the GPU: the large-shape
// half of the GPU checks, with PyTorch's flex_attention (and a float64 PyTorch computation) as the
// oracles on the very same inputs.
//
//   flexattn_gpu_run_case DIR...
// Each DIR holds meta.txt (one line of key=value: variant, B, Hq, Hkv, L, D, dtype), q.bin k.bin
// v.bin dout.bin (float32, [B,H,L,D] row-major; values already representable in dtype) and, for
// document variants, doc.bin (int32, L ids). Writes out.bin lse.bin dq.bin dk.bin dv.bin (float32)
// beside them: outputs poisoned with NaN first, forward then the default backward.
#include <flexattn/flexattn.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tools/stock_variants.h"

namespace fa = flexattn;

namespace {

template <class T>
std::vector<T> read_bin(const std::string& path, size_t n) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::vector<T> x(n);
  f.read(reinterpret_cast<char*>(x.data()), std::streamsize(n * sizeof(T)));
  if (size_t(f.gcount()) != n * sizeof(T)) throw std::runtime_error("short file " + path);
  return x;
}

void write_bin(const std::string& path, const std::vector<float>& x) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(x.data()), std::streamsize(x.size() * sizeof(float)));
  if (!f) throw std::runtime_error("cannot write " + path);
}

std::map<std::string, std::string> read_meta(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::map<std::string, std::string> m;
  std::string tok;
  while (f >> tok) {
    const auto eq = tok.find('=');
    if (eq != std::string::npos) m[tok.substr(0, eq)] = tok.substr(eq + 1);
  }
  return m;
}

void run_case(const std::string& dir) {
  auto meta = read_meta(dir + "/meta.txt");
  const std::string variant = meta.at("variant");
  const int64_t B = std::stoll(meta.at("B")), Hq = std::stoll(meta.at("Hq")),
                Hkv = std::stoll(meta.at("Hkv")), L = std::stoll(meta.at("L")),
                D = std::stoll(meta.at("D"));
  const fa::DType dt = meta.at("dtype") == "f16" ? fa::DType::f16 : fa::DType::bf16;
  const size_t nq = size_t(B * Hq * L * D), nkv = size_t(B * Hkv * L * D);
  auto upload = [&](const char* name, size_t n, int64_t H) {
    const std::vector<float> x = read_bin<float>(dir + "/" + name, n);
    return fa::Tensor::from_host(x.data(), {B, H, L, D}, dt, fa::Device::cuda);
  };
  const fa::Tensor q = upload("q.bin", nq, Hq), k = upload("k.bin", nkv, Hkv),
                   v = upload("v.bin", nkv, Hkv), dout = upload("dout.bin", nq, Hq);

  fa::stock::VariantParams params;
  params.num_heads = int(Hq);
  fa::Buffer doc_dev;
  if (fa::stock::needs_doc_ids(variant)) {
    const std::vector<int32_t> doc = read_bin<int32_t>(dir + "/doc.bin", size_t(L));
    doc_dev = fa::Buffer::from_host(doc.data(), doc.size() * sizeof(int32_t), fa::Device::cuda);
    params.doc_ids = static_cast<const int32_t*>(doc_dev.data());
  }
  if (meta.count("window")) params.window = std::stoi(meta.at("window"));
  if (meta.count("cap")) params.cap = std::stof(meta.at("cap"));

  const auto t0 = std::chrono::steady_clock::now();
  fa::stock::visit_variant(variant, params, [&](auto score, auto mask, auto) {
    fa::BlockMaskOptions bo;
    bo.device = fa::Device::cuda;
    const auto bm = fa::create_block_mask(mask, 1, 1, L, L, bo);
    fa::AttentionOptions opts;
    opts.enable_gqa = Hq != Hkv;
    fa::Tensor out = fa::Tensor::empty({B, Hq, L, D}, dt, fa::Device::cuda);
    fa::Tensor lse = fa::Tensor::empty({B, Hq, L}, fa::DType::f32, fa::Device::cuda);
    fa::Tensor dq = fa::Tensor::empty(q.shape(), dt, fa::Device::cuda);
    fa::Tensor dk = fa::Tensor::empty(k.shape(), dt, fa::Device::cuda);
    fa::Tensor dv = fa::Tensor::empty(v.shape(), dt, fa::Device::cuda);
    for (fa::Tensor* t : {&out, &lse, &dq, &dk, &dv}) t->fill(std::nanf(""));
    fa::flex_attention_into(q.view(), k.view(), v.view(), out.view(), lse.view(), score, bm, opts);
    fa::flex_attention_backward_into(q.view(), k.view(), v.view(), out.view(), lse.view(),
                                     dout.view(), dq.view(), dk.view(), dv.view(), score, bm,
                                     opts);
    write_bin(dir + "/out.bin", out.to_host());
    write_bin(dir + "/lse.bin", lse.to_host());
    write_bin(dir + "/dq.bin", dq.to_host());
    write_bin(dir + "/dk.bin", dk.to_host());
    write_bin(dir + "/dv.bin", dv.to_host());
  });
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("run_case %-28s %-16s B=%lld Hq=%lld Hkv=%lld L=%lld D=%lld: done in %.2f s\n",
              dir.c_str(), variant.c_str(), (long long)B, (long long)Hq, (long long)Hkv,
              (long long)L, (long long)D, s);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CASE_DIR...\n", argv[0]);
    return 2;
  }
  if (!fa::cuda_available()) {
    std::fprintf(stderr, "run_case: no CUDA device visible\n");
    return 3;
  }
  int failed = 0;
  for (int i = 1; i < argc; ++i) {
    try {
      run_case(argv[i]);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "run_case %s: FAILED: %s\n", argv[i], e.what());
      ++failed;
    }
  }
  return failed ? 1 : 0;
}
