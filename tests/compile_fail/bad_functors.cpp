// Must NOT compile: each FLEXATTN_CASE is a functor mistake a user makes, and the test registered
// in tests/CMakeLists.txt checks that the compiler prints flexattn's static_assert message for it.
#include <flexattn/flexattn.h>

namespace fa = flexattn;

// Written for float only: the forward accepts it, the backward cannot differentiate it.
struct FloatOnlyScore {
  float operator()(float s, int, int, int, int) const { return 2.0f * s; }
};
// Forgot the b and h arguments.
struct ThreeArgScore {
  template <class T>
  T operator()(T s, int, int) const {
    return s;
  }
};
// A mask_mod that returns nothing.
struct VoidMask {
  void operator()(int, int, int, int) const {}
};

int main() {
  const fa::Tensor t = fa::Tensor::empty({1, 1, 4, 8}, fa::DType::f32);
#if FLEXATTN_CASE == 1
  fa::flex_attention_backward(t, t, t, t, t, t, FloatOnlyScore{});
#elif FLEXATTN_CASE == 2
  fa::flex_attention(t, t, t, ThreeArgScore{});
#elif FLEXATTN_CASE == 3
  fa::create_block_mask(VoidMask{}, 1, 1, 4, 4);
#endif
  return 0;
}
