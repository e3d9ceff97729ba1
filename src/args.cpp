// Validation of attention arguments: every bad input becomes a flexattn::Error naming the function
// the user called, the argument and the expected value, raised before any output is allocated or
// written. The limits are documented in detail/args.h.
#include <climits>
#include <cmath>
#include <sstream>
#include <string>

#include "flexattn/attention.h"
#include "flexattn/paged.h"

namespace flexattn::detail {
namespace {

[[noreturn]] void fail(const std::string& fn, const std::string& msg) {
  throw Error("flexattn::" + fn + ": " + msg);
}

// The dims a view has; a rank outside 0..kMaxRank (a hand-built view) prints its first dims only.
std::string shape_str(const TensorView& t) {
  const int rank = t.rank < 0 ? 0 : (t.rank > kMaxRank ? kMaxRank : t.rank);
  std::ostringstream s;
  s << "[";
  for (int i = 0; i < rank; ++i) s << (i ? ", " : "") << t.shape[i];
  if (t.rank > kMaxRank) s << ", ...";
  s << "]";
  return s.str();
}

// Rank, dims, index arithmetic, data, unit last stride, dtype and device of one view.
void check_view(const std::string& fn, const char* name, const TensorView& t, int rank,
                const char* layout, DType dtype, const char* dtype_from, Device device,
                const char* device_from) {
  const std::string n = name;
  if (t.rank != rank) {
    fail(fn, n + " must have rank " + std::to_string(rank) + " " + layout + "; got rank " +
                 std::to_string(t.rank) + (t.rank >= 0 ? " " + shape_str(t) : std::string()));
  }
  for (int i = 0; i < rank; ++i) {
    if (t.shape[i] < 0) {
      fail(fn, n + ".shape[" + std::to_string(i) + "] must be >= 0; got " +
                   std::to_string(t.shape[i]) + " " + shape_str(t));
    }
  }
  const int64_t numel = t.numel();
  if (numel < 0 || numel > kMaxViewElements) {
    fail(fn, n + " has shape " + shape_str(t) + "; expected at most 2^56 elements");
  }
  // The kernels address element (i0, i1, i2, i3) as data + (sum i_k * stride_k) * element size
  // in int64: the largest such offset must fit.
  if (numel > 0) {
    const int64_t esize = static_cast<int64_t>(dtype_size(t.dtype));
    int64_t off = 0;
    bool overflow = false;
    for (int i = 0; i < rank; ++i) {
      if (t.shape[i] == 1) continue;
      int64_t step = 0;
      const int64_t stride = t.stride[i] < 0 ? -t.stride[i] : t.stride[i];  // INT64_MIN: below
      overflow = overflow || t.stride[i] == INT64_MIN ||
                 __builtin_mul_overflow(t.shape[i] - 1, stride, &step) ||
                 __builtin_add_overflow(off, step, &off);
    }
    int64_t bytes = 0;
    if (overflow || __builtin_mul_overflow(off, esize, &bytes)) {
      std::ostringstream s;
      s << n << " has shape " << shape_str(t) << " and strides [";
      for (int i = 0; i < rank; ++i) s << (i ? ", " : "") << t.stride[i];
      s << "]; expected strides whose largest byte offset, sum (shape - 1) * |stride| * "
        << esize << ", fits int64";
      fail(fn, s.str());
    }
  }
  if (t.data == nullptr && numel != 0) {
    fail(fn, n + " has no data (null pointer) but " + std::to_string(numel) + " elements");
  }
  if (t.shape[rank - 1] > 1 && t.stride[rank - 1] != 1) {
    fail(fn, n + " must be contiguous in its last dim (stride 1); got stride " +
                 std::to_string(t.stride[rank - 1]));
  }
  if (t.dtype != dtype) {
    fail(fn, n + " has dtype " + to_string(t.dtype) + "; expected " + to_string(dtype) + " (" +
                 dtype_from + ")");
  }
  if (t.device != device) {
    fail(fn, n + " is on " + to_string(t.device) + "; expected " + to_string(device) + " (" +
                 device_from + ")");
  }
}

void check_dim(const std::string& fn, const char* name, const TensorView& t, int dim,
               const char* dim_name, int64_t expected, const char* expected_from) {
  if (t.shape[dim] != expected) {
    fail(fn, std::string(name) + ".shape[" + std::to_string(dim) + "] (" + dim_name + ") is " +
                 std::to_string(t.shape[dim]) + "; expected " + std::to_string(expected) + " (" +
                 expected_from + ")");
  }
}

void check_shape(const std::string& fn, const char* name, const TensorView& t,
                 std::initializer_list<int64_t> expected, const char* layout) {
  int i = 0;
  for (int64_t e : expected) {
    if (t.shape[i] != e) {
      std::ostringstream s;
      s << name << " has shape " << shape_str(t) << "; expected [";
      int j = 0;
      for (int64_t x : expected) s << (j++ ? ", " : "") << x;
      s << "] " << layout;
      fail(fn, s.str());
    }
    ++i;
  }
}

// q's rank, dtype and device, then its view; fills B, Hq, Lq, D.
void check_q(const std::string& fn, const TensorView& q, AttnDims& d) {
  if (q.rank != 4) {
    fail(fn, "q must have rank 4 [B, Hq, Lq, D]; got rank " + std::to_string(q.rank) +
                 (q.rank >= 0 ? " " + shape_str(q) : std::string()));
  }
  if (q.dtype != DType::f32 && q.dtype != DType::f16 && q.dtype != DType::bf16) {
    fail(fn, std::string("q has dtype ") +
                 (q.dtype == DType::i32 ? "i32" : "unknown") + "; expected f32, f16 or bf16");
  }
  if (q.device != Device::cpu && q.device != Device::cuda) {
    fail(fn, "q has an unknown device; expected cpu or cuda");
  }
  check_view(fn, "q", q, 4, "[B, Hq, Lq, D]", q.dtype, "q's dtype", q.device, "q's device");
  d.B = q.shape[0];
  d.Hq = q.shape[1];
  d.Lq = q.shape[2];
  d.D = q.shape[3];
  const char* names[4] = {"B", "Hq", "Lq", "D"};
  for (int i = 0; i < 4; ++i) {
    if (q.shape[i] < 1) {
      fail(fn, std::string("q.shape[") + std::to_string(i) + "] (" + names[i] +
                   ") must be >= 1; got " + std::to_string(q.shape[i]));
    }
  }
}

// score_mods and mask_mods take int b, h, q_idx and kv_idx: checked before the dims are compared
// with each other, so a size past int is reported as such. hkv_name / lkv_name say where Hkv and
// Lkv came from.
void check_index_dims(const std::string& fn, const AttnDims& d, const char* hkv_name,
                      const char* lkv_name) {
  for (auto [name, value] : {std::pair{"q.shape[0] (B)", d.B}, {"q.shape[1] (Hq)", d.Hq},
                             {"q.shape[2] (Lq)", d.Lq}, {hkv_name, d.Hkv}, {lkv_name, d.Lkv}}) {
    if (value > kMaxIndexDim) {
      fail(fn, std::string(name) + " is " + std::to_string(value) + "; expected <= " +
                   std::to_string(kMaxIndexDim) + " (score_mod / mask_mod indices are int)");
    }
  }
}

// The rules every call shares once the dims are known and consistent: GQA, head dims, the device,
// the scale (resolved into d.scale).
void check_dims(const std::string& fn, AttnDims& d, Device device, const AttentionOptions& opts) {
  if (d.Hq % d.Hkv != 0) {
    fail(fn, "q heads (Hq = " + std::to_string(d.Hq) + ") must be a multiple of k/v heads (Hkv = " +
                 std::to_string(d.Hkv) + ")");
  }
  if (d.Hq != d.Hkv && !opts.enable_gqa) {
    fail(fn, "q has " + std::to_string(d.Hq) + " heads and k/v " + std::to_string(d.Hkv) +
                 "; set AttentionOptions.enable_gqa = true for grouped-query attention");
  }
  constexpr int64_t kMaxHeadDim = 256;
  if (d.D > kMaxHeadDim) {
    fail(fn, "head dim D = " + std::to_string(d.D) + " is not supported; expected 1.." +
                 std::to_string(kMaxHeadDim));
  }
  if (d.Dv > kMaxHeadDim) {
    fail(fn, "value head dim Dv = " + std::to_string(d.Dv) + " is not supported; expected 1.." +
                 std::to_string(kMaxHeadDim));
  }
  if (device == Device::cuda && !cuda_available()) {
    fail(fn, "q is on cuda, but this build of flexattn has no CUDA backend or no GPU is visible");
  }
  if (!std::isfinite(opts.scale)) {
    fail(fn, "AttentionOptions.scale is " + std::to_string(opts.scale) +
                 "; expected a finite value (0 means 1/sqrt(D))");
  }
  d.scale = opts.scale != 0.0f ? opts.scale : 1.0f / std::sqrt(static_cast<float>(d.D));
}

// q, k, v and the options, everything but the block mask.
AttnDims check_qkv(const std::string& fn, const TensorView& q, const TensorView& k,
                   const TensorView& v, const AttentionOptions& opts) {
  AttnDims d;
  check_q(fn, q, d);
  check_view(fn, "k", k, 4, "[B, Hkv, Lkv, D]", q.dtype, "q's dtype", q.device, "q's device");
  check_view(fn, "v", v, 4, "[B, Hkv, Lkv, Dv]", q.dtype, "q's dtype", q.device, "q's device");
  d.Hkv = k.shape[1];
  d.Lkv = k.shape[2];
  d.Dv = v.shape[3];
  if (d.Hkv < 1) fail(fn, "k.shape[1] (Hkv) must be >= 1; got " + std::to_string(d.Hkv));
  if (d.Lkv < 1) fail(fn, "k.shape[2] (Lkv) must be >= 1; got " + std::to_string(d.Lkv));
  if (d.Dv < 1) fail(fn, "v.shape[3] (Dv) must be >= 1; got " + std::to_string(d.Dv));
  check_index_dims(fn, d, "k.shape[1] (Hkv)", "k.shape[2] (Lkv)");
  check_dim(fn, "k", k, 0, "B", d.B, "q's batch");
  check_dim(fn, "k", k, 3, "D", d.D, "q's head dim");
  check_dim(fn, "v", v, 0, "B", d.B, "q's batch");
  check_dim(fn, "v", v, 1, "Hkv", d.Hkv, "k's heads");
  check_dim(fn, "v", v, 2, "Lkv", d.Lkv, "k's length");
  check_dims(fn, d, q.device, opts);
  return d;
}

// The block mask: made by create_block_mask and not edited since (its seal: the geometry and
// lists are what the builder made, so no kernel sizes or indexes anything from a bad field), then
// against the resolved dims.
void check_mask(const std::string& fn, const BlockMaskData& mask, const AttnDims& d,
                Device device) {
  mask.check_sealed(fn.c_str());
  if (mask.device != device) {
    fail(fn, std::string("block_mask is on ") + to_string(mask.device) + "; expected " +
                 to_string(device) + " (q's device)");
  }
  if (mask.q_len != d.Lq || mask.kv_len != d.Lkv) {
    fail(fn, "block_mask was built for q_len " + std::to_string(mask.q_len) + ", kv_len " +
                 std::to_string(mask.kv_len) + "; expected Lq " + std::to_string(d.Lq) +
                 ", Lkv " + std::to_string(d.Lkv));
  }
  if (mask.B != 1 && mask.B != d.B) {
    fail(fn, "block_mask batch is " + std::to_string(mask.B) + "; expected 1 or " +
                 std::to_string(d.B) + " (q's batch)");
  }
  if (mask.H != 1 && mask.H != d.Hq) {
    fail(fn, "block_mask heads is " + std::to_string(mask.H) + "; expected 1 or " +
                 std::to_string(d.Hq) + " (q's heads)");
  }
}

// The forward's out [B, Hq, Lq, Dv] (q's dtype) and lse [B, Hq, Lq] (f32).
void check_out_lse(const std::string& fn, const TensorView& q, const TensorView& out,
                   const TensorView& lse, const AttnDims& d) {
  check_view(fn, "out", out, 4, "[B, Hq, Lq, Dv]", q.dtype, "q's dtype", q.device, "q's device");
  check_shape(fn, "out", out, {d.B, d.Hq, d.Lq, d.Dv}, "[B, Hq, Lq, Dv]");
  check_view(fn, "lse", lse, 3, "[B, Hq, Lq]", DType::f32, "lse is always f32", q.device,
             "q's device");
  check_shape(fn, "lse", lse, {d.B, d.Hq, d.Lq}, "[B, Hq, Lq]");
}

// out, lse and dout as the backward reads them.
void check_backward_tensors(const std::string& fn, const TensorView& q, const TensorView& out,
                            const TensorView& lse, const TensorView& dout, const AttnDims& d) {
  auto same_as_q = [&](const char* name, const TensorView& t) {
    check_view(fn, name, t, 4, "[B, Hq, Lq, Dv]", q.dtype, "q's dtype", q.device, "q's device");
    check_shape(fn, name, t, {d.B, d.Hq, d.Lq, d.Dv}, "[B, Hq, Lq, Dv]");
  };
  same_as_q("out", out);
  same_as_q("dout", dout);
  check_view(fn, "lse", lse, 3, "[B, Hq, Lq]", DType::f32, "lse is always f32", q.device,
             "q's device");
  check_shape(fn, "lse", lse, {d.B, d.Hq, d.Lq}, "[B, Hq, Lq]");
}

// The four tensors of a paged cache against each other, in `dtype` on `device`.
struct CacheDims {
  int64_t num_pages = 0, Hkv = 0, page_size = 0, D = 0, Dv = 0, B = 0, max_pages = 0;
};
CacheDims check_cache(const std::string& fn, const PagedKV& kv, DType dtype, const char* dtype_from,
                      Device device) {
  const TensorView k = kv.k_pages.view(), v = kv.v_pages.view();
  const TensorView pt = kv.page_table.view(), len = kv.kv_len.view();
  check_view(fn, "k_pages", k, 4, "[num_pages, Hkv, page_size, D]", dtype, dtype_from, device,
             "q's device");
  check_view(fn, "v_pages", v, 4, "[num_pages, Hkv, page_size, Dv]", dtype, dtype_from, device,
             "q's device");
  check_view(fn, "page_table", pt, 2, "[B, max_pages_per_seq]", DType::i32,
             "page ids are int32", device, "q's device");
  check_view(fn, "kv_len", len, 1, "[B]", DType::i32, "lengths are int32", device, "q's device");
  CacheDims c{k.shape[0], k.shape[1], k.shape[2], k.shape[3], v.shape[3], pt.shape[0],
              pt.shape[1]};
  for (auto [name, value] :
       {std::pair{"k_pages.shape[0] (num_pages)", c.num_pages}, {"k_pages.shape[1] (Hkv)", c.Hkv},
        {"k_pages.shape[2] (page_size)", c.page_size}, {"k_pages.shape[3] (D)", c.D},
        {"v_pages.shape[3] (Dv)", c.Dv}, {"page_table.shape[1] (max_pages_per_seq)", c.max_pages},
        {"page_table.shape[0] (B)", c.B}}) {
    if (value < 1) fail(fn, std::string(name) + " must be >= 1; got " + std::to_string(value));
  }
  check_dim(fn, "v_pages", v, 0, "num_pages", c.num_pages, "k_pages' pages");
  check_dim(fn, "v_pages", v, 1, "Hkv", c.Hkv, "k_pages' heads");
  check_dim(fn, "v_pages", v, 2, "page_size", c.page_size, "k_pages' page size");
  check_dim(fn, "kv_len", len, 0, "B", c.B, "page_table's batch");
  if (c.num_pages > kMaxIndexDim || c.max_pages > kMaxIndexDim / c.page_size) {
    fail(fn, "page_table.shape[1] * page_size (" + std::to_string(c.max_pages) + " * " +
                 std::to_string(c.page_size) + ") and num_pages must be <= " +
                 std::to_string(kMaxIndexDim) + " (kv_idx and page ids are int)");
  }
  return c;
}

}  // namespace

AttnDims check_paged_inputs(const TensorView& q, const PagedKV& kv, const AttentionOptions& opts) {
  const std::string fn = "flex_attention";
  AttnDims d;
  check_q(fn, q, d);
  const CacheDims c = check_cache(fn, kv, q.dtype, "q's dtype", q.device);
  d.Hkv = c.Hkv;
  d.Lkv = c.max_pages * c.page_size;
  d.Dv = c.Dv;
  check_index_dims(fn, d, "k_pages.shape[1] (Hkv)", "max_pages_per_seq * page_size");
  if (c.B != d.B) {
    fail(fn, "page_table.shape[0] (B) is " + std::to_string(c.B) + "; expected " +
                 std::to_string(d.B) + " (q's batch)");
  }
  if (c.D != d.D) {
    fail(fn, "k_pages.shape[3] (D) is " + std::to_string(c.D) + "; expected " +
                 std::to_string(d.D) + " (q's head dim)");
  }
  check_dims(fn, d, q.device, opts);
  return d;
}

PagedArgs make_paged_args(const TensorView& q, const PagedKV& kv, const TensorView& out,
                          const TensorView& lse, const AttentionOptions& opts) {
  const std::string fn = "flex_attention";
  PagedArgs a;
  a.dims = check_paged_inputs(q, kv, opts);
  const AttnDims& d = a.dims;
  check_out_lse(fn, q, out, lse, d);
  a.q = q;
  a.k_pages = kv.k_pages.view();
  a.v_pages = kv.v_pages.view();
  a.page_table = kv.page_table.view();
  a.kv_len = kv.kv_len.view();
  a.out = out;
  a.lse = lse;
  a.num_pages = kv.k_pages.size(0);
  a.page_size = kv.k_pages.size(2);
  a.max_pages = kv.page_table.size(1);
  a.stream = opts.stream;
  return a;
}

AppendArgs make_append_args(const PagedKV& kv, const TensorView& k_new, const TensorView& v_new,
                            const AttentionOptions& opts) {
  const std::string fn = "append_kv";
  const DType dt = kv.k_pages.dtype();
  if (dt != DType::f32 && dt != DType::f16 && dt != DType::bf16) {
    fail(fn, std::string("k_pages has dtype ") + to_string(dt) + "; expected f32, f16 or bf16");
  }
  const Device dev = kv.k_pages.device();
  const CacheDims c = check_cache(fn, kv, dt, "k_pages' dtype", dev);
  check_view(fn, "k_new", k_new, 4, "[B, Hkv, T, D]", dt, "k_pages' dtype", dev,
             "k_pages' device");
  check_view(fn, "v_new", v_new, 4, "[B, Hkv, T, Dv]", dt, "k_pages' dtype", dev,
             "k_pages' device");
  const int64_t T = k_new.shape[2];
  check_shape(fn, "k_new", k_new, {c.B, c.Hkv, T, c.D}, "[B, Hkv, T, D] (the cache's B, Hkv, D)");
  check_shape(fn, "v_new", v_new, {c.B, c.Hkv, T, c.Dv},
              "[B, Hkv, T, Dv] (the cache's B, Hkv, Dv and k_new's T)");
  if (dev == Device::cuda && !cuda_available()) {
    fail(fn, "the cache is on cuda, but this build of flexattn has no CUDA backend or no GPU is "
             "visible");
  }
  AppendArgs a;
  a.k_pages = kv.k_pages.view();
  a.v_pages = kv.v_pages.view();
  a.page_table = kv.page_table.view();
  a.kv_len = kv.kv_len.view();
  a.k_new = k_new;
  a.v_new = v_new;
  a.B = c.B;
  a.Hkv = c.Hkv;
  a.T = T;
  a.D = c.D;
  a.Dv = c.Dv;
  a.num_pages = c.num_pages;
  a.page_size = c.page_size;
  a.max_pages = c.max_pages;
  a.stream = opts.stream;
  return a;
}

AttnDims check_attention_inputs(const char* fn, const TensorView& q, const TensorView& k,
                                const TensorView& v, const BlockMaskData& mask,
                                const AttentionOptions& opts) {
  const AttnDims d = check_qkv(fn, q, k, v, opts);
  check_mask(fn, mask, d, q.device);
  return d;
}

AttnDims check_front_door_inputs(const char* fn, const TensorView& q, const TensorView& k,
                                 const TensorView& v, const AttentionOptions& opts) {
  return check_qkv(fn, q, k, v, opts);
}

AttnDims check_backward_inputs(const TensorView& q, const TensorView& k, const TensorView& v,
                               const TensorView& out, const TensorView& lse,
                               const TensorView& dout, const BlockMaskData* mask,
                               const AttentionOptions& opts) {
  const std::string fn = "flex_attention_backward";
  const AttnDims d = check_qkv(fn, q, k, v, opts);
  if (mask) check_mask(fn, *mask, d, q.device);
  check_backward_tensors(fn, q, out, lse, dout, d);
  return d;
}

FwdArgs make_forward_args(const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& out, const TensorView& lse, const BlockMaskData& mask,
                          const AttentionOptions& opts) {
  const std::string fn = "flex_attention";
  FwdArgs a;
  a.dims = check_qkv(fn, q, k, v, opts);
  check_mask(fn, mask, a.dims, q.device);
  const AttnDims& d = a.dims;
  check_out_lse(fn, q, out, lse, d);
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = out;
  a.lse = lse;
  a.mask = &mask;
  a.stream = opts.stream;
  return a;
}

BwdArgs make_backward_args(const TensorView& q, const TensorView& k, const TensorView& v,
                           const TensorView& out, const TensorView& lse, const TensorView& dout,
                           const TensorView& dq, const TensorView& dk, const TensorView& dv,
                           const BlockMaskData& mask, const AttentionOptions& opts) {
  const std::string fn = "flex_attention_backward";
  BwdArgs a;
  a.dims = check_backward_inputs(q, k, v, out, lse, dout, &mask, opts);
  const AttnDims& d = a.dims;
  auto same_as_q = [&](const char* name, const TensorView& t, const char* layout,
                       std::initializer_list<int64_t> shape) {
    check_view(fn, name, t, 4, layout, q.dtype, "q's dtype", q.device, "q's device");
    check_shape(fn, name, t, shape, layout);
  };
  same_as_q("dq", dq, "[B, Hq, Lq, D]", {d.B, d.Hq, d.Lq, d.D});
  same_as_q("dk", dk, "[B, Hkv, Lkv, D]", {d.B, d.Hkv, d.Lkv, d.D});
  same_as_q("dv", dv, "[B, Hkv, Lkv, Dv]", {d.B, d.Hkv, d.Lkv, d.Dv});
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = out;
  a.lse = lse;
  a.dout = dout;
  a.dq = dq;
  a.dk = dk;
  a.dv = dv;
  a.mask = &mask;
  a.stream = opts.stream;
  a.deterministic = opts.deterministic;
  return a;
}

}  // namespace flexattn::detail
