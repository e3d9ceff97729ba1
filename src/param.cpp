// Param's host-side constructor: the checks of param.h's contract.
#include <flexattn/param.h>

#include <string>

namespace flexattn {

Param::Param(const TensorView& value, const TensorView& grad) {
  auto bad = [](const std::string& what) { throw Error("flexattn::Param: " + what); };
  if (value.dtype == DType::i32) bad("value is i32; expected f32, f16 or bf16 (a learnable float)");
  if (grad.dtype != DType::f32) {
    bad(std::string("grad is ") + to_string(grad.dtype) + "; expected f32 (gradients accumulate "
        "in f32)");
  }
  if (value.rank < 1 || value.rank > 4) {
    bad("value has rank " + std::to_string(value.rank) + "; expected 1 to 4");
  }
  if (grad.rank != value.rank) {
    bad("grad has rank " + std::to_string(grad.rank) + "; expected value's " +
        std::to_string(value.rank));
  }
  if (value.device != grad.device) bad("value and grad are on different devices");
  int64_t expect = 1;
  for (int d = value.rank - 1; d >= 0; --d) {
    if (value.shape[d] < 1 || value.shape[d] > INT32_MAX) {
      bad("value.shape[" + std::to_string(d) + "] is " + std::to_string(value.shape[d]) +
          "; expected 1 to 2^31 - 1");
    }
    if (grad.shape[d] != value.shape[d]) {
      bad("grad.shape[" + std::to_string(d) + "] is " + std::to_string(grad.shape[d]) +
          "; expected value's " + std::to_string(value.shape[d]));
    }
    if (grad.shape[d] > 1 && grad.stride[d] != expect) bad("grad must be contiguous (row-major)");
    gstride_[d] = expect;
    expect *= value.shape[d];
    size_[d] = value.shape[d];
    stride_[d] = value.stride[d];
  }
  if (value.data == nullptr || grad.data == nullptr) bad("value or grad has null data");
  data_ = value.data;
  grad_ = static_cast<float*>(grad.data);
  storage_ = value.dtype == DType::f16 ? kF16 : (value.dtype == DType::bf16 ? kBf16 : kF32);
  on_cuda_ = value.device == Device::cuda;
  rank_ = value.rank;
  numel_ = expect;
}

}  // namespace flexattn
