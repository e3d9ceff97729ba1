// append_kv: validation, then the backend's writes.
#include "flexattn/paged.h"

namespace flexattn {

void append_kv(PagedKV& cache, const Tensor& k_new, const Tensor& v_new, AttentionOptions opts) {
  const detail::AppendArgs a = detail::make_append_args(cache, k_new.view(), v_new.view(), opts);
  if (a.T == 0) return;  // nothing to write; lengths unchanged
  if (cache.k_pages.device() == Device::cpu) {
    detail::cpu::append_kv(a);
  } else {
    detail::cuda::append_kv(a);
  }
}

}  // namespace flexattn
