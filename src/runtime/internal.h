// Internals of the runtime-variant backend (runtime.h): code generation, the compile cache, the
// CPU modules and the GPU kernels.
#pragma once

#include <cstdint>
#include <string>

#include "flexattn/detail/runtime/captures.h"
#include "flexattn/detail/runtime/dispatch.h"

// CMakeLists.txt defines it for the library's sources: part of every cache key.
#ifndef FLEXATTN_VERSION_STRING
#error "FLEXATTN_VERSION_STRING must be defined (CMakeLists.txt does)"
#endif

namespace flexattn::detail::runtime {

// ---- code generation (codegen.cpp) -----------------------------------------------------------
// The C++ definitions of flexattn_rt::Score and flexattn_rt::Mask for a pair of specs (null: the
// stock no-op), with #line directives so that the compiler's messages count lines in the user's
// source. The same text is compiled by the host compiler and by NVRTC.
std::string functor_source(const ModSpec* score, const ModSpec* mask);
// The pair's part of every cache key.
std::string pair_key(const ModSpec* score, const ModSpec* mask);
// The library's state for a spec: its captures' data, strides and sizes (zeros for null).
ModState state_of(const ModSpec* spec);
// Throws Error naming `fn` and the capture unless every capture of both specs is on `device`.
void check_capture_devices(const char* fn, Device device, const ModSpec* score,
                           const ModSpec* mask);
// A C++ string literal holding `text` exactly (octal escapes: no delimiter a source can break).
std::string string_literal(const std::string& text);

// ---- the compile cache (cache.cpp) ------------------------------------------------------------
uint64_t fnv1a(const std::string& text, uint64_t h = 14695981039346656037ull);
std::string hex16(uint64_t v);
// $FLEXATTN_CACHE_DIR, else $XDG_CACHE_HOME/flexattn, else $HOME/.cache/flexattn; "" when
// FLEXATTN_CACHE_DIR is set and empty. Created on first use.
const std::string& cache_dir();
// The headers the runtime compiles against: $FLEXATTN_INCLUDE_DIR, else the source tree's
// include/ when it still holds runtime.h, else the install prefix's include directory.
const std::string& include_dir();
// A hash of every file under include_dir(): a header edit makes a new key for every module.
const std::string& headers_fingerprint();
// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
// reader never sees a partial file. False (nothing written) on any failure.
bool write_atomically(const std::string& path, const std::string& bytes);
// A cache entry on disk: `body` followed by a trailer holding a hash of the body and its key,
// written atomically. read_entry gives the body back only when the trailer matches: a truncated,
// overwritten or foreign file reads as absent (and is rebuilt). Loaders ignore the trailer bytes
// past a shared object's sections, so a CPU entry is dlopen'ed as it lies.
bool write_entry(const std::string& path, const std::string& body, const std::string& key);
bool read_entry(const std::string& path, const std::string& key, std::string& body);
// Reads a whole file; false when it cannot.
bool read_file(const std::string& path, std::string& bytes);
// A fresh private directory under $TMPDIR (or /tmp) for one compile; removed by the caller.
std::string make_temp_dir();
void remove_tree(const std::string& dir);
// Runs a shell command, returns its exit status and its stdout + stderr in `output`.
int run_command(const std::string& command, std::string& output);
// Single-quotes a path for the shell.
std::string shell_quote(const std::string& s);
void count_compiled();
void count_loaded_from_disk();
void count_memory_hit();

// ---- backends ----------------------------------------------------------------------------------
// CPU (cpu_module.cpp): runs op through the pair's module, compiling or loading it first.
void cpu_run(int op, void* args, const ModSpec* score, const ModSpec* mask);
void cpu_forget_modules();
// GPU (gpu_runtime.cu with CUDA, else gpu_unavailable.cpp, which throws).
void gpu_forward(const FwdArgs& args, const ModSpec* score, const ModSpec* mask);
void gpu_backward(const BwdArgs& args, const ModSpec* score, const ModSpec* mask);
void gpu_paged_forward(const PagedArgs& args, const ModSpec* score, const ModSpec* mask);
void gpu_build_block_mask(const ModSpec& mask, BlockMaskData& data, void* stream);
void gpu_forget_modules();

}  // namespace flexattn::detail::runtime
