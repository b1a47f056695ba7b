// bfloat16 / float16 <-> float32 conversion of whole rows (the cross-entropy's half
// logits, widened into a cached float32 row, and its gradient narrowed back), for one
// ISA: compiled once per ISA (CMakeLists.txt), in namespace TP_NS, through the same
// in-register conversions as the softmax kernels (simd/io.h): widening exact, narrowing
// to nearest even, NaN kept quiet.
#include <cstdint>

#include "kernel_parts.h"
#include "simd/io.h"

namespace TP_NS {
namespace {

template <class S> void widen_row(const uint16_t* a, float* y, int64_t n) {
  using V = Vec<float>;
  constexpr int W = V::W;
  const S* x = reinterpret_cast<const S*>(a);
  int64_t i = 0;
  for (; i + W <= n; i += W) V::store(y + i, Io<S>::load(x + i));
  if (i < n) V::store_partial(y + i, Io<S>::load_partial(x + i, (int)(n - i), 0), (int)(n - i));
}
template <class S> void narrow_row(const float* a, uint16_t* y, int64_t n) {
  using V = Vec<float>;
  constexpr int W = V::W;
  S* o = reinterpret_cast<S*>(y);
  int64_t i = 0;
  for (; i + W <= n; i += W) Io<S>::store(o + i, V::load(a + i));
  if (i < n) Io<S>::store_partial(o + i, V::load_partial(a + i, (int)(n - i), 0), (int)(n - i));
}

}  // namespace

void bf16_to_f32(const uint16_t* a, float* y, int64_t n) { widen_row<tp::bf16>(a, y, n); }
void f32_to_bf16(const float* a, uint16_t* y, int64_t n) { narrow_row<tp::bf16>(a, y, n); }
void f16_to_f32(const uint16_t* a, float* y, int64_t n) { widen_row<tp::f16>(a, y, n); }
void f32_to_f16(const float* a, uint16_t* y, int64_t n) { narrow_row<tp::f16>(a, y, n); }

}  // namespace TP_NS
