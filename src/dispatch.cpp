#include <string>

#include "flexattn/detail/cuda/dispatch.h"

namespace flexattn::detail::cuda {

void throw_needs_nvcc(const char* what) {
  throw Error(std::string("flexattn: ") + what +
              " on Device::cuda is not one of the stock variants built into the library; call it "
              "from a .cu file compiled by nvcc so the kernel is instantiated for your functors "
              "(compile-time fusion)");
}

}  // namespace flexattn::detail::cuda
