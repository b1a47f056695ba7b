// What each per-ISA kernel source provides to kernels/table.cpp, which assembles them
// into the ISA's tp::KernelTable. Namespace TP_NS (kernels/simd/vec.h).
#pragma once

#include <cstdint>

#include "../kernel_api.h"
#include "simd/vec.h"

namespace TP_NS {

// softmax_passes.cpp (instantiated for float, double, tp::f16 and tp::bf16 storage).
template <class S> tp::SoftmaxKernels<S> softmax_kernels();
// cross_entropy_rows.cpp (instantiated for float and double).
template <class T> tp::CrossEntropyRowKernels<T> cross_entropy_row_kernels();
// bf16.cpp (bfloat16 and float16 rows).
void bf16_to_f32(const uint16_t* a, float* y, int64_t n);
void f32_to_bf16(const float* a, uint16_t* y, int64_t n);
void f16_to_f32(const uint16_t* a, float* y, int64_t n);
void f32_to_f16(const float* a, uint16_t* y, int64_t n);

}  // namespace TP_NS
