// flexattn._C: the Python package's bridge to the C++ library (nanobind).
//
// Thin on purpose: tensors arrive as torch tensors (the Python layer turns other DLPack arrays
// into them) and become TensorViews without a copy; the mods arrive already decided by the Python layer
// (flexattn/_dispatch.py): a stock functor the library has prebuilt, or runtime source text that
// the library compiles and caches (runtime.h). Outputs are allocated by the caller (PyTorch's
// allocator, on its current stream) and filled through the *_into layer.
#include <nanobind/nanobind.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <flexattn/flexattn.h>

#include <chrono>
#include <concepts>
#include <string>
#include <utility>
#include <type_traits>
#include <variant>
#include <vector>

namespace nb = nanobind;
using namespace flexattn;

namespace {

// The error class Python sees for flexattn::Error: a ValueError and a RuntimeError at once, so
// callers written against PyTorch's flex_attention (which raises either for bad input) catch it.
PyObject* g_error_class = nullptr;

// The attention operands are torch tensors (the Python layer turns other DLPack arrays into
// them): read through their attributes, about 0.5 us a tensor, where a DLPack import through
// __dlpack__ costs 5 to 6 us - most of the package's budget per call.
struct TorchNames {
  nb::object data_ptr = nb::str("data_ptr"), shape = nb::str("shape"),
             stride = nb::str("stride"), dtype = nb::str("dtype"), is_cuda = nb::str("is_cuda");
  nb::object f32, f16, bf16, i32;
};
TorchNames* g_torch = nullptr;

int64_t tuple_int(PyObject* tuple, Py_ssize_t i) {
  return PyLong_AsLongLong(PyTuple_GET_ITEM(tuple, i));
}

TensorView torch_view(nb::handle t, const char* what) {
  const TorchNames& n = *g_torch;
  TensorView v;
  const nb::object shape = t.attr(n.shape);
  const nb::object stride = t.attr(n.stride)();
  if (!PyTuple_Check(shape.ptr()) || !PyTuple_Check(stride.ptr())) {
    throw Error(std::string("flexattn: ") + what + " is not a torch tensor");
  }
  const Py_ssize_t rank = PyTuple_GET_SIZE(shape.ptr());
  if (rank > kMaxRank) {
    throw Error(std::string("flexattn: ") + what + " has " + std::to_string(rank) +
                " dims; expected at most 4");
  }
  v.rank = int(rank);
  for (Py_ssize_t i = 0; i < rank; ++i) {
    v.shape[i] = tuple_int(shape.ptr(), i);
    v.stride[i] = tuple_int(stride.ptr(), i);
  }
  const nb::object dt = t.attr(n.dtype);
  if (dt.is(n.f32)) {
    v.dtype = DType::f32;
  } else if (dt.is(n.bf16)) {
    v.dtype = DType::bf16;
  } else if (dt.is(n.f16)) {
    v.dtype = DType::f16;
  } else if (dt.is(n.i32)) {
    v.dtype = DType::i32;
  } else {
    throw Error(std::string("flexattn: ") + what + " has dtype " +
                nb::cast<std::string>(nb::str(dt)) +
                "; expected torch.float32, torch.float16 or torch.bfloat16");
  }
  v.device = nb::cast<bool>(t.attr(n.is_cuda)) ? Device::cuda : Device::cpu;
  v.data = reinterpret_cast<void*>(nb::cast<uintptr_t>(t.attr(n.data_ptr)()));
  return v;
}

// A contiguous array as a Tensor over its memory (zero copy): a capture or document ids. The
// Python object holding the memory is kept alive by the Python layer for the mod's life.
Tensor tensor_of(nb::handle a, const char* what) {
  const TensorView v = torch_view(a, what);
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

// (name, tensor) or (name, tensor, grad): a grad (f32, contiguous, the tensor's shape) makes the
// capture learnable (runtime.h, Capture::grad).
std::vector<Capture> captures_of(const std::vector<nb::tuple>& list) {
  std::vector<Capture> out;
  for (const nb::tuple& c : list) {
    const std::string name = nb::cast<std::string>(c[0]);
    Capture cap{name, tensor_of(c[1], name.c_str())};
    if (c.size() > 2 && !c[2].is_none()) cap.grad = tensor_of(c[2], (name + ".grad").c_str());
    out.push_back(std::move(cap));
  }
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

Mask stock_mask(const std::string& name, int param, nb::handle ids) {
  auto doc = [&] {
    if (ids.is_none()) throw Error("flexattn: stock mask " + name + " needs document ids");
    const TensorView v = torch_view(ids, "document ids");
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

// The operands forward and backward share, read and rank-checked once.
struct Operands {
  TensorView q, k, v, out, lse;
};
Operands operands(nb::handle q, nb::handle k, nb::handle v, nb::handle out, nb::handle lse) {
  Operands o{torch_view(q, "query"), torch_view(k, "key"), torch_view(v, "value"),
             torch_view(out, "out"), torch_view(lse, "lse")};
  // The dense mask (lists_for) reads [B, H, L, D] shapes before the library's own checks.
  for (const auto& [view, what] : {std::pair{&o.q, "query"}, std::pair{&o.k, "key"}}) {
    if (view->rank != 4) {
      throw Error(std::string("flexattn: ") + what + " must have 4 dims [B, H, L, D]; got " +
                  std::to_string(view->rank));
    }
  }
  return o;
}

void forward(nb::handle q, nb::handle k, nb::handle v, nb::handle out, nb::handle lse,
             const Score& score, const Mask& mask, const PyBlockMask* bm, float scale, bool gqa,
             uintptr_t stream) {
  const Operands o = operands(q, k, v, out, lse);
  const AttentionOptions opts = options(scale, gqa, stream, true);
  nb::gil_scoped_release unlocked;
  const BlockMaskData lists = lists_for(bm, o.q, o.k, opts.stream);
  visit_pair(score, mask, [&](const auto& sm, const auto& mm) {
    flex_attention_into(o.q, o.k, o.v, o.out, o.lse, sm, BlockMask(mm, lists), opts);
  });
}

void backward(nb::handle q, nb::handle k, nb::handle v, nb::handle out, nb::handle lse,
              nb::handle dout, nb::handle dq, nb::handle dk, nb::handle dv, const Score& score,
              const Mask& mask, const PyBlockMask* bm, float scale, bool gqa, uintptr_t stream,
              bool deterministic) {
  const Operands o = operands(q, k, v, out, lse);
  const TensorView gv = torch_view(dout, "grad_out"), dqv = torch_view(dq, "grad_query"),
                   dkv = torch_view(dk, "grad_key"), dvv = torch_view(dv, "grad_value");
  const AttentionOptions opts = options(scale, gqa, stream, deterministic);
  nb::gil_scoped_release unlocked;
  const BlockMaskData lists = lists_for(bm, o.q, o.k, opts.stream);
  visit_pair(score, mask, [&](const auto& sm, const auto& mm) {
    flex_attention_backward_into(o.q, o.k, o.v, o.out, o.lse, gv, dqv, dkv, dvv, sm,
                                 BlockMask(mm, lists), opts);
  });
}

// For bench/python_overhead.py: `calls` calls of the C++ front door flex_attention(q, k, v,
// score_mod, block_mask) - outputs allocated per call, as the Python call does - timed in this
// process, GPU work synchronised once at the end; mean seconds per call.
double time_front_door(nb::handle q, nb::handle k, nb::handle v, const Score& score,
                       const Mask& mask, const PyBlockMask* bm, int calls) {
  const Tensor qt = tensor_of(q, "query"), kt = tensor_of(k, "key"), vt = tensor_of(v, "value");
  nb::gil_scoped_release unlocked;
  const BlockMaskData lists = lists_for(bm, qt.view(), kt.view(), nullptr);
  double seconds = 0.0;
  visit_pair(score, mask, [&](const auto& sm, const auto& mm) {
    const BlockMask block_mask(mm, lists);
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) (void)flex_attention(qt, kt, vt, sm, block_mask);
    synchronize();
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  });
  return seconds / calls;
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "flexattn's C++ library (see the flexattn package for the Python API)";
  // The package keeps C++ objects in module-level caches that live until interpreter exit,
  // which nanobind's leak report would list at every exit.
  nb::set_leak_warnings(false);

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

  nb::module_ torch = nb::module_::import_("torch");
  g_torch = new TorchNames;  // lives as long as the process (module globals are never freed)
  g_torch->f32 = torch.attr("float32");
  g_torch->f16 = torch.attr("float16");
  g_torch->bf16 = torch.attr("bfloat16");
  g_torch->i32 = torch.attr("int32");

  nb::class_<Score>(m, "Score");
  nb::class_<Mask>(m, "Mask");
  m.def("stock_score", &stock_score, nb::arg("name"), nb::arg("num_heads") = 0,
        nb::arg("cap") = 0.0f);
  m.def(
      "stock_mask",
      [](const std::string& name, int param, nb::handle ids) {
        return stock_mask(name, param, ids);
      },
      nb::arg("name"), nb::arg("param") = 0, nb::arg("ids") = nb::none());
  m.def(
      "runtime_score",
      [](std::string source, const std::vector<nb::tuple>& caps) {
        return Score{RuntimeScoreMod(std::move(source), captures_of(caps))};
      },
      nb::arg("source"), nb::arg("captures"));
  m.def(
      "runtime_mask",
      [](std::string source, const std::vector<nb::tuple>& caps,
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

  m.def("_time_front_door", &time_front_door, nb::arg("q"), nb::arg("k"), nb::arg("v"),
        nb::arg("score"), nb::arg("mask"), nb::arg("block_mask").none(), nb::arg("calls"));
  m.def("cuda_available", &cuda_available);
  m.def("runtime_cache_dir", &runtime_cache_dir);
  m.def("runtime_cache_stats", [] {
    const RuntimeCacheStats s = runtime_cache_stats();
    return nb::make_tuple(s.compiled, s.loaded_from_disk, s.memory_hits);
  });
  m.def("clear_runtime_memory_cache", &clear_runtime_memory_cache);
}
