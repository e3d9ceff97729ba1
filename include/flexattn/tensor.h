// Tensors, buffers and errors: the value types every flexattn call takes.
//
// `Tensor` is the convenient owner (contiguous, row-major). Kernels never see it: they take a
// `TensorView` (pointer + dtype + device + up to 4 dims with element strides), so a caller holding
// [B, S, H, D] activations can hand them to the `*_into` layer without a copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace flexattn {

// f32 / f16 / bf16 hold attention operands; i32 holds indices (page tables, lengths) and is
// copied to and from the host as int32_t, never converted: the float-based Tensor calls below
// refuse it with an Error, and so does every attention entry point.
enum class DType { f32, f16, bf16, i32 };
enum class Device { cpu, cuda };

// Thrown for every bad input. The message names the argument and the value that was expected.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* to_string(DType);
const char* to_string(Device);
size_t dtype_size(DType);

// True when this build has the CUDA backend and a CUDA device is visible.
bool cuda_available();
// Waits until all work queued on the GPU has finished (kernels are asynchronous); a no-op without
// CUDA. Time GPU calls only across a synchronize().
void synchronize();

// ---- GPU memory ----------------------------------------------------------------------------------
// Every Device::cuda allocation the library makes (tensors, block masks, the backward's workspaces)
// is stream-ordered: it is made on a CUDA stream and, when its last user lets go, kept for later
// allocations on that same stream (whose work is ordered after every earlier use there), so no
// call allocates or frees with a synchronisation, and a tensor may outlive its stream. By default
// the memory comes from a pool the library keeps per device (cudaMallocFromPoolAsync) and stays
// mapped for the life of the process, as with a caching allocator; release_cached_memory()
// waits for every device with cached blocks (cudaDeviceSynchronize) and hands them back.
//
// A host framework can route these allocations to its own allocator (PyTorch's caching allocator,
// RMM, ...). `allocate` must return memory usable on `stream` in stream order (or throw / return
// nullptr: the library then throws Error); `deallocate` receives the pointer, size, device and
// stream of the allocation once the library's last use of it has been enqueued on that stream.
// Allocations made before a change are handed back to the allocator that made them. Calling
// set_cuda_allocator with a default-constructed CudaAllocator restores the library's pool; setting
// only one of the two functions throws Error.
struct CudaAllocator {
  void* (*allocate)(size_t bytes, int device, void* stream, void* ctx) = nullptr;
  void (*deallocate)(void* ptr, size_t bytes, int device, void* stream, void* ctx) = nullptr;
  void* ctx = nullptr;
};
void set_cuda_allocator(const CudaAllocator& allocator);
// Hands the library pool's cached blocks back to the device (synchronising each device that has
// some); a no-op without CUDA. Memory still held by live tensors is not affected.
void release_cached_memory();

// Owning byte storage on one device. Copies share the storage (like a shared_ptr).
//
// On Device::cuda a buffer belongs to the CUDA stream it was allocated on (`stream`, a
// cudaStream_t; nullptr is the legacy default stream): its memory goes back to that stream's
// cache when the last copy is destroyed (no CUDA call: the stream may already be destroyed), and
// its host copies are ordered after the work already queued on it (so those need the stream
// alive). HAZARD - as with PyTorch's record_stream: work on ANOTHER stream that uses the buffer
// must be ordered before the buffer is destroyed (an event, or a synchronisation).
class Buffer {
 public:
  Buffer() = default;
  static Buffer allocate(size_t bytes, Device device, void* stream = nullptr);
  // Copies `bytes` bytes from host memory into a new buffer on `device`; returns once the copy
  // has completed.
  static Buffer from_host(const void* src, size_t bytes, Device device, void* stream = nullptr);
  // Wraps `bytes` bytes at `data` on `device` that someone else owns, without copying: nothing is
  // freed when the last copy goes, except that `owner` (may be empty) is released then. The
  // memory must stay valid while any copy lives; `owner` is the way to tie its life to them.
  // Throws Error for a null `data` with bytes > 0.
  static Buffer from_blob(void* data, size_t bytes, Device device, std::shared_ptr<void> owner,
                          void* stream = nullptr);
  // Waits for the work queued on the buffer's stream, then copies into host memory.
  void copy_to_host(void* dst, size_t bytes) const;

  void* data() { return ptr_.get(); }
  const void* data() const { return ptr_.get(); }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  void* stream() const { return stream_; }
  explicit operator bool() const { return static_cast<bool>(ptr_); }

 private:
  std::shared_ptr<void> ptr_;
  size_t bytes_ = 0;
  Device device_ = Device::cpu;
  void* stream_ = nullptr;
};

inline constexpr int kMaxRank = 4;

// Non-owning strided view. Strides are in elements. Rank 0..4; unused trailing dims are 1.
// A view is only read through the attention calls, which refuse a bad rank, negative dims, null
// data and sizes or strides whose index arithmetic would overflow (see detail/args.h).
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  int rank = 0;
  int64_t shape[kMaxRank] = {1, 1, 1, 1};
  int64_t stride[kMaxRank] = {0, 0, 0, 0};

  // Product of the first `rank` dims, rank clamped to 0..kMaxRank (never reads past shape[]).
  // 0 when a dim is 0; -1 when a dim is negative or the product does not fit int64.
  int64_t numel() const {
    const int r = rank < 0 ? 0 : (rank > kMaxRank ? kMaxRank : rank);
    for (int i = 0; i < r; ++i)
      if (shape[i] < 0) return -1;
    for (int i = 0; i < r; ++i)
      if (shape[i] == 0) return 0;
    int64_t n = 1;
    for (int i = 0; i < r; ++i) {
      if (n > INT64_MAX / shape[i]) return -1;
      n *= shape[i];
    }
    return n;
  }
};

// Owning, contiguous, row-major tensor. On Device::cuda it is stream-ordered like its Buffer:
// `stream` (a cudaStream_t, nullptr the legacy default stream) is where its memory is made and
// handed back, and where copy_to_host / to_host / fill are ordered (they wait for that stream).
// The front door's outputs (flex_attention, flex_attention_backward) are made on
// AttentionOptions.stream.
class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(std::vector<int64_t> shape, DType dtype, Device device = Device::cpu,
                      void* stream = nullptr);
  // Converts float32 host data to `dtype` (round to nearest even) on `device`. Error for i32
  // (use the int32_t overload) and for a null src with elements to copy.
  static Tensor from_host(const float* src, std::vector<int64_t> shape, DType dtype,
                          Device device = Device::cpu);
  // An i32 tensor holding a copy of numel() int32 values. Error for a null src with elements.
  static Tensor from_host(const int32_t* src, std::vector<int64_t> shape,
                          Device device = Device::cpu);
  // A tensor over memory another framework owns (zero copy), e.g. a runtime mod's capture taken
  // from a PyTorch tensor: `data` holds numel() elements of `dtype`, contiguous and row-major, on
  // `device`. Buffer::from_blob's rules hold: `owner` (may be empty) is released with the last
  // copy and nothing else is freed. Throws Error for a bad shape (as empty) or a null `data` with
  // elements.
  static Tensor from_blob(void* data, std::vector<int64_t> shape, DType dtype, Device device,
                          std::shared_ptr<void> owner = {});
  // Converts to float32 into host memory of numel() floats. Error on an i32 tensor.
  void copy_to_host(float* dst) const;
  // Copies an i32 tensor's numel() values into dst. Error unless dtype() == i32.
  void copy_to_host(int32_t* dst) const;
  std::vector<float> to_host() const;  // Error on an i32 tensor, as copy_to_host(float*)
  // Sets every element to `value` (tests poison outputs with NaN through this). Error on i32.
  void fill(float value);

  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t size(int dim) const;
  int64_t numel() const;
  int rank() const { return static_cast<int>(shape_.size()); }
  DType dtype() const { return dtype_; }
  Device device() const { return buffer_.device(); }
  void* stream() const { return buffer_.stream(); }
  void* data() { return buffer_.data(); }
  const void* data() const { return buffer_.data(); }
  bool defined() const { return static_cast<bool>(buffer_); }

  TensorView view() const;

 private:
  std::vector<int64_t> shape_;
  DType dtype_ = DType::f32;
  Buffer buffer_;
};

}  // namespace flexattn
