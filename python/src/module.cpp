// flexattn._C: the Python package's bridge to the C++ library (nanobind).
//
// Thin on purpose: tensors arrive as DLPack-capable objects (torch tensors, NumPy arrays, ...)
// and become TensorViews without a copy; the mods arrive already decided by the Python layer
// (flexattn/_dispatch.py): a stock functor the library has prebuilt, or runtime source text that
// the library compiles and caches (runtime.h). Outputs are allocated by the caller (PyTorch's
// allocator, on its current stream) and filled through the *_into layer.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <flexattn/flexattn.h>

#include <concepts>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

namespace nb = nanobind;
using namespace flexattn;

namespace {

// The error class Python sees for flexattn::Error: a ValueError and a RuntimeError at once, so
// callers written against PyTorch's flex_attention (which raises either for bad input) catch it.
PyObject* g_error_class = nullptr;

using Array = nb::ndarray<>;

DType dtype_of(const nb::dlpack::dtype& t, const char* what) {
  using code = nb::dlpack::dtype_code;
  if (t.lanes == 1) {
    if (t.code == uint8_t(code::Float) && t.bits == 32) return DType::f32;
    if (t.code == uint8_t(code::Float) && t.bits == 16) return DType::f16;
    if (t.code == uint8_t(code::Bfloat) && t.bits == 16) return DType::bf16;
    if (t.code == uint8_t(code::Int) && t.bits == 32) return DType::i32;
  }
  throw Error(std::string("flexattn: ") + what + " has an unsupported dtype (code " +
              std::to_string(t.code) + ", " + std::to_string(t.bits) +
              " bits); expected float32, float16, bfloat16 (or int32 for indices)");
}

TensorView view_of(const Array& a, const char* what) {
  TensorView v;
  if (a.ndim() > size_t(kMaxRank)) {
    throw Error(std::string("flexattn: ") + what + " has " + std::to_string(a.ndim()) +
                " dims; expected at most 4");
  }
  v.rank = int(a.ndim());
  v.dtype = dtype_of(a.dtype(), what);
  if (a.device_type() == nb::device::cpu::value) {
    v.device = Device::cpu;
  } else if (a.device_type() == nb::device::cuda::value) {
    v.device = Device::cuda;
  } else {
    throw Error(std::string("flexattn: ") + what + " is on an unsupported device (DLPack type " +
                std::to_string(a.device_type()) + "); expected cpu or cuda");
  }
  v.data = const_cast<void*>(a.data());
  for (int i = 0; i < v.rank; ++i) {
    v.shape[i] = int64_t(a.shape(size_t(i)));
    v.stride[i] = int64_t(a.stride(size_t(i)));
  }
  return v;
}

// A contiguous array as a Tensor over its memory (zero copy): a capture or document ids. The
// Python object holding the memory is kept alive by the Python layer for the mod's life.
Tensor tensor_of(const Array& a, const char* what) {
  const TensorView v = view_of(a, what);
  std::vector<int64_t> shape(v.shape, v.shape + v.rank);
  int64_t expect = 1;
  for (int d = v.rank - 1; d >= 0; --d) {
    if (v.shape[d] != 1 && v.stride[d] != expect) {
      throw Error(std::string("flexattn: ") + what + " must be contiguous");
    }
    expect *= v.shape[d];
  }
  return Tensor::from_blob(v.data, std::move(shape), v.dtype, v.device);
}

std::vector<Capture> captures_of(const std::vector<std::pair<std::string, Array>>& list) {
  std::vector<Capture> out;
  for (const auto& [name, a] : list) out.push_back({name, tensor_of(a, name.c_str())});
  return out;
}

// ---- mods ------------------------------------------------------------------------------------------
struct Score {
  std::variant<NoopScore, Alibi, Softcap, RuntimeScoreMod> mod;
};
struct Mask {
  std::variant<NoopMask, CausalMask, SlidingWindowMask, PrefixLMMask, DocumentMask,
               detail::CausalDocumentMask, RuntimeMaskMod>
      mod;
};

Score stock_score(const std::string& name, int num_heads, float cap) {
  if (name == "noop") return {NoopScore{}};
  if (name == "alibi") return {alibi(num_heads)};
  if (name == "softcap") return {softcap(cap)};
  throw Error("flexattn: unknown stock score_mod " + name);
}

Mask stock_mask(const std::string& name, int param, const Array* ids) {
  auto doc = [&] {
    if (ids == nullptr) throw Error("flexattn: stock mask " + name + " needs document ids");
    const TensorView v = view_of(*ids, "document ids");
    if (v.dtype != DType::i32 || v.rank != 1 || (v.shape[0] > 1 && v.stride[0] != 1)) {
      throw Error("flexattn: document ids must be a contiguous int32 vector");
    }
    return document(static_cast<const int32_t*>(v.data));
  };
  if (name == "noop") return {NoopMask{}};
  if (name == "causal") return {causal()};
  if (name == "sliding_window") return {sliding_window(param)};
  if (name == "prefix_lm") return {prefix_lm(param)};
  if (name == "document") return {doc()};
  if (name == "causal_document") return {and_masks(causal(), doc())};
  throw Error("flexattn: unknown stock mask_mod " + name);
}

// Calls f(score_mod, mask_mod) with the pair's concrete types: a prebuilt stock pair or a pair
// the runtime path takes. The Python layer only sends those; anything else is its bug.
template <class F>
void visit_pair(const Score& s, const Mask& m, F&& f) {
  std::visit(
      [&](const auto& sm, const auto& mm) {
        using S = std::decay_t<decltype(sm)>;
        using M = std::decay_t<decltype(mm)>;
        constexpr bool runtime = is_runtime_mod<S> || is_runtime_mod<M>;
        constexpr bool runtime_ok = (is_runtime_mod<S> || std::same_as<S, NoopScore>) &&
                                    (is_runtime_mod<M> || std::same_as<M, NoopMask>);
        if constexpr (runtime ? runtime_ok : detail::is_prebuilt_variant<S, M>) {
          f(sm, mm);
        } else {
          throw Error("flexattn: this (score_mod, mask_mod) pair has no kernel; internal error "
                      "of the Python layer");
        }
      },
      s.mod, m.mod);
}

// ---- block masks -----------------------------------------------------------------------------------
struct PyBlockMask {
  BlockMaskData data;
};

Device device_of(int code) {
  if (code == 0) return Device::cpu;
  if (code == 1) return Device::cuda;
  throw Error("flexattn: unknown device code " + std::to_string(code));
}

PyBlockMask build_block_mask(const Mask& m, int64_t B, int64_t H, int64_t q_len, int64_t kv_len,
                             int block_q, int block_kv, int device, uintptr_t stream) {
  BlockMaskOptions opts;
  opts.block_q = block_q;
  opts.block_kv = block_kv;
  opts.device = device_of(device);
  opts.stream = reinterpret_cast<void*>(stream);
  PyBlockMask out;
  nb::gil_scoped_release unlocked;
  std::visit(
      [&](const auto& mm) {
        out.data = create_block_mask(mm, B, H, q_len, kv_len, opts).data();
      },
      m.mod);
  return out;
}

// The lists of `bm`, or the library's all-full mask for q and k when there is none.
BlockMaskData lists_for(const PyBlockMask* bm, const TensorView& q, const TensorView& k,
                        void* stream) {
  if (bm != nullptr) return bm->data;
  const Tensor qt = Tensor::from_blob(q.data, {q.shape[0], q.shape[1], q.shape[2], q.shape[3]},
                                      q.dtype, q.device);
  const Tensor kt = Tensor::from_blob(k.data, {k.shape[0], k.shape[1], k.shape[2], k.shape[3]},
                                      k.dtype, k.device);
  return detail::dense_block_mask(qt, kt, stream).data();
}

AttentionOptions options(float scale, bool gqa, uintptr_t stream, bool deterministic) {
  AttentionOptions o;
  o.scale = scale;
  o.enable_gqa = gqa;
  o.stream = reinterpret_cast<void*>(stream);
  o.deterministic = deterministic;
  return o;
}

void check_rank4(const TensorView& v, const char* what) {
  if (v.rank != 4) {
    throw Error(std::string("flexattn: ") + what + " must have 4 dims [B, H, L, D]; got " +
                std::to_string(v.rank));
  }
}

void forward(const Array& q, const Array& k, const Array& v, const Array& out, const Array& lse,
             const Score& score, const Mask& mask, const PyBlockMask* bm, float scale, bool gqa,
             uintptr_t stream) {
  const TensorView qv = view_of(q, "query"), kv = view_of(k, "key"), vv = view_of(v, "value");
  const TensorView ov = view_of(out, "out"), lv = view_of(lse, "lse");
  check_rank4(qv, "query");
  check_rank4(kv, "key");
  const AttentionOptions opts = options(scale, gqa, stream, true);
  nb::gil_scoped_release unlocked;
  const BlockMaskData lists = lists_for(bm, qv, kv, opts.stream);
  visit_pair(score, mask, [&](const auto& sm, const auto& mm) {
    flex_attention_into(qv, kv, vv, ov, lv, sm, BlockMask(mm, lists), opts);
  });
}

void backward(const Array& q, const Array& k, const Array& v, const Array& out, const Array& lse,
              const Array& dout, const Array& dq, const Array& dk, const Array& dv,
              const Score& score, const Mask& mask, const PyBlockMask* bm, float scale, bool gqa,
              uintptr_t stream, bool deterministic) {
  const TensorView qv = view_of(q, "query"), kv = view_of(k, "key"), vv = view_of(v, "value");
  const TensorView ov = view_of(out, "out"), lv = view_of(lse, "lse");
  const TensorView gv = view_of(dout, "grad_out");
  const TensorView dqv = view_of(dq, "grad_query"), dkv = view_of(dk, "grad_key"),
                   dvv = view_of(dv, "grad_value");
  check_rank4(qv, "query");
  check_rank4(kv, "key");
  const AttentionOptions opts = options(scale, gqa, stream, deterministic);
  nb::gil_scoped_release unlocked;
  const BlockMaskData lists = lists_for(bm, qv, kv, opts.stream);
  visit_pair(score, mask, [&](const auto& sm, const auto& mm) {
    flex_attention_backward_into(qv, kv, vv, ov, lv, gv, dqv, dkv, dvv, sm,
                                 BlockMask(mm, lists), opts);
  });
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "flexattn's C++ library (see the flexattn package for the Python API)";

  nb::module_ builtins = nb::module_::import_("builtins");
  nb::object bases = nb::make_tuple(builtins.attr("ValueError"), builtins.attr("RuntimeError"));
  g_error_class = PyErr_NewException("flexattn.FlexAttentionError", bases.ptr(), nullptr);
  m.attr("FlexAttentionError") = nb::handle(g_error_class);
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const Error& e) {
      PyErr_SetString(g_error_class, e.what());
    }
  });

  nb::class_<Score>(m, "Score");
  nb::class_<Mask>(m, "Mask");
  m.def("stock_score", &stock_score, nb::arg("name"), nb::arg("num_heads") = 0,
        nb::arg("cap") = 0.0f);
  m.def(
      "stock_mask",
      [](const std::string& name, int param, const Array* ids) {
        return stock_mask(name, param, ids);
      },
      nb::arg("name"), nb::arg("param") = 0, nb::arg("ids").none() = nb::none());
  m.def(
      "runtime_score",
      [](std::string source, const std::vector<std::pair<std::string, Array>>& caps) {
        return Score{RuntimeScoreMod(std::move(source), captures_of(caps))};
      },
      nb::arg("source"), nb::arg("captures"));
  m.def(
      "runtime_mask",
      [](std::string source, const std::vector<std::pair<std::string, Array>>& caps,
         std::string tile_kind) {
        return Mask{RuntimeMaskMod(std::move(source), captures_of(caps), std::move(tile_kind))};
      },
      nb::arg("source"), nb::arg("captures"), nb::arg("tile_kind") = "");

  nb::class_<PyBlockMask>(m, "BlockMaskData")
      .def_prop_ro("shape",
                   [](const PyBlockMask& b) {
                     return nb::make_tuple(b.data.B, b.data.H, b.data.q_len, b.data.kv_len);
                   })
      .def_prop_ro("block_size",
                   [](const PyBlockMask& b) {
                     return nb::make_tuple(b.data.block_q, b.data.block_kv);
                   })
      .def("sparsity", [](const PyBlockMask& b) { return b.data.sparsity(); })
      .def(
          "to_string",
          [](const PyBlockMask& b, int rows, int cols, int limit) {
            return b.data.to_string(rows, cols, limit);
          },
          nb::arg("max_rows") = 20, nb::arg("max_cols") = 20, nb::arg("limit") = 4);
  m.def("create_block_mask", &build_block_mask, nb::arg("mask"), nb::arg("B"), nb::arg("H"),
        nb::arg("q_len"), nb::arg("kv_len"), nb::arg("block_q"), nb::arg("block_kv"),
        nb::arg("device"), nb::arg("stream"));

  m.def("forward", &forward, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"),
        nb::arg("lse"), nb::arg("score"), nb::arg("mask"), nb::arg("block_mask").none(),
        nb::arg("scale"), nb::arg("enable_gqa"), nb::arg("stream"));
  m.def("backward", &backward, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"),
        nb::arg("lse"), nb::arg("grad_out"), nb::arg("grad_q"), nb::arg("grad_k"),
        nb::arg("grad_v"), nb::arg("score"), nb::arg("mask"), nb::arg("block_mask").none(),
        nb::arg("scale"), nb::arg("enable_gqa"), nb::arg("stream"), nb::arg("deterministic"));

  m.def("cuda_available", &cuda_available);
  m.def("runtime_cache_dir", &runtime_cache_dir);
  m.def("runtime_cache_stats", [] {
    const RuntimeCacheStats s = runtime_cache_stats();
    return nb::make_tuple(s.compiled, s.loaded_from_disk, s.memory_hits);
  });
  m.def("clear_runtime_memory_cache", &clear_runtime_memory_cache);
}
