// BlockMaskData: allocation, host copies, the PyTorch-style reports (sparsity, to_string), the
// argument checks of create_block_mask and the dense mask of the overloads without a block mask.
#include "flexattn/block_mask.h"

#include <algorithm>
#include <array>
#include <climits>
#include <compare>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "device_memory.h"
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
                                      int block_q, int block_kv, Device device, void* stream) {
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
  d.kv_num = Buffer::allocate(rows * i32, device, stream);
  d.kv_idx = Buffer::allocate(tiles * i32, device, stream);
  d.full_kv_num = Buffer::allocate(rows * i32, device, stream);
  d.full_kv_idx = Buffer::allocate(tiles * i32, device, stream);
  d.q_num = Buffer::allocate(cols * i32, device, stream);
  d.q_idx = Buffer::allocate(tiles * i32, device, stream);
  d.full_q_num = Buffer::allocate(cols * i32, device, stream);
  d.full_q_idx = Buffer::allocate(tiles * i32, device, stream);
  return d;
}

namespace {
// The eight lists in one order, for the seal.
template <class D>
auto lists_of(D& d) {
  return std::array{&d.kv_num, &d.kv_idx, &d.full_kv_num, &d.full_kv_idx,
                    &d.q_num,  &d.q_idx,  &d.full_q_num,  &d.full_q_idx};
}
constexpr const char* kListNames[8] = {"kv_num", "kv_idx", "full_kv_num", "full_kv_idx",
                                       "q_num",  "q_idx",  "full_q_num",  "full_q_idx"};
}  // namespace

void BlockMaskData::seal() {
  seal_ = Seal{B, H, q_len, kv_len, nqb, nkvb, block_q, block_kv, device, {}, {}};
  const auto lists = lists_of(*this);
  for (size_t i = 0; i < lists.size(); ++i) {
    seal_.lists[i] = lists[i]->data();
    seal_.bytes[i] = lists[i]->bytes();
  }
  sealed_ = true;
}

// Empty when the fields still match the seal, else which one does not (for the Error).
std::string BlockMaskData::seal_mismatch() const {
  if (!sealed_) {
    return " was not made by create_block_mask (a hand-built BlockMaskData is not accepted: "
           "build it with create_block_mask)";
  }
  const char* why = "; the lists of a BlockMask are made by create_block_mask and must not be edited";
  const auto field = [&](const char* name, int64_t now, int64_t made) {
    return now == made ? std::string()
                       : std::string(".") + name + " is " + std::to_string(now) +
                             ", but create_block_mask made " + std::to_string(made) + why;
  };
  const std::pair<const char*, std::pair<int64_t, int64_t>> fields[] = {
      {"B", {B, seal_.B}},
      {"H", {H, seal_.H}},
      {"q_len", {q_len, seal_.q_len}},
      {"kv_len", {kv_len, seal_.kv_len}},
      {"block_q", {block_q, seal_.block_q}},
      {"block_kv", {block_kv, seal_.block_kv}},
      {"nqb", {nqb, seal_.nqb}},
      {"nkvb", {nkvb, seal_.nkvb}}};
  for (const auto& [name, values] : fields) {
    if (std::string m = field(name, values.first, values.second); !m.empty()) return m;
  }
  if (device != seal_.device) {
    return std::string(".device is ") + flexattn::to_string(device) +
           ", but create_block_mask made it for " + flexattn::to_string(seal_.device) + why;
  }
  const auto lists = lists_of(*this);
  for (size_t i = 0; i < lists.size(); ++i) {
    if (lists[i]->data() != seal_.lists[i] || lists[i]->bytes() != seal_.bytes[i] ||
        lists[i]->device() != device) {
      return std::string(".") + kListNames[i] + " is not the buffer create_block_mask made" + why;
    }
  }
  return {};
}

void BlockMaskData::check_sealed(const char* fn) const {
  if (std::string m = seal_mismatch(); !m.empty()) {
    throw Error(std::string("flexattn::") + fn + ": block_mask" + m);
  }
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
  for (Buffer* b : lists_of(d)) *b = host_copy(*b);
  // The host copy of a built, unedited mask is a built mask; anything else stays refused.
  d.sealed_ = false;
  if (seal_mismatch().empty()) d.seal();
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
  for (auto [name, v] : {std::pair{"block_q", opts.block_q}, {"block_kv", opts.block_kv}}) {
    if (v < 1 || v > kMaxBlockSize) {
      fail(std::string("BlockMaskOptions.") + name + " is " + std::to_string(v) +
           "; expected 1.." + std::to_string(kMaxBlockSize));
    }
  }
  // mask_mods take int indices: every b, h, q_idx and kv_idx must fit.
  for (auto [name, v] : {std::pair{"B", B}, {"H", H}, {"q_len", q_len}, {"kv_len", kv_len}}) {
    if (v > kMaxIndexDim) {
      fail(std::string(name) + " is " + std::to_string(v) +
           "; expected <= " + std::to_string(kMaxIndexDim) + " (mask_mod indices are int)");
    }
  }
  // The lists are int32, B * H * nqb * nkvb entries each (BlockMaskData::allocate); all four
  // factors are <= INT_MAX here, so each partial product is checked.
  const int64_t nqb = (q_len + opts.block_q - 1) / opts.block_q;
  const int64_t nkvb = (kv_len + opts.block_kv - 1) / opts.block_kv;
  int64_t tiles = 0;
  if (__builtin_mul_overflow(B * H, nqb, &tiles) || __builtin_mul_overflow(tiles, nkvb, &tiles) ||
      tiles > kMaxBlockMaskTiles) {
    fail("B * H * ceil(q_len / block_q) * ceil(kv_len / block_kv) = " + std::to_string(B) +
         " * " + std::to_string(H) + " * " + std::to_string(nqb) + " * " + std::to_string(nkvb) +
         " tiles is too many; expected at most " + std::to_string(kMaxBlockMaskTiles) +
         " (the block lists are int32): use larger BlockMaskOptions.block_q / block_kv or "
         "fewer B, H");
  }
  if (opts.device == Device::cuda && !cuda_available()) {
    fail(
        "device is cuda, but no CUDA device is available in this build/process; expected "
        "Device::cpu");
  }
}

namespace {

// The dense masks of the GPU calls without a block mask, built once per (device, Lq, Lkv) on the
// first caller's stream and kept for the life of the process (never freed: a later call on
// another stream may still be reading one). A call on another stream waits for the build through
// an event - no host synchronisation. Past kDenseCacheBytes of lists, masks are built per call.
struct DenseKey {
  int device;
  int64_t lq, lkv;
  auto operator<=>(const DenseKey&) const = default;
};
struct DenseEntry {
  BlockMask<NoopMask> mask;
  void* built_on;  // cudaStream_t of the build
  void* ready;     // cudaEvent_t recorded after it
};
constexpr size_t kDenseCacheBytes = size_t{256} << 20;

size_t list_bytes(const BlockMaskData& d) {
  size_t n = 0;
  for (const Buffer* b : lists_of(d)) n += b->bytes();
  return n;
}

BlockMask<NoopMask> cached_dense_mask_cuda(int64_t lq, int64_t lkv, void* stream) {
  static std::mutex mutex;
  static auto* cache = new std::map<DenseKey, DenseEntry>();  // leaked on purpose (see above)
  static size_t cached = 0;
  const DenseKey key{cuda_current_device(), lq, lkv};
  {
    const std::lock_guard<std::mutex> lock(mutex);
    if (auto it = cache->find(key); it != cache->end()) {
      if (it->second.built_on != stream) cuda_stream_wait(stream, it->second.ready);
      return it->second.mask;
    }
  }
  BlockMaskOptions opts;
  opts.device = Device::cuda;
  opts.stream = stream;
  BlockMask<NoopMask> mask = create_block_mask(NoopMask{}, 1, 1, lq, lkv, opts);
  const size_t bytes = list_bytes(mask.data());
  const std::lock_guard<std::mutex> lock(mutex);
  if (cached + bytes <= kDenseCacheBytes && cache->find(key) == cache->end()) {
    cache->emplace(key, DenseEntry{mask, stream, cuda_record_event(stream)});
    cached += bytes;
  }
  return mask;
}

}  // namespace

// Called after the front door checked q and k (check_front_door_inputs / check_backward_inputs).
BlockMask<NoopMask> dense_block_mask(const Tensor& q, const Tensor& k, void* stream) {
  if (q.device() == Device::cuda) return cached_dense_mask_cuda(q.size(2), k.size(2), stream);
  BlockMaskOptions opts;
  opts.device = q.device();
  return create_block_mask(NoopMask{}, 1, 1, q.size(2), k.size(2), opts);
}

}  // namespace detail
}  // namespace flexattn
