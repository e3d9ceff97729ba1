// How the launchers name and launch a kernel, so that ONE launch code serves two kinds of kernels:
//   compiled in   the kernel templates instantiated by nvcc in the calling translation unit
//                 (ThisUnit in a user's .cu, LibraryUnit in the library's prebuilt files);
//   run time      kernels compiled at run time (NVRTC) and handed over as cudaKernel_t handles by
//                 a unit tag that satisfies RuntimeKernelUnit.
// The runtime API takes either as a `const void*` (cudaLaunchKernelExC, cudaFuncSetAttribute and
// cudaOccupancyMaxActiveBlocksPerMultiprocessor accept a cudaKernel_t cast to it), so a launcher
// asks one helper per kernel template for a KernelRef (the pointer, plus the kernel's parameter
// types in its type) and launches it through launch_kernel; only that helper knows which kind.
//
// HAZARD - instantiation: the helper picks with `if constexpr (RuntimeKernelUnit<Unit>)`, and the
// compiled-in branch names the kernel template. That branch must stay discarded for a runtime
// unit: instantiating a kernel there would make nvcc compile it for the device with the runtime
// unit's proxy functors, whose operator() has no definition (only NVRTC sees the real one).
//
// Host only: under NVRTC the file is empty (the nvrtc test compiles every detail/cuda/*.cuh alone,
// this one too).
#pragma once

#if !defined(__CUDACC_RTC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <concepts>
#include <initializer_list>
#include <string>
#include <type_traits>

namespace flexattn {
struct NoopScore;
struct NoopMask;
}  // namespace flexattn

namespace flexattn::detail::cuda {

// A unit tag whose kernels come at run time. It provides
//   static const void* kernel(const std::string& name_expression);
//       the cudaKernel_t (as const void*) of the kernel whose C++ template-id is the argument,
//       e.g. "flexattn::detail::cuda::decode_combine_kernel<128, __nv_bfloat16, my::Unit>"
//       (rt_template_id below builds them), as given to nvrtcAddNameExpression. It should
//       throw when it has none: a null handle fails only at the launch, as "invalid argument".
//       Called on every launch, with a freshly built string: worth a cache on its side.
//   static auto prefetch_batch();
//       an RAII object: while it lives on this thread, kernel(name) only starts compiling `name`
//       in the background and returns null. A launcher that runs several kernels names them all
//       in one batch first (prefetch_kernels below), so a cold call compiles them in parallel
//       instead of one after the other.
//   static bool runs_sm90a();
//       whether its Hopper (sm_90a) kernels can run on the current device.
//   static constexpr const char* kName;
//       its own C++ name, as it appears in those name expressions.
template <class Unit>
concept RuntimeKernelUnit = requires { requires Unit::kRuntimeKernels; };

// ---- names of template arguments as C++ source text ---------------------------------------------
// The name expressions must spell the template-id exactly as the run-time compiled source can
// resolve it: fully qualified, every argument rendered. A type that is neither one of the
// specialisations below nor carries `static constexpr const char* kRtName` (the runtime proxies
// of user functors do) has no rendering and fails to compile in rt_name; that happens only on the
// runtime path, which instantiates rt_name.

template <class X>
concept HasRtName = requires {
  { X::kRtName } -> std::convertible_to<const char*>;
};

template <class X>
inline constexpr bool kNoRtName = false;

// One specialisation per type (or class template) the launchers pass to a kernel.
template <class X>
struct RtName {
  static_assert(kNoRtName<X>,
                "rt_name: no C++ name for this template argument of a kernel; a functor of a "
                "runtime unit needs `static constexpr const char* kRtName`");
};

// Forward declarations: the specialisations need the templates' names only, not their
// definitions (which would pull the kernels' headers into every user of this file).
template <int D>
struct FwdConfig;
template <int D>
struct FwdConfigSm90;
template <int D>
struct BwdConfig;
template <int D>
struct BwdTraitsSm90;
template <int D>
struct DecodeConfig;
struct DqRowMajor;
template <int D>
struct DqTileSm90;

namespace rt_name_detail {
inline std::string with_dim(const char* tmpl, int d) {
  return std::string("flexattn::detail::cuda::") + tmpl + "<" + std::to_string(d) + ">";
}
}  // namespace rt_name_detail

template <>
struct RtName<__half> {
  static std::string get() { return "__half"; }
};
template <>
struct RtName<__nv_bfloat16> {
  static std::string get() { return "__nv_bfloat16"; }
};
template <>
struct RtName<::flexattn::NoopScore> {
  static std::string get() { return "flexattn::NoopScore"; }
};
template <>
struct RtName<::flexattn::NoopMask> {
  static std::string get() { return "flexattn::NoopMask"; }
};
template <int D>
struct RtName<FwdConfig<D>> {
  static std::string get() { return rt_name_detail::with_dim("FwdConfig", D); }
};
template <int D>
struct RtName<FwdConfigSm90<D>> {
  static std::string get() { return rt_name_detail::with_dim("FwdConfigSm90", D); }
};
template <int D>
struct RtName<BwdConfig<D>> {
  static std::string get() { return rt_name_detail::with_dim("BwdConfig", D); }
};
template <int D>
struct RtName<BwdTraitsSm90<D>> {
  static std::string get() { return rt_name_detail::with_dim("BwdTraitsSm90", D); }
};
template <int D>
struct RtName<DecodeConfig<D>> {
  static std::string get() { return rt_name_detail::with_dim("DecodeConfig", D); }
};
template <>
struct RtName<DqRowMajor> {
  static std::string get() { return "flexattn::detail::cuda::DqRowMajor"; }
};
template <int D>
struct RtName<DqTileSm90<D>> {
  static std::string get() { return rt_name_detail::with_dim("DqTileSm90", D); }
};

// The C++ name of template argument X: a runtime unit's kName, a functor's kRtName, else RtName.
template <class X>
std::string rt_name() {
  if constexpr (RuntimeKernelUnit<X>) {
    return X::kName;
  } else if constexpr (HasRtName<X>) {
    return X::kRtName;
  } else {
    return RtName<X>::get();
  }
}

// "name<arg1, arg2, ...>": `name` fully qualified; a non-type argument as std::to_string(n).
inline std::string rt_template_id(const std::string& name,
                                  std::initializer_list<std::string> args) {
  std::string id = name + "<";
  bool first = true;
  for (const std::string& a : args) {
    if (!first) id += ", ";
    id += a;
    first = false;
  }
  return id + ">";
}
// The same for a template of type arguments only: name<rt_name<Xs>()...>.
template <class... Xs>
std::string rt_type_id(const std::string& name) {
  return rt_template_id(name, {rt_name<Xs>()...});
}

// ---- kernel references --------------------------------------------------------------------------

// A kernel to launch: `fn` for the runtime API (a host stub's address or a cudaKernel_t), and the
// kernel's parameter types (top-level const dropped, as in its function type) in the type, so
// that launches convert their arguments to exactly those types on both paths.
template <class... Params>
struct KernelRef {
  const void* fn = nullptr;
};

// The compiled-in kernel `kernel` as the KernelRef `Ref` a launcher declared for it: a launcher
// whose parameter types drift from the kernel's fails here, at compile time.
template <class Ref, class... Params>
Ref static_kernel(void (*kernel)(Params...)) {
  static_assert(std::is_same_v<Ref, KernelRef<Params...>>,
                "the launcher's KernelRef parameter types differ from the kernel's");
  return Ref{reinterpret_cast<const void*>(kernel)};
}

// The run-time kernel of Unit named by the template-id `name_expression`.
template <class Ref, class Unit>
  requires RuntimeKernelUnit<Unit>
Ref runtime_kernel(const std::string& name_expression) {
  return Ref{Unit::kernel(name_expression)};
}

// Has a runtime unit start compiling every kernel `name_them` asks for (it calls the launcher's
// kernel helpers and drops their null results); nothing for a compile-time unit, whose kernels
// are compiled in. A kernel named here and never launched costs a compile, nothing else.
template <class Unit, class F>
void prefetch_kernels(const F& name_them) {
  if constexpr (RuntimeKernelUnit<Unit>) {
    const auto batch = Unit::prefetch_batch();
    name_them();
  }
}

// ---- launches -----------------------------------------------------------------------------------

// Launches `fn` with `args` as its parameters; where `pdl` (sm90+; the kernel calls
// grid::wait_for_prior_grid before touching memory) as a programmatic dependent of the work
// before it on the stream: its CTAs are scheduled while that work finishes instead of after the
// kernel boundary. Returns the launch's error, which is also the thread's last error
// (cudaGetLastError), as for a <<<...>>> launch: FLEXATTN_CUDA_CHECK_LAUNCH after it reads and
// clears it.
// HAZARD: each argument is passed by address through a void* array and read by the driver as the
// kernel's parameter at that position: no conversion happens, so every object must be exactly of
// the kernel's declared parameter type (an int where the kernel takes int64_t, or a derived
// params struct, is read as garbage). Launch through the KernelRef overload below, which converts.
template <class... KArgs>
[[nodiscard]] cudaError_t launch_kernel(const void* fn, dim3 grid, dim3 block, size_t smem,
                                        cudaStream_t stream, bool pdl, const KArgs&... args) {
  static_assert(sizeof...(KArgs) > 0, "every kernel of this library takes parameters");
  void* argv[] = {const_cast<void*>(static_cast<const void*>(&args))...};
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  if (pdl) cfg.attrs = &attr, cfg.numAttrs = 1;
  return cudaLaunchKernelExC(&cfg, fn, argv);
}

// The typed launch: `args` are converted to the kernel's parameter types at the call (as a
// <<<...>>> launch does; the temporaries live until the launch returns), then passed as above.
template <class... Params>
[[nodiscard]] cudaError_t launch_kernel(KernelRef<Params...> kernel, dim3 grid, dim3 block,
                                        size_t smem, cudaStream_t stream, bool pdl,
                                        const std::type_identity_t<Params>&... args) {
  return launch_kernel(kernel.fn, grid, block, smem, stream, pdl, args...);
}

}  // namespace flexattn::detail::cuda
#endif  // !__CUDACC_RTC__
