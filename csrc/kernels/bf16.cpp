// bfloat16 <-> float32 conversion of whole rows (the cross-entropy's bfloat16 logits
// and gradient), for one ISA: compiled once per ISA (CMakeLists.txt), in namespace
// TP_NS, so the compiler vectorises the plain loops for that ISA.
#include <cstdint>
#include <cstring>

#include "kernel_parts.h"

namespace TP_NS {

// bfloat16 is the upper half of a float32: widening is a shift, narrowing rounds to
// nearest even (NaN kept quiet). Plain loops, vectorised by the compiler for this ISA.
void bf16_to_f32(const uint16_t* a, float* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t u = (uint32_t)a[j] << 16;
    std::memcpy(y + j, &u, 4);
  }
}
void f32_to_bf16(const float* a, uint16_t* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    uint32_t u;
    std::memcpy(&u, a + j, 4);
    const uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    y[j] = (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? ((u >> 16) | 0x40u) : r);
  }
}

}  // namespace TP_NS
