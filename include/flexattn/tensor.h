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

enum class DType { f32, f16, bf16 };
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

// Owning byte storage on one device. Copies share the storage (like a shared_ptr).
class Buffer {
 public:
  Buffer() = default;
  static Buffer allocate(size_t bytes, Device device);
  // Copies `bytes` bytes from host memory into a new buffer on `device`.
  static Buffer from_host(const void* src, size_t bytes, Device device);
  void copy_to_host(void* dst, size_t bytes) const;

  void* data() { return ptr_.get(); }
  const void* data() const { return ptr_.get(); }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  explicit operator bool() const { return static_cast<bool>(ptr_); }

 private:
  std::shared_ptr<void> ptr_;
  size_t bytes_ = 0;
  Device device_ = Device::cpu;
};

inline constexpr int kMaxRank = 4;

// Non-owning strided view. Strides are in elements. Rank <= 4; unused trailing dims are 1.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  int rank = 0;
  int64_t shape[kMaxRank] = {1, 1, 1, 1};
  int64_t stride[kMaxRank] = {0, 0, 0, 0};

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank; ++i) n *= shape[i];
    return n;
  }
};

// Owning, contiguous, row-major tensor.
class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(std::vector<int64_t> shape, DType dtype, Device device = Device::cpu);
  // Converts float32 host data to `dtype` (round to nearest even) on `device`.
  static Tensor from_host(const float* src, std::vector<int64_t> shape, DType dtype,
                          Device device = Device::cpu);
  // Converts to float32 into host memory of numel() floats.
  void copy_to_host(float* dst) const;
  std::vector<float> to_host() const;
  // Sets every element to `value` (tests poison outputs with NaN through this).
  void fill(float value);

  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t size(int dim) const;
  int64_t numel() const;
  int rank() const { return static_cast<int>(shape_.size()); }
  DType dtype() const { return dtype_; }
  Device device() const { return buffer_.device(); }
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
