// Runtime variants on the GPU: the library's own launchers (launch_fwd.cuh, launch_bwd.cuh,
// launch_decode.cuh, block_mask_build.cuh) run with RtUnit, whose kernels NVRTC compiles from the
// same kernel templates and the generated functors (codegen.cpp), loaded as cudaKernel_t handles
// (kernel_ref.cuh). One selection code, one kernel ABI: only where a kernel comes from differs.
//
// RtUnit::kernel(name) is asked for each kernel a launcher picks, so a call compiles exactly the
// kernels it runs. A kernel that reads no functor (the backward's pre/post-processing, the
// split-KV merge, the block-mask list kernels) is keyed without the variant: compiled once per
// GPU architecture and dtype/head dim, shared by every variant.
#include <cuda.h>
#include <cuda_runtime.h>
#include <nvrtc.h>

#include <future>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "flexattn/block_mask.h"
#include "flexattn/detail/cuda/dispatch.h"
#include "flexattn/detail/runtime/captures.h"
#include "internal.h"

#ifndef FLEXATTN_RT_CUDA_INCLUDE_DIRS
#define FLEXATTN_RT_CUDA_INCLUDE_DIRS ""
#endif

namespace flexattn::detail::runtime {
namespace {

// The pair whose kernels RtUnit hands out, set for the duration of one library call on this
// thread (the launchers are synchronous host code).
struct Pair {
  const ModSpec* score;
  const ModSpec* mask;
};
thread_local const Pair* t_pair = nullptr;
struct PairScope {
  explicit PairScope(const Pair* p) : saved(t_pair) { t_pair = p; }
  ~PairScope() { t_pair = saved; }
  const Pair* saved;
};

// ---- host proxies: the layout of the generated functors (ModState), their names and traits ----
struct RtScore : ModState {
  static constexpr const char* kRtName = "flexattn_rt::Score";
  template <class T>
  FLEXATTN_HD T operator()(T, int, int, int, int) const;  // only NVRTC's definition exists
};
struct RtMask : ModState {
  static constexpr const char* kRtName = "flexattn_rt::Mask";
  FLEXATTN_HD bool operator()(int, int, int, int) const;
};
struct RtMaskRuled : RtMask {  // the same with a tile rule (HasTileRule)
  FLEXATTN_HD TileKind tile_kind(int, int, int, int, int, int) const;
};

int device_arch() {
  int dev = 0, major = 0, minor = 0;
  FLEXATTN_CUDA_CHECK(cudaGetDevice(&dev));
  FLEXATTN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  FLEXATTN_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  return major * 10 + minor;
}

// sm_90a where the GPU is a Hopper (its wgmma kernels), else the GPU's own architecture.
std::string arch_flag(int arch) {
  return "--gpu-architecture=sm_" + std::to_string(arch) + (arch == 90 ? "a" : "");
}

const std::string& nvrtc_identity() {
  static const std::string id = [] {
    int major = 0, minor = 0;
    nvrtcVersion(&major, &minor);
    return "nvrtc " + std::to_string(major) + "." + std::to_string(minor);
  }();
  return id;
}

std::vector<std::string> split_dirs(const std::string& list) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= list.size()) {
    const size_t end = list.find('|', at);
    const std::string d = list.substr(at, end == std::string::npos ? std::string::npos : end - at);
    if (!d.empty()) out.push_back(d);
    if (end == std::string::npos) break;
    at = end + 1;
  }
  return out;
}

struct Loaded {
  cudaLibrary_t lib = nullptr;
  cudaKernel_t kernel = nullptr;
};
std::mutex g_mutex;
std::map<std::string, Loaded> g_kernels;  // key -> loaded kernel (libraries are never unloaded)

// The source NVRTC compiles: every kernel template, the generated functors, the unit tag.
std::string program_source(const Pair* pair, bool uses_mods) {
  std::string src =
      "#include <flexattn/detail/cuda/block_mask_build.cuh>\n"
      "#include <flexattn/detail/cuda/bwd_postprocess.cuh>\n"
      "#include <flexattn/detail/cuda/bwd_preprocess.cuh>\n"
      "#include <flexattn/detail/cuda/combine_decode.cuh>\n"
      "#include <flexattn/detail/cuda/mainloop_bwd_sm80.cuh>\n"
      "#include <flexattn/detail/cuda/mainloop_bwd_sm90.cuh>\n"
      "#include <flexattn/detail/cuda/mainloop_decode.cuh>\n"
      "#include <flexattn/detail/cuda/mainloop_fwd_sm80.cuh>\n"
      "#include <flexattn/detail/cuda/mainloop_fwd_sm90.cuh>\n"
      "#include <flexattn/detail/runtime/captures.h>\n"
      "#include <flexattn/param.h>\n";
  if (uses_mods) src += functor_source(pair->score, pair->mask);
  return src + "namespace flexattn_rt {\nstruct Unit {};\n}  // namespace flexattn_rt\n";
}

// A disk entry's body (write_entry / read_entry add and check the trailer):
// "flexattn-rt-gpu\n" <lowered name> "\n" <cubin>.
constexpr const char* kMagic = "flexattn-rt-gpu\n";
bool parse_body(const std::string& body, std::string& lowered, std::string& cubin) {
  const size_t magic = std::string(kMagic).size();
  if (body.compare(0, magic, kMagic) != 0) return false;
  const size_t nl = body.find('\n', magic);
  if (nl == std::string::npos) return false;
  lowered = body.substr(magic, nl - magic);
  cubin = body.substr(nl + 1);
  return true;
}

void nvrtc_check(nvrtcResult r, const char* what) {
  if (r != NVRTC_SUCCESS) {
    throw Error(std::string("flexattn: NVRTC ") + what + " failed: " + nvrtcGetErrorString(r));
  }
}

struct Compiled {
  std::string lowered, cubin;
};

// Compiles `name` (a kernel template-id) in `src` for `arch`. Touches nothing shared: it runs on
// prefetch threads too.
Compiled compile(const std::string& src, const std::string& name, int arch) {
  Compiled c;
  std::string& lowered = c.lowered;
  std::string& cubin = c.cubin;
  nvrtcProgram prog = nullptr;
  nvrtc_check(nvrtcCreateProgram(&prog, src.c_str(), "flexattn_variant.cu", 0, nullptr, nullptr),
              "nvrtcCreateProgram");
  struct Destroy {
    nvrtcProgram* p;
    ~Destroy() { nvrtcDestroyProgram(p); }
  } destroy{&prog};
  const std::string expr = "&" + name;
  nvrtc_check(nvrtcAddNameExpression(prog, expr.c_str()), "nvrtcAddNameExpression");
  std::vector<std::string> opts = {"-std=c++20", "-default-device", arch_flag(arch),
                                   "-DNDEBUG", "-I" + include_dir()};
  for (const std::string& d : split_dirs(FLEXATTN_RT_CUDA_INCLUDE_DIRS)) opts.push_back("-I" + d);
  std::vector<const char*> argv;
  for (const std::string& o : opts) argv.push_back(o.c_str());
  const nvrtcResult r = nvrtcCompileProgram(prog, static_cast<int>(argv.size()), argv.data());
  if (r != NVRTC_SUCCESS) {
    size_t n = 0;
    nvrtcGetProgramLogSize(prog, &n);
    std::string log(n, '\0');
    nvrtcGetProgramLog(prog, log.data());
    constexpr size_t kMax = 6000;
    if (log.size() > kMax) log = log.substr(0, kMax) + "\n[... NVRTC log truncated]";
    throw Error("a runtime score_mod / mask_mod did not compile for the GPU (" + nvrtc_identity() +
                ", sm_" + std::to_string(arch) + "):\n" + log);
  }
  const char* low = nullptr;
  nvrtc_check(nvrtcGetLoweredName(prog, expr.c_str(), &low), "nvrtcGetLoweredName");
  lowered = low;
  size_t n = 0;
  nvrtc_check(nvrtcGetCUBINSize(prog, &n), "nvrtcGetCUBINSize");
  cubin.assign(n, '\0');
  nvrtc_check(nvrtcGetCUBIN(prog, cubin.data()), "nvrtcGetCUBIN");
  return c;
}

Loaded load(const std::string& lowered, const std::string& cubin) {
  Loaded l;
  FLEXATTN_CUDA_CHECK(cudaLibraryLoadData(&l.lib, cubin.data(), nullptr, nullptr, 0, nullptr,
                                          nullptr, 0));
  FLEXATTN_CUDA_CHECK(cudaLibraryGetKernel(&l.kernel, l.lib, lowered.c_str()));
  return l;
}

// Compiles started by a prefetch batch, by key: the thread that asks for the kernel waits.
std::map<std::string, std::shared_future<Compiled>> g_pending;
thread_local bool t_prefetching = false;

const void* runtime_kernel(const std::string& name) {
  const Pair* pair = t_pair;
  if (pair == nullptr) throw Error("flexattn: internal: a runtime kernel asked outside a call");
  const bool uses_mods = name.find("flexattn_rt::Score") != std::string::npos ||
                         name.find("flexattn_rt::Mask") != std::string::npos;
  const int arch = device_arch();
  const std::string key = "gpu kernel\nversion " + std::string(FLEXATTN_VERSION_STRING) + "\n" +
                          nvrtc_identity() + "\nsm " + std::to_string(arch) + "\nheaders " +
                          headers_fingerprint() + "\n" + name + "\n" +
                          (uses_mods ? pair_key(pair->score, pair->mask) : std::string());
  const std::string& dir = cache_dir();
  const std::string path = dir.empty() ? "" : dir + "/gpu-" + hex16(fnv1a(key)) + ".cubin";
  std::unique_lock<std::mutex> lock(g_mutex);
  if (auto it = g_kernels.find(key); it != g_kernels.end()) {
    if (t_prefetching) return nullptr;
    count_memory_hit();
    return reinterpret_cast<const void*>(it->second.kernel);
  }
  Compiled c;
  std::string body;
  if (t_prefetching) {
    // Start the compile unless it runs already or the disk has it (read when asked for).
    if (g_pending.count(key) == 0 && !(!path.empty() && read_entry(path, key, body))) {
      g_pending[key] = std::async(std::launch::async, [src = program_source(pair, uses_mods),
                                                       name, arch, key, path] {
                         Compiled r = compile(src, name, arch);
                         count_compiled();
                         if (!path.empty()) write_entry(path, kMagic + r.lowered + "\n" + r.cubin, key);
                         return r;
                       }).share();
    }
    return nullptr;
  }
  if (auto it = g_pending.find(key); it != g_pending.end()) {
    const std::shared_future<Compiled> f = it->second;
    g_pending.erase(it);
    lock.unlock();
    c = f.get();  // rethrows the compile's Error
    lock.lock();
  } else if (!path.empty() && read_entry(path, key, body) && parse_body(body, c.lowered, c.cubin)) {
    count_loaded_from_disk();
  } else {
    c = compile(program_source(pair, uses_mods), name, arch);
    count_compiled();
    if (!path.empty()) write_entry(path, kMagic + c.lowered + "\n" + c.cubin, key);
  }
  if (auto it = g_kernels.find(key); it != g_kernels.end()) {  // another thread got there first
    return reinterpret_cast<const void*>(it->second.kernel);
  }
  const Loaded l = load(c.lowered, c.cubin);
  g_kernels[key] = l;
  return reinterpret_cast<const void*>(l.kernel);
}

}  // namespace

// The unit tag of kernels compiled at run time (kernel_ref.cuh's RuntimeKernelUnit).
struct RtUnit {
  static constexpr bool kRuntimeKernels = true;
  static constexpr const char* kName = "flexattn_rt::Unit";
  static const void* kernel(const std::string& name) { return runtime_kernel(name); }
  static bool runs_sm90a() { return !cuda::sm80_forced() && device_arch() == 90; }
  struct PrefetchBatch {
    PrefetchBatch() { t_prefetching = true; }
    ~PrefetchBatch() { t_prefetching = false; }
    PrefetchBatch(const PrefetchBatch&) = delete;
    PrefetchBatch& operator=(const PrefetchBatch&) = delete;
  };
  static PrefetchBatch prefetch_batch() { return {}; }
};

namespace {
// Calls f(score, mask) with the proxies of the pair (NoopScore / NoopMask for no mod), the pair
// set for RtUnit's lookups; an Error of the compile is named after `fn`.
template <class F>
void with_pair(const char* fn, const ModSpec* score, const ModSpec* mask, F&& f) {
  const Pair pair{score, mask};
  PairScope scope(&pair);
  auto with_mask = [&](auto s) {
    if (mask == nullptr) {
      f(s, NoopMask{});
    } else if (mask->tile_kind.find_first_not_of(" \t\r\n") == std::string::npos) {
      RtMask m;
      static_cast<ModState&>(m) = state_of(mask);
      f(s, m);
    } else {
      RtMaskRuled m;
      static_cast<ModState&>(m) = state_of(mask);
      f(s, m);
    }
  };
  try {
    if (score == nullptr) {
      with_mask(NoopScore{});
    } else {
      RtScore s;
      static_cast<ModState&>(s) = state_of(score);
      with_mask(s);
    }
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (msg.rfind("flexattn::", 0) == 0) throw;
    throw Error(std::string("flexattn::") + fn + ": " + msg);
  }
}
}  // namespace

void gpu_forward(const FwdArgs& args, const ModSpec* score, const ModSpec* mask) {
  with_pair("flex_attention", score, mask, [&](const auto& s, const auto& m) {
    cuda::launch_forward<RtUnit>(args, s, m);
  });
}

void gpu_backward(const BwdArgs& args, const ModSpec* score, const ModSpec* mask) {
  with_pair("flex_attention_backward", score, mask, [&](const auto& s, const auto& m) {
    cuda::launch_backward<RtUnit>(args, s, m);
  });
}

void gpu_paged_forward(const PagedArgs& args, const ModSpec* score, const ModSpec* mask) {
  with_pair("flex_attention", score, mask, [&](const auto& s, const auto& m) {
    cuda::launch_paged_forward<RtUnit>(args, s, m);
  });
}

void gpu_build_block_mask(const ModSpec& mask, BlockMaskData& data, void* stream) {
  with_pair("create_block_mask", nullptr, &mask, [&](const auto&, const auto& m) {
    cuda::build_block_mask_device<RtUnit>(m, data, stream);
  });
}

void gpu_forget_modules() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_kernels.clear();  // the libraries stay loaded: a stream may still run their kernels
  g_pending.clear();  // waits for prefetch compiles still running (a std::async future does)
}

}  // namespace flexattn::detail::runtime
