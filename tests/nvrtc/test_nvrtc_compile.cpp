// The device headers compile under NVRTC, which has no host headers (issue 11: kernels built at
// run time from the same headers as the prebuilt ones). Runs on any machine with the CUDA
// toolkit, GPU or not: NVRTC only translates to PTX here.
//
//   test_nvrtc_compile INCLUDE_DIR... -- HEADER...
//
// 1. Every header alone (`#include <flexattn/HEADER>`), for compute_80 and compute_90a.
// 2. Every kernel template of the CUDA backend instantiated (NVRTC name expressions, as a run-time
//    path will ask for them) with a user-style score_mod (a captured table, tanh, the indices; the
//    sm80 forward also with a learnable Param table) and
//    a composed mask_mod, for both dtypes, head dims 64 and 128; the Hopper kernels must come out
//    with their wgmma and tensor-copy instructions on compute_90a (their bodies are empty where
//    the architecture lacks them, which would pass silently).
// The options are the ones a run-time compile uses: C++20, and -default-device (functions without
// an execution space are device functions: the generic lambdas inside the kernels).
// Exit status 0 when everything compiled; every failure prints NVRTC's log.
#include <nvrtc.h>

#include <cstdio>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace {

struct Result {
  bool ok = false;
  std::string log, ptx;
  std::vector<std::string> lowered;  // one per name expression
};

Result compile(const std::string& source, const std::string& arch,
               const std::vector<std::string>& includes, const std::vector<std::string>& names) {
  Result r;
  nvrtcProgram prog = nullptr;
  if (nvrtcCreateProgram(&prog, source.c_str(), "flexattn_nvrtc_check.cu", 0, nullptr, nullptr) !=
      NVRTC_SUCCESS) {
    r.log = "nvrtcCreateProgram failed";
    return r;
  }
  for (const std::string& n : names) nvrtcAddNameExpression(prog, n.c_str());
  std::vector<std::string> opts = {"-std=c++20", "-default-device", "--gpu-architecture=" + arch};
  for (const std::string& dir : includes) opts.push_back("-I" + dir);
  std::vector<const char*> argv;
  for (const std::string& o : opts) argv.push_back(o.c_str());
  const nvrtcResult status = nvrtcCompileProgram(prog, static_cast<int>(argv.size()), argv.data());
  size_t size = 0;
  nvrtcGetProgramLogSize(prog, &size);
  r.log.resize(size);
  if (size > 0) nvrtcGetProgramLog(prog, r.log.data());
  r.ok = status == NVRTC_SUCCESS;
  if (r.ok) {
    nvrtcGetPTXSize(prog, &size);
    r.ptx.resize(size);
    nvrtcGetPTX(prog, r.ptx.data());
    for (const std::string& n : names) {
      const char* low = nullptr;
      const bool found = nvrtcGetLoweredName(prog, n.c_str(), &low) == NVRTC_SUCCESS && low;
      r.lowered.push_back(found ? low : "");
    }
  }
  nvrtcDestroyProgram(&prog);
  return r;
}

// A user's variant as a run-time path would receive it, and the kernels it needs.
const char* kVariantSource = R"(
#include <flexattn/mods.h>
#include <flexattn/param.h>
#include <flexattn/detail/cuda/block_mask_build.cuh>
#include <flexattn/detail/cuda/bwd_postprocess.cuh>
#include <flexattn/detail/cuda/bwd_preprocess.cuh>
#include <flexattn/detail/cuda/combine_decode.cuh>
#include <flexattn/detail/cuda/mainloop_bwd_sm80.cuh>
#include <flexattn/detail/cuda/mainloop_bwd_sm90.cuh>
#include <flexattn/detail/cuda/mainloop_decode.cuh>
#include <flexattn/detail/cuda/mainloop_fwd_sm80.cuh>
#include <flexattn/detail/cuda/mainloop_fwd_sm90.cuh>
namespace fc = flexattn::detail::cuda;
struct RtcUnit {};
struct UserScore {
  const float* slopes;  // a captured per-head table
  template <class T>
  FLEXATTN_HD T operator()(T s, int, int h, int q, int kv) const {
    return flexattn::tanh(s * 0.05f) * 20.0f + slopes[h] * float(kv - q);
  }
};
using UserMask = flexattn::AndMask<flexattn::CausalMask, flexattn::SlidingWindowMask>;
// A learnable table (param.h): the forward runs it through PDual and converts back to float.
struct ParamScore {
  flexattn::Param table;
  template <class T>
  FLEXATTN_HD T operator()(T s, int, int h, int q, int kv) const {
    return s + flexattn::exp(table(h, (q - kv) & 31)) * 0.1f;
  }
};
)";

std::vector<std::string> kernel_names(const std::string& T, int D) {
  const std::string d = std::to_string(D);
  const std::string mods = ", " + T + ", UserScore, UserMask, RtcUnit>";
  return {
      "&fc::fwd_kernel_sm80<fc::FwdConfig<" + d + ">" + mods,
      "&fc::fwd_kernel_sm80<fc::FwdConfig<" + d + ">, " + T + ", ParamScore, UserMask, RtcUnit>",
      "&fc::fwd_kernel_sm90<fc::FwdConfigSm90<" + d + ">" + mods,
      "&fc::bwd_kernel_sm80<fc::BwdConfig<" + d + ">" + mods,
      "&fc::bwd_kernel_sm90<fc::BwdTraitsSm90<" + d + ">" + mods,
      "&fc::decode_kernel<fc::DecodeConfig<" + d + ">" + mods,
      "&fc::decode_combine_kernel<" + d + ", " + T + ", RtcUnit>",
      "&fc::bwd_preprocess_kernel<" + T + ", RtcUnit>",
      "&fc::bwd_postprocess_kernel<" + T + ", fc::BwdConfig<" + d + ">::DqLayout, RtcUnit>",
      "&fc::bwd_dq_mark_kernel<fc::BwdConfig<" + d + ">::kBlockN, RtcUnit>",
      "&fc::bwd_dq_rank_kernel<RtcUnit>",
      "&fc::block_mask_impl::classify_tiles_kernel<RtcUnit, UserMask>",
      "&fc::block_mask_impl::row_lists_kernel<fc::block_mask_impl::kListThreads, RtcUnit>",
      "&fc::block_mask_impl::column_lists_kernel<fc::block_mask_impl::kListThreads, RtcUnit>",
  };
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> includes, headers;
  bool after = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--") {
      after = true;
    } else {
      (after ? headers : includes).push_back(a);
    }
  }
  if (includes.empty() || headers.empty()) {
    std::fprintf(stderr, "usage: %s INCLUDE_DIR... -- HEADER...\n", argv[0]);
    return 2;
  }
  int failures = 0;
  auto fail = [&](const std::string& what, const std::string& log) {
    std::printf("FAILED: %s\n%s\n", what.c_str(), log.c_str());
    ++failures;
  };
  const char* archs[] = {"compute_80", "compute_90a"};

  for (const std::string& h : headers) {
    for (const char* arch : archs) {
      const Result r = compile("#include <flexattn/" + h + ">\n", arch, includes, {});
      if (!r.ok) fail(h + " alone, " + arch, r.log);
    }
  }
  std::printf("%zu headers x %zu architectures compiled alone\n", headers.size(), std::size(archs));

  for (const char* arch : archs) {
    for (const auto& [T, D] : {std::pair<std::string, int>{"__nv_bfloat16", 128}, {"__half", 64}}) {
      const std::vector<std::string> names = kernel_names(T, D);
      const std::string what = std::string("the kernels, ") + arch + ", " + T + ", D " +
                               std::to_string(D);
      const Result r = compile(kVariantSource, arch, includes, names);
      if (!r.ok) {
        fail(what, r.log);
        continue;
      }
      for (size_t i = 0; i < names.size(); ++i) {
        if (r.lowered[i].empty()) fail(what + ": no kernel for " + names[i], "");
      }
      const bool hopper = std::string(arch) == "compute_90a";
      const size_t wgmma = count(r.ptx, "wgmma.mma_async"), tma = count(r.ptx, "cp.async.bulk.tensor");
      if (hopper && (wgmma == 0 || tma == 0)) {
        fail(what + ": the Hopper kernels have no wgmma / tensor copies (bodies compiled out?)", "");
      }
      std::printf("%s: %zu kernels, %zu bytes of PTX, %zu wgmma, %zu tensor copies\n", what.c_str(),
                  names.size(), r.ptx.size(), wgmma, tma);
    }
  }
  if (failures > 0) std::printf("%d NVRTC compile(s) failed\n", failures);
  return failures == 0 ? 0 : 1;
}
