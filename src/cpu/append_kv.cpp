// append_kv on the CPU: every sequence is checked before the first row is written, so a refused
// call leaves the cache as it was.
#include <cstdint>
#include <cstring>
#include <string>

#include "flexattn/paged.h"

namespace flexattn::detail::cpu {

namespace {
char* row_at(const TensorView& v, int64_t i0, int64_t i1, int64_t i2) {
  return static_cast<char*>(v.data) +
         (i0 * v.stride[0] + i1 * v.stride[1] + i2 * v.stride[2]) *
             static_cast<int64_t>(dtype_size(v.dtype));
}
}  // namespace

void append_kv(const AppendArgs& a) {
  const auto* len = static_cast<const int32_t*>(a.kv_len.data);
  const auto* table = static_cast<const int32_t*>(a.page_table.data);
  const int64_t capacity = a.max_pages * a.page_size;
  for (int64_t b = 0; b < a.B; ++b) {
    const int64_t l = len[b * a.kv_len.stride[0]];
    if (l < 0 || l + a.T > capacity) {
      throw Error("flexattn::append_kv: sequence " + std::to_string(b) + " holds kv_len " +
                  std::to_string(l) + " tokens; appending " + std::to_string(a.T) +
                  " needs 0 <= kv_len and kv_len + T <= max_pages_per_seq * page_size = " +
                  std::to_string(capacity) + " (nothing was written)");
    }
    for (int64_t p = l / a.page_size; p <= (l + a.T - 1) / a.page_size; ++p) {
      const int64_t id = table[b * a.page_table.stride[0] + p * a.page_table.stride[1]];
      if (id < 0 || id >= a.num_pages) {
        throw Error("flexattn::append_kv: page_table[" + std::to_string(b) + "][" +
                    std::to_string(p) + "] is " + std::to_string(id) +
                    "; the pages written must be in [0, num_pages = " +
                    std::to_string(a.num_pages) + ") (nothing was written)");
      }
    }
  }
  const size_t kbytes = static_cast<size_t>(a.D) * dtype_size(a.k_new.dtype);
  const size_t vbytes = static_cast<size_t>(a.Dv) * dtype_size(a.v_new.dtype);
  auto* lens = static_cast<int32_t*>(a.kv_len.data);
  for (int64_t b = 0; b < a.B; ++b) {
    int32_t& l = lens[b * a.kv_len.stride[0]];
    for (int64_t t = 0; t < a.T; ++t) {
      const int64_t pos = l + t;
      const int64_t page =
          table[b * a.page_table.stride[0] + (pos / a.page_size) * a.page_table.stride[1]];
      const int64_t row = pos % a.page_size;
      for (int64_t h = 0; h < a.Hkv; ++h) {
        std::memcpy(row_at(a.k_pages, page, h, row), row_at(a.k_new, b, h, t), kbytes);
        std::memcpy(row_at(a.v_pages, page, h, row), row_at(a.v_new, b, h, t), vbytes);
      }
    }
    l = static_cast<int32_t>(l + a.T);
  }
}

}  // namespace flexattn::detail::cpu
