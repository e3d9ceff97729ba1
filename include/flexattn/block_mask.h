// BlockMask: the block-sparse structure of a mask_mod, as FlexAttention's BlockMask.
//
// The score matrix of each (b, h) is cut into block_q x block_kv tiles. Every tile is
//   skipped  - mask_mod is false everywhere: never loaded, never computed;
//   partial  - mixed: the kernel evaluates mask_mod per element;
//   full     - mask_mod is true everywhere: the kernel skips mask_mod.
// For each (b, h, q-block) the partial and full kv-blocks are listed in ascending order, and for the
// backward pass the transpose (q-blocks per kv-block). Memory is O(tiles), never O(Lq * Lkv).
// A BlockMask built with B or H of 1 broadcasts over the batch or heads of the attention call.
#pragma once

#include <cstdint>
#include <string>

#include "mods.h"
#include "tensor.h"

namespace flexattn {

struct BlockMaskOptions {
  int block_q = 128;
  int block_kv = 128;
  Device device = Device::cpu;
  // cudaStream_t for Device::cuda builds; nullptr is the legacy default stream. The lists are
  // built and kept on this stream: sparsity(), to_string() and to_cpu() wait for it; an attention
  // call on another stream must be ordered after the build by the caller (an event).
  void* stream = nullptr;
};

template <class MaskMod>
class BlockMask;
// Unit: detail::CompilerUnit (config.h), left defaulted.
template <class MaskMod, class Unit = detail::CompilerUnit>
BlockMask<MaskMod> create_block_mask(MaskMod mask_mod, int64_t B, int64_t H, int64_t q_len,
                                     int64_t kv_len, BlockMaskOptions opts = {});

// The index lists, independent of the mask_mod type. All arrays are int32 on `device`:
//   kv_num[B][H][nqb]          count of partial kv-blocks per q-block
//   kv_idx[B][H][nqb][nkvb]    their indices, ascending, first kv_num entries valid
//   full_kv_num / full_kv_idx  the same for full kv-blocks
//   q_num[B][H][nkvb], q_idx[B][H][nkvb][nqb], full_q_num, full_q_idx: the transpose
//
// Only create_block_mask makes lists the attention calls accept: it seals what it built (the
// geometry and the buffers), and every attention call checks the seal, so a hand-built
// BlockMaskData, or one whose fields were edited afterwards, is refused with an Error naming the
// field - it can never make a kernel read past its lists. Copies (and to_cpu()) stay sealed.
struct BlockMaskData {
  int64_t B = 0, H = 0, q_len = 0, kv_len = 0;
  int block_q = 0, block_kv = 0;
  int64_t nqb = 0, nkvb = 0;
  Device device = Device::cpu;
  Buffer kv_num, kv_idx, full_kv_num, full_kv_idx;
  Buffer q_num, q_idx, full_q_num, full_q_idx;

  // Allocates every list (contents unset, not sealed) for the given geometry, on `stream` for
  // Device::cuda.
  static BlockMaskData allocate(int64_t B, int64_t H, int64_t q_len, int64_t kv_len, int block_q,
                                int block_kv, Device device, void* stream = nullptr);
  // Percent of tiles skipped, as PyTorch's BlockMask.sparsity() reports it.
  double sparsity() const;
  // Picture of the tile grid per (b, h): '█' all computed, ' ' none, '░' mixed (when the grid is
  // wider than max_cols tiles, each character summarises several tiles), at most `limit` heads.
  std::string to_string(int max_rows = 20, int max_cols = 20, int limit = 4) const;
  // Host copy (same object when already on the CPU).
  BlockMaskData to_cpu() const;
  // Throws Error("flexattn::<fn>: block_mask...") unless this is a sealed BlockMaskData whose
  // fields still match what create_block_mask built.
  void check_sealed(const char* fn) const;

 private:
  template <class M, class U>
  friend BlockMask<M> create_block_mask(M, int64_t, int64_t, int64_t, int64_t, BlockMaskOptions);

  struct Seal {
    int64_t B = 0, H = 0, q_len = 0, kv_len = 0, nqb = 0, nkvb = 0;
    int block_q = 0, block_kv = 0;
    Device device = Device::cpu;
    const void* lists[8] = {};
    size_t bytes[8] = {};
  };
  void seal();
  std::string seal_mismatch() const;
  bool sealed_ = false;
  Seal seal_;
};

template <class MaskMod>
class BlockMask {
 public:
  // Pairs a mask_mod with lists made by create_block_mask. The kernels evaluate mask_mod in the
  // partial tiles only and trust the lists elsewhere, so the lists must have been built from an
  // equivalent mask_mod (create_block_mask does exactly that).
  BlockMask(MaskMod mask_mod, BlockMaskData data) : mask_mod_(mask_mod), data_(std::move(data)) {}

  int64_t batch() const { return data_.B; }
  int64_t heads() const { return data_.H; }
  int64_t q_len() const { return data_.q_len; }
  int64_t kv_len() const { return data_.kv_len; }
  int block_q() const { return data_.block_q; }
  int block_kv() const { return data_.block_kv; }
  Device device() const { return data_.device; }
  double sparsity() const { return data_.sparsity(); }
  std::string to_string(int max_rows = 20, int max_cols = 20, int limit = 4) const {
    return data_.to_string(max_rows, max_cols, limit);
  }
  const MaskMod& mask_mod() const { return mask_mod_; }
  const BlockMaskData& data() const { return data_; }

 private:
  MaskMod mask_mod_;
  BlockMaskData data_;
};

namespace detail {
// Validates the geometry of create_block_mask; throws Error naming the bad argument.
void check_block_mask_args(int64_t B, int64_t H, int64_t q_len, int64_t kv_len,
                           const BlockMaskOptions& opts);
}  // namespace detail

}  // namespace flexattn

#include "detail/block_mask_cpu.h"
#include "detail/cuda/dispatch.h"
#include "detail/runtime/dispatch.h"

namespace flexattn {

template <class MaskMod, class Unit>
BlockMask<MaskMod> create_block_mask(MaskMod mask_mod, int64_t B, int64_t H, int64_t q_len,
                                     int64_t kv_len, BlockMaskOptions opts) {
  detail::check_mask_mod<MaskMod>();
  detail::check_block_mask_args(B, H, q_len, kv_len, opts);
  BlockMaskData data = BlockMaskData::allocate(B, H, q_len, kv_len, opts.block_q, opts.block_kv,
                                               opts.device, opts.stream);
  if constexpr (is_runtime_mod<MaskMod>) {
    detail::runtime::check_pair<NoopScore, MaskMod>();
    detail::runtime::build_block_mask(mask_mod.spec(), data, opts.stream);
  } else if (opts.device == Device::cpu) {
    detail::cpu::build_block_mask(mask_mod, data);
  } else {
    detail::cuda::build_block_mask(mask_mod, data, opts.stream);
  }
  data.seal();
  return BlockMask<MaskMod>(mask_mod, std::move(data));
}

}  // namespace flexattn
