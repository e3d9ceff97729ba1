#include "flexattn/tensor.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "device_memory.h"
#include "flexattn/detail/cpu/kernels.h"

namespace flexattn {

const char* to_string(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
  }
  return "?";
}

const char* to_string(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

size_t dtype_size(DType t) { return t == DType::f32 || t == DType::i32 ? 4 : 2; }

bool cuda_available() { return detail::cuda_device_present(); }

void synchronize() { detail::cuda_synchronize(); }

// ---- Buffer -------------------------------------------------------------------------------------
Buffer Buffer::allocate(size_t bytes, Device device, void* stream) {
  Buffer b;
  b.bytes_ = bytes;
  b.device_ = device;
  b.stream_ = device == Device::cuda ? stream : nullptr;
  // A zero-byte request still gets a distinct allocation so a defined Buffer is never null.
  const size_t n = bytes == 0 ? 1 : bytes;
  if (device == Device::cpu) {
    // 64-byte alignment: SIMD loads of whole cache lines; aligned_alloc wants a multiple of it.
    void* p = std::aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) throw Error("flexattn: out of host memory allocating " + std::to_string(bytes) + " bytes");
    b.ptr_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  } else {
    b.ptr_ = detail::cuda_allocate(n, stream);
  }
  return b;
}

Buffer Buffer::from_host(const void* src, size_t bytes, Device device, void* stream) {
  Buffer b = allocate(bytes, device, stream);
  if (bytes == 0) return b;
  if (device == Device::cpu) {
    std::memcpy(b.data(), src, bytes);
  } else {
    detail::cuda_copy_to_device(b.data(), src, bytes, b.stream_);
  }
  return b;
}

Buffer Buffer::from_blob(void* data, size_t bytes, Device device, std::shared_ptr<void> owner,
                         void* stream) {
  if (data == nullptr && bytes > 0) {
    throw Error("flexattn: Buffer::from_blob: data is null; expected " + std::to_string(bytes) +
                " bytes");
  }
  Buffer b;
  b.bytes_ = bytes;
  b.device_ = device;
  b.stream_ = device == Device::cuda ? stream : nullptr;
  // Aliasing constructor: shares `owner`'s count and points at `data`, so the buffer is defined
  // (non-null) and releasing it releases `owner` only. A zero-byte blob with no data still needs
  // a non-null pointer to count as defined: a static byte stands in for it (never read).
  static char zero_bytes;
  b.ptr_ = std::shared_ptr<void>(std::move(owner), data != nullptr ? data : &zero_bytes);
  return b;
}

void Buffer::copy_to_host(void* dst, size_t bytes) const {
  if (bytes > bytes_) {
    throw Error("flexattn: Buffer::copy_to_host of " + std::to_string(bytes) +
                " bytes from a buffer of " + std::to_string(bytes_));
  }
  if (bytes == 0) return;
  if (device_ == Device::cpu) {
    std::memcpy(dst, data(), bytes);
  } else {
    detail::cuda_copy_to_host(dst, data(), bytes, stream_);
  }
}

// ---- Tensor -------------------------------------------------------------------------------------
namespace {
std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Elements of `shape`, refusing a rank outside 1..4, a negative dim, and a shape whose element
// count or byte size does not fit int64 (the byte size also fits size_t then). `fn` is the
// function the user called.
int64_t checked_numel(const char* fn, const std::vector<int64_t>& shape, DType dtype) {
  if (shape.empty() || shape.size() > static_cast<size_t>(kMaxRank)) {
    throw Error(std::string("flexattn::") + fn + ": shape must have 1 to 4 dims; got " +
                std::to_string(shape.size()));
  }
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) {
      throw Error(std::string("flexattn::") + fn + ": shape[" + std::to_string(i) +
                  "] must be >= 0; got " + std::to_string(shape[i]) + " in shape " +
                  shape_str(shape));
    }
  }
  // A zero dim makes the tensor empty whatever the other dims are.
  for (int64_t d : shape)
    if (d == 0) return 0;
  const int64_t esize = static_cast<int64_t>(dtype_size(dtype));
  int64_t n = 1, bytes = 0;
  bool overflow = false;
  for (int64_t d : shape) overflow = overflow || __builtin_mul_overflow(n, d, &n);
  if (overflow || __builtin_mul_overflow(n, esize, &bytes)) {
    throw Error(std::string("flexattn::") + fn + ": shape " + shape_str(shape) + " of " +
                to_string(dtype) + " is too large; expected at most " +
                std::to_string(INT64_MAX / esize) + " elements (the byte size must fit int64)");
  }
  return n;
}

// The float-based calls convert through the row kernels, which know the float dtypes only.
void refuse_i32(const char* fn, DType dtype, const char* instead) {
  if (dtype == DType::i32) {
    throw Error(std::string("flexattn::Tensor::") + fn + ": the tensor's dtype is i32, which " +
                "holds int32 values and is never converted; use " + instead);
  }
}
}  // namespace

Tensor Tensor::empty(std::vector<int64_t> shape, DType dtype, Device device, void* stream) {
  const int64_t n = checked_numel("Tensor::empty", shape, dtype);
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.buffer_ = Buffer::allocate(static_cast<size_t>(n) * dtype_size(dtype), device, stream);
  return t;
}

Tensor Tensor::from_blob(void* data, std::vector<int64_t> shape, DType dtype, Device device,
                         std::shared_ptr<void> owner) {
  const int64_t n = checked_numel("Tensor::from_blob", shape, dtype);
  if (data == nullptr && n > 0) {
    throw Error("flexattn::Tensor::from_blob: data is null; expected " + std::to_string(n) +
                " elements");
  }
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.buffer_ = Buffer::from_blob(data, static_cast<size_t>(n) * dtype_size(dtype), device,
                                std::move(owner));
  return t;
}

Tensor Tensor::from_host(const float* src, std::vector<int64_t> shape, DType dtype, Device device) {
  refuse_i32("from_host", dtype, "Tensor::from_host(const int32_t*, shape, device)");
  const int64_t n = checked_numel("Tensor::from_host", shape, dtype);
  if (src == nullptr && n > 0) {
    throw Error("flexattn::Tensor::from_host: src is null; expected " + std::to_string(n) +
                " floats for shape " + shape_str(shape));
  }
  if (device == Device::cpu) {
    Tensor t = empty(std::move(shape), dtype, device);
    detail::cpu::store_row(src, t.data(), dtype, n);
    return t;
  }
  std::vector<unsigned char> staged(static_cast<size_t>(n) * dtype_size(dtype));
  detail::cpu::store_row(src, staged.data(), dtype, n);
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.buffer_ = Buffer::from_host(staged.data(), staged.size(), device);
  return t;
}

Tensor Tensor::from_host(const int32_t* src, std::vector<int64_t> shape, Device device) {
  const int64_t n = checked_numel("Tensor::from_host", shape, DType::i32);
  if (src == nullptr && n > 0) {
    throw Error("flexattn::Tensor::from_host: src is null; expected " + std::to_string(n) +
                " int32 values for shape " + shape_str(shape));
  }
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = DType::i32;
  t.buffer_ = Buffer::from_host(src, static_cast<size_t>(n) * sizeof(int32_t), device);
  return t;
}

void Tensor::copy_to_host(int32_t* dst) const {
  if (dtype_ != DType::i32) {
    throw Error(std::string("flexattn::Tensor::copy_to_host(int32_t*): the tensor's dtype is ") +
                to_string(dtype_) + "; expected i32 (copy_to_host(float*) converts the others)");
  }
  const int64_t n = numel();
  if (dst == nullptr && n > 0) {
    throw Error("flexattn::Tensor::copy_to_host: dst is null; expected room for " +
                std::to_string(n) + " int32 values");
  }
  buffer_.copy_to_host(dst, static_cast<size_t>(n) * sizeof(int32_t));
}

void Tensor::copy_to_host(float* dst) const {
  refuse_i32("copy_to_host(float*)", dtype_, "copy_to_host(int32_t*)");
  const int64_t n = numel();
  if (dst == nullptr && n > 0) {
    throw Error("flexattn::Tensor::copy_to_host: dst is null; expected room for " +
                std::to_string(n) + " floats");
  }
  if (device() == Device::cpu) {
    detail::cpu::load_row(data(), dtype_, dst, n);
    return;
  }
  std::vector<unsigned char> staged(static_cast<size_t>(n) * dtype_size(dtype_));
  buffer_.copy_to_host(staged.data(), staged.size());
  detail::cpu::load_row(staged.data(), dtype_, dst, n);
}

std::vector<float> Tensor::to_host() const {
  refuse_i32("to_host", dtype_, "copy_to_host(int32_t*)");
  std::vector<float> r(static_cast<size_t>(numel()));
  copy_to_host(r.data());
  return r;
}

void Tensor::fill(float value) {
  refuse_i32("fill", dtype_, "Tensor::from_host(const int32_t*, ...) for its values");
  const std::vector<float> v(static_cast<size_t>(numel()), value);
  if (device() == Device::cpu) {
    detail::cpu::store_row(v.data(), data(), dtype_, numel());
    return;
  }
  std::vector<unsigned char> staged(static_cast<size_t>(numel()) * dtype_size(dtype_));
  detail::cpu::store_row(v.data(), staged.data(), dtype_, numel());
  detail::cuda_copy_to_device(data(), staged.data(), staged.size(), stream());
}

int64_t Tensor::size(int dim) const {
  if (dim < 0) dim += rank();
  if (dim < 0 || dim >= rank()) {
    throw Error("flexattn: Tensor::size(" + std::to_string(dim) + ") on a rank-" +
                std::to_string(rank()) + " tensor");
  }
  return shape_[static_cast<size_t>(dim)];
}

int64_t Tensor::numel() const {
  int64_t n = shape_.empty() ? 0 : 1;
  for (int64_t s : shape_) n *= s;
  return n;
}

TensorView Tensor::view() const {
  TensorView v;
  v.data = const_cast<void*>(data());
  v.dtype = dtype_;
  v.device = device();
  v.rank = rank();
  int64_t stride = 1;
  for (int i = rank() - 1; i >= 0; --i) {
    v.shape[i] = shape_[static_cast<size_t>(i)];
    v.stride[i] = stride;
    stride *= shape_[static_cast<size_t>(i)];
  }
  return v;
}

}  // namespace flexattn
