// Runs cases written by tools/gpu/check_vs_torch.py through flexattn on the GPU: the large-shape
// half of the GPU checks, with PyTorch's flex_attention (and a float64 PyTorch computation) as the
// oracles on the very same inputs.
//
//   flexattn_gpu_run_case DIR...
// Each DIR holds meta.txt (one line of key=value: variant, B, Hq, Hkv, L, D, dtype), q.bin k.bin
// v.bin dout.bin (float32, [B,H,L,D] row-major; values already representable in dtype) and, for
// document variants, doc.bin (int32, L ids). Writes out.bin lse.bin dq.bin dk.bin dv.bin (float32)
// beside them: outputs poisoned with NaN first, forward then the default backward.
//
// A paged case (meta kind=paged: Lq, page, kv_len=a,b,...; k.bin / v.bin [B,Hkv,L,D] with L the
// longest kv_len) is served from a paged KV cache: pages in shuffled order, NaN in every page row
// past a sequence's end and -1 in unused page-table entries, the first kv_len[b] - Lq tokens
// written from the host, the last Lq appended with append_kv; writes out.bin and lse.bin.
#include <flexattn/flexattn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
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

void run_paged_case(const std::string& dir, const std::map<std::string, std::string>& meta,
                    const fa::stock::VariantParams& params) {
  const std::string variant = meta.at("variant");
  const int64_t B = std::stoll(meta.at("B")), Hq = std::stoll(meta.at("Hq")),
                Hkv = std::stoll(meta.at("Hkv")), Lq = std::stoll(meta.at("Lq")),
                L = std::stoll(meta.at("L")), D = std::stoll(meta.at("D")),
                P = std::stoll(meta.at("page"));
  std::vector<int32_t> lens;
  std::stringstream ls(meta.at("kv_len"));
  for (std::string x; std::getline(ls, x, ',');) lens.push_back(std::stoi(x));
  const std::vector<float> q = read_bin<float>(dir + "/q.bin", size_t(B * Hq * Lq * D));
  const std::vector<float> k = read_bin<float>(dir + "/k.bin", size_t(B * Hkv * L * D));
  const std::vector<float> v = read_bin<float>(dir + "/v.bin", size_t(B * Hkv * L * D));
  // Pages: ceil(kv_len / P) per sequence plus a spare, ids handed out in a shuffled order.
  int64_t max_pages = 0, num_pages = 0;
  for (int32_t n : lens) {
    max_pages = std::max<int64_t>(max_pages, (n + P - 1) / P + 1);
    num_pages += (n + P - 1) / P;
  }
  std::vector<int32_t> ids(static_cast<size_t>(num_pages));
  for (int64_t i = 0; i < num_pages; ++i) ids[size_t(i)] = int32_t(i);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(12345));
  std::vector<int32_t> table(static_cast<size_t>(B * max_pages), -1);
  std::vector<int32_t> start(static_cast<size_t>(B));
  std::vector<float> kp(size_t(num_pages * Hkv * P * D), std::nanf("")), vp = kp;
  for (int64_t b = 0, next = 0; b < B; ++b) {
    for (int64_t j = 0; j < (lens[size_t(b)] + P - 1) / P; ++j) {
      table[size_t(b * max_pages + j)] = ids[size_t(next++)];
    }
    start[size_t(b)] = int32_t(lens[size_t(b)] - Lq);
    for (int64_t h = 0; h < Hkv; ++h) {
      for (int64_t t = 0; t < start[size_t(b)]; ++t) {
        const int64_t page = table[size_t(b * max_pages + t / P)];
        const size_t dst = size_t(((page * Hkv + h) * P + t % P) * D);
        const size_t src = size_t(((b * Hkv + h) * L + t) * D);
        std::copy_n(k.begin() + src, D, kp.begin() + dst);
        std::copy_n(v.begin() + src, D, vp.begin() + dst);
      }
    }
  }
  std::vector<float> kn(size_t(B * Hkv * Lq * D)), vn(kn.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t i = 0; i < Lq; ++i) {
        const size_t src = size_t(((b * Hkv + h) * L + start[size_t(b)] + i) * D);
        std::copy_n(k.begin() + src, D, kn.begin() + size_t(((b * Hkv + h) * Lq + i) * D));
        std::copy_n(v.begin() + src, D, vn.begin() + size_t(((b * Hkv + h) * Lq + i) * D));
      }
  const fa::DType dt = meta.at("dtype") == "f16" ? fa::DType::f16 : fa::DType::bf16;
  const auto dev = fa::Device::cuda;
  fa::PagedKV cache{fa::Tensor::from_host(kp.data(), {num_pages, Hkv, P, D}, dt, dev),
                    fa::Tensor::from_host(vp.data(), {num_pages, Hkv, P, D}, dt, dev),
                    fa::Tensor::from_host(table.data(), {B, max_pages}, dev),
                    fa::Tensor::from_host(start.data(), {B}, dev)};
  fa::append_kv(cache, fa::Tensor::from_host(kn.data(), {B, Hkv, Lq, D}, dt, dev),
                fa::Tensor::from_host(vn.data(), {B, Hkv, Lq, D}, dt, dev));
  const fa::Tensor qt = fa::Tensor::from_host(q.data(), {B, Hq, Lq, D}, dt, dev);
  fa::stock::visit_variant(variant, params, [&](auto score, auto mask, auto) {
    fa::AttentionOptions opts;
    opts.enable_gqa = Hq != Hkv;
    fa::Tensor out = fa::Tensor::empty({B, Hq, Lq, D}, dt, dev);
    fa::Tensor lse = fa::Tensor::empty({B, Hq, Lq}, fa::DType::f32, dev);
    out.fill(std::nanf(""));
    lse.fill(std::nanf(""));
    fa::flex_attention_into(qt.view(), cache, out.view(), lse.view(), score, mask, opts);
    write_bin(dir + "/out.bin", out.to_host());
    write_bin(dir + "/lse.bin", lse.to_host());
  });
}

void run_case(const std::string& dir) {
  auto meta = read_meta(dir + "/meta.txt");
  const std::string variant = meta.at("variant");
  if (meta.count("kind") && meta.at("kind") == "paged") {
    fa::stock::VariantParams params;
    params.num_heads = int(std::stoll(meta.at("Hq")));
    if (meta.count("window")) params.window = std::stoi(meta.at("window"));
    if (meta.count("cap")) params.cap = std::stof(meta.at("cap"));
    run_paged_case(dir, meta, params);
    std::printf("run_case %-28s %-16s paged: done\n", dir.c_str(), variant.c_str());
    return;
  }
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
