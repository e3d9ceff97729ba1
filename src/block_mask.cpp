// BlockMaskData: allocation, host copies, the PyTorch-style reports (sparsity, to_string), the
// argument checks of create_block_mask and the dense mask of the overloads without a block mask.
#include "flexattn/block_mask.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>
#include <vector>

#include "flexattn/attention.h"

namespace flexattn {
namespace {

std::vector<int32_t> host_ints(const Buffer& b) {
  std::vector<int32_t> v(b.bytes() / sizeof(int32_t));
  b.copy_to_host(v.data(), v.size() * sizeof(int32_t));
  return v;
}

Buffer host_copy(const Buffer& b) {
  Buffer h = Buffer::allocate(b.bytes(), Device::cpu);
  b.copy_to_host(h.data(), b.bytes());
  return h;
}

}  // namespace

BlockMaskData BlockMaskData::allocate(int64_t B, int64_t H, int64_t q_len, int64_t kv_len,
                                      int block_q, int block_kv, Device device) {
  BlockMaskData d;
  d.B = B;
  d.H = H;
  d.q_len = q_len;
  d.kv_len = kv_len;
  d.block_q = block_q;
  d.block_kv = block_kv;
  d.nqb = (q_len + block_q - 1) / block_q;
  d.nkvb = (kv_len + block_kv - 1) / block_kv;
  d.device = device;
  const size_t i32 = sizeof(int32_t);
  const size_t rows = static_cast<size_t>(B * H * d.nqb);   // (b, h, q-block)
  const size_t cols = static_cast<size_t>(B * H * d.nkvb);  // (b, h, kv-block)
  const size_t tiles = rows * static_cast<size_t>(d.nkvb);
  d.kv_num = Buffer::allocate(rows * i32, device);
  d.kv_idx = Buffer::allocate(tiles * i32, device);
  d.full_kv_num = Buffer::allocate(rows * i32, device);
  d.full_kv_idx = Buffer::allocate(tiles * i32, device);
  d.q_num = Buffer::allocate(cols * i32, device);
  d.q_idx = Buffer::allocate(tiles * i32, device);
  d.full_q_num = Buffer::allocate(cols * i32, device);
  d.full_q_idx = Buffer::allocate(tiles * i32, device);
  return d;
}

double BlockMaskData::sparsity() const {
  // PyTorch: 100 * (1 - computed tiles / all tiles), computed = partial + full. (Recent PyTorch
  // divides by B*H*Lq*Lkv elements instead of tiles; the two agree when the lengths are multiples
  // of the block sizes, and only this one stays within [0, 100] for ragged lengths.)
  const std::vector<int32_t> partial = host_ints(kv_num), full = host_ints(full_kv_num);
  int64_t computed = 0;
  for (int32_t n : partial) computed += n;
  for (int32_t n : full) computed += n;
  const double all = static_cast<double>(B * H * nqb * nkvb);
  return 100.0 * (1.0 - static_cast<double>(computed) / all);
}

std::string BlockMaskData::to_string(int max_rows, int max_cols, int limit) const {
  const std::vector<int32_t> pn = host_ints(kv_num), pi = host_ints(kv_idx);
  const std::vector<int32_t> fn = host_ints(full_kv_num), fi = host_ints(full_kv_idx);
  // As PyTorch's BlockMask.to_string: each character pair summarises row_step x col_step tiles;
  // a non-positive max_rows / max_cols draws one pair per tile.
  const int64_t row_step = max_rows > 0 ? std::max<int64_t>(1, (nqb + max_rows - 1) / max_rows) : 1;
  const int64_t col_step =
      max_cols > 0 ? std::max<int64_t>(1, (nkvb + max_cols - 1) / max_cols) : 1;
  // Pieces joined by newlines, as PyTorch joins them: one per (b, h) shown, then "..." if any
  // were left out.
  std::vector<std::string> pieces;
  std::vector<unsigned char> computed(static_cast<size_t>(nqb * nkvb));  // (nqb, nkvb)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    if (bh == limit) {
      pieces.emplace_back("...");
      break;
    }
    std::fill(computed.begin(), computed.end(), 0);
    for (int64_t qb = 0; qb < nqb; ++qb) {
      const int64_t row = bh * nqb + qb;
      for (int32_t j = 0; j < pn[row]; ++j) computed[qb * nkvb + pi[row * nkvb + j]] = 1;
      for (int32_t j = 0; j < fn[row]; ++j) computed[qb * nkvb + fi[row * nkvb + j]] = 1;
    }
    std::string vis = "(" + std::to_string(bh / H) + ", " + std::to_string(bh % H) + ")\n";
    for (int64_t r = 0; r < nqb; r += row_step) {
      for (int64_t c = 0; c < nkvb; c += col_step) {
        int64_t on = 0, n = 0;
        for (int64_t i = r; i < std::min(r + row_step, nqb); ++i) {
          for (int64_t j = c; j < std::min(c + col_step, nkvb); ++j, ++n) {
            on += computed[i * nkvb + j];
          }
        }
        vis += on == n ? "██" : on == 0 ? "  " : "░░";
      }
      vis += "\n";
    }
    pieces.push_back(std::move(vis));
  }
  std::string out;
  for (size_t i = 0; i < pieces.size(); ++i) out += (i ? "\n" : "") + pieces[i];
  return out;
}

BlockMaskData BlockMaskData::to_cpu() const {
  if (device == Device::cpu) return *this;
  BlockMaskData d = *this;
  d.device = Device::cpu;
  d.kv_num = host_copy(kv_num);
  d.kv_idx = host_copy(kv_idx);
  d.full_kv_num = host_copy(full_kv_num);
  d.full_kv_idx = host_copy(full_kv_idx);
  d.q_num = host_copy(q_num);
  d.q_idx = host_copy(q_idx);
  d.full_q_num = host_copy(full_q_num);
  d.full_q_idx = host_copy(full_q_idx);
  return d;
}

namespace detail {

namespace {
[[noreturn]] void fail(const std::string& msg) {
  throw Error("flexattn::create_block_mask: " + msg);
}
void check_at_least_1(const char* name, int64_t v) {
  if (v < 1) fail(std::string(name) + " is " + std::to_string(v) + "; expected >= 1");
}
}  // namespace

void check_block_mask_args(int64_t B, int64_t H, int64_t q_len, int64_t kv_len,
                           const BlockMaskOptions& opts) {
  check_at_least_1("B", B);
  check_at_least_1("H", H);
  check_at_least_1("q_len", q_len);
  check_at_least_1("kv_len", kv_len);
  check_at_least_1("block_q", opts.block_q);
  check_at_least_1("block_kv", opts.block_kv);
  // mask_mods take int indices: every b, h, q_idx and kv_idx must fit.
  for (auto [name, v] : {std::pair{"B", B}, {"H", H}, {"q_len", q_len}, {"kv_len", kv_len}}) {
    if (v > INT_MAX) {
      fail(std::string(name) + " is " + std::to_string(v) +
           "; expected <= " + std::to_string(INT_MAX) + " (mask_mod indices are int)");
    }
  }
  if (opts.device == Device::cuda && !cuda_available()) {
    fail(
        "device is cuda, but no CUDA device is available in this build/process; expected "
        "Device::cpu");
  }
}

BlockMask<NoopMask> dense_block_mask(const Tensor& q, const Tensor& k) {
  // Runs before the attention call checks its inputs, so a bad rank is reported here.
  if (q.rank() != 4 || k.rank() != 4) {
    throw Error(std::string("flexattn::flex_attention: ") + (q.rank() != 4 ? "q" : "k") +
                " must have rank 4 [B, H, L, D]; got rank " +
                std::to_string(q.rank() != 4 ? q.rank() : k.rank()));
  }
  BlockMaskOptions opts;
  opts.device = q.device();
  return create_block_mask(NoopMask{}, 1, 1, q.size(2), k.size(2), opts);
}

}  // namespace detail
}  // namespace flexattn
