// Runtime variants on the CPU: the host compiler builds the generated functors and the attention
// templates into a shared object (a "module"), loaded with dlopen and called through one entry
// point (detail/runtime/cpu_entry.h, host_table.h).
#include <dlfcn.h>

#include <cstring>
#include <map>
#include <mutex>

#include "flexattn/detail/runtime/host_table.h"
#include "flexattn/flexattn.h"
#include "internal.h"

#ifndef FLEXATTN_RT_CXX
#define FLEXATTN_RT_CXX "c++"
#endif

namespace flexattn::detail::runtime {
namespace {

// Flags of every module: the library's own optimisation level, no ISA flags (the primitives the
// module calls through the table pick their ISA at run time), nothing exported but the entry and
// the key, and every symbol resolved at link time (-z defs; host_table.h says why).
constexpr const char* kFlags =
    "-std=c++20 -O2 -DNDEBUG -fPIC -shared -fvisibility=hidden -fvisibility-inlines-hidden "
    "-Wl,-z,defs";

struct Module {
  void* handle = nullptr;
  CpuEntry entry = nullptr;
  double (*eval_score)(const void*, double, int, int, int, int) = nullptr;
  int (*eval_mask)(const void*, int, int, int, int) = nullptr;
};

std::mutex g_mutex;
std::map<std::string, Module> g_modules;  // key -> loaded module

const std::string& compiler() {
  static const std::string cxx = [] {
    const char* v = std::getenv("FLEXATTN_CXX");
    return std::string(v && *v ? v : FLEXATTN_RT_CXX);
  }();
  return cxx;
}

// The compiler's path and the first line of its --version: part of every key.
const std::string& compiler_identity() {
  static const std::string id = [] {
    std::string out;
    run_command(shell_quote(compiler()) + " --version", out);
    return compiler() + "|" + out.substr(0, out.find('\n'));
  }();
  return id;
}

const HostTable& host_table() {
  static const HostTable t = [] {
    HostTable h{};
    h.abi = kHostTableAbi;
    abi_sizes<BlockMaskData>(h.sizes);
    h.dtype_size = &flexattn::dtype_size;
    h.num_threads = &cpu::num_threads;
    h.parallel_for = static_cast<void (*)(int64_t, void (*)(void*, int64_t, int), void*)>(
        &cpu::parallel_for);
    h.gemm = &cpu::gemm;
    h.gemm_rescale = &cpu::gemm_rescale;
    h.load_row = &cpu::load_row;
    h.store_row = &cpu::store_row;
    h.exp_sub_sum = &cpu::exp_sub_sum;
    h.max_of = &cpu::max_of;
    h.scale = &cpu::scale;
    h.online_softmax_t = &cpu::online_softmax_t;
    h.rows_finite = &cpu::rows_finite;
    h.bwd_probs = &cpu::bwd_probs;
    h.bwd_dscores = &cpu::bwd_dscores;
    h.bwd_add = &cpu::bwd_add;
    return h;
  }();
  return t;
}

std::string module_key(const ModSpec* score, const ModSpec* mask) {
  return "cpu module\nabi " + std::to_string(kHostTableAbi) + "\nversion " +
         FLEXATTN_VERSION_STRING + "\ncompiler " + compiler_identity() + "\nflags " + kFlags +
         "\nheaders " + headers_fingerprint() + "\n" + pair_key(score, mask);
}

// Opens `path` and checks that it is a module for `key`; false (closed again) otherwise.
bool open_module(const std::string& path, const std::string& key, Module& m) {
  void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) return false;
  const auto* k = static_cast<const char*>(::dlsym(h, kCpuKeySymbol));
  auto entry = reinterpret_cast<CpuEntry>(::dlsym(h, kCpuEntrySymbol));
  if (k == nullptr || entry == nullptr || key != k) {
    ::dlclose(h);
    return false;
  }
  Module got{h, entry};
  got.eval_score = reinterpret_cast<decltype(got.eval_score)>(::dlsym(h, "flexattn_rt_eval_score"));
  got.eval_mask = reinterpret_cast<decltype(got.eval_mask)>(::dlsym(h, "flexattn_rt_eval_mask"));
  if (got.eval_score == nullptr || got.eval_mask == nullptr) {
    ::dlclose(h);
    return false;
  }
  m = got;
  return true;
}

// The compiler's message, trimmed to what a user reads.
std::string compiler_message(const std::string& log) {
  constexpr size_t kMax = 6000;
  return log.size() <= kMax ? log : log.substr(0, kMax) + "\n[... compiler output truncated]";
}

// Generates, compiles and opens the module of `key`; into the disk cache at `path` when there is
// one, else into a temporary directory removed once the module is open.
Module build_module(const char* fn, const ModSpec* score, const ModSpec* mask,
                    const std::string& key, const std::string& path) {
  const std::string tmp = make_temp_dir();
  struct Cleanup {
    std::string dir;
    ~Cleanup() { remove_tree(dir); }
  } cleanup{tmp};
  const std::string src = tmp + "/variant.cpp";
  const std::string text = "// A flexattn runtime variant (generated).\n"
                           "#include <flexattn/flexattn.h>\n"
                           "#include <flexattn/detail/runtime/captures.h>\n" +
                           functor_source(score, mask) +
                           "#include <flexattn/detail/runtime/cpu_entry.h>\n"
                           "extern \"C\" __attribute__((visibility(\"default\"))) const char "
                           "flexattn_rt_key[] = " + string_literal(key) + ";\n";
  if (!write_atomically(src, text)) {
    throw Error("flexattn: cannot write the runtime variant's source to " + src);
  }
  const std::string out = tmp + "/variant.so";
  std::string log;
  const int rc = run_command(shell_quote(compiler()) + " " + kFlags + " -I" +
                                 shell_quote(include_dir()) + " " + shell_quote(src) + " -o " +
                                 shell_quote(out),
                             log);
  if (rc != 0) {
    throw Error(std::string("flexattn::") + fn + ": a runtime score_mod / mask_mod did not " +
                "compile (" + compiler() + ", exit status " + std::to_string(rc) + "):\n" +
                compiler_message(log));
  }
  count_compiled();
  // Into the cache (write_entry: atomic, so a concurrent process sees no entry or a whole one).
  std::string object;
  std::string load_from = out;
  if (!path.empty() && read_file(out, object) && write_entry(path, object, key)) load_from = path;
  Module m;
  if (!open_module(load_from, key, m)) {
    const char* why = ::dlerror();
    throw Error(std::string("flexattn::") + fn + ": the compiled runtime variant at " +
                load_from + " does not load: " + (why ? why : "no entry point or key"));
  }
  return m;
}

Module get_module(const char* fn, const ModSpec* score, const ModSpec* mask, bool rebuild) {
  const std::string key = module_key(score, mask);
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!rebuild) {
    if (auto it = g_modules.find(key); it != g_modules.end()) {
      count_memory_hit();
      return it->second;
    }
  }
  const std::string& dir = cache_dir();
  const std::string path = dir.empty() ? "" : dir + "/cpu-" + hex16(fnv1a(key)) + ".so";
  Module m;
  std::string object;
  if (!rebuild && !path.empty() && read_entry(path, key, object) && open_module(path, key, m)) {
    count_loaded_from_disk();
  } else {
    m = build_module(fn, score, mask, key, path);
  }
  g_modules[key] = m;
  return m;
}

}  // namespace

void cpu_run(int op, void* args, const ModSpec* score, const ModSpec* mask) {
  const char* fn = op == static_cast<int>(CpuOp::backward)     ? "flex_attention_backward"
                   : op == static_cast<int>(CpuOp::block_mask) ? "create_block_mask"
                                                               : "flex_attention";
  const ModState s = state_of(score), m = state_of(mask);
  char err[2048] = {};
  for (int attempt = 0; attempt < 2; ++attempt) {
    const Module mod = get_module(fn, score, mask, attempt > 0);
    const int rc = mod.entry(op, args, score ? &s : nullptr, mask ? &m : nullptr, &host_table(),
                             err, sizeof err);
    if (rc == 0) return;
    if (rc == 1) throw Error(err);
    // rc 2: built against other headers than this library's; build it again, once.
  }
  throw Error(std::string("flexattn::") + fn + ": a runtime variant's CPU module does not match "
              "this library's headers "
              "(" + include_dir() + "); set FLEXATTN_INCLUDE_DIR to the headers of this build");
}

HostEval host_eval(const ModSpec* score, const ModSpec* mask) {
  check_capture_devices("host_eval", Device::cpu, score, mask);
  const Module m = get_module("flex_attention", score, mask, false);
  return {m.eval_score, m.eval_mask, state_of(score), state_of(mask)};
}

void cpu_forget_modules() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_modules.clear();  // the objects stay mapped: a caller may still run one
}

}  // namespace flexattn::detail::runtime
