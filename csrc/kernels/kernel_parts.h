// What each per-ISA kernel source provides to kernels/table.cpp, which assembles them
// into the ISA's tp::KernelTable. Namespace TP_NS (kernels/simd/vec.h).
#pragma once

#include <cstdint>

#include "../kernel_api.h"
#include "simd/vec.h"

namespace TP_NS {

// softmax_passes.cpp (instantiated for float, double, tp::f16 and tp::bf16 storage).
template <class S> tp::SoftmaxKernels<S> softmax_kernels();
// cross_entropy_rows.cpp and softmax_backward.cpp (likewise).
template <class S> tp::CrossEntropyRowKernels<S> cross_entropy_row_kernels();
template <class S> tp::SoftmaxBackwardKernels<S> softmax_backward_kernels();

}  // namespace TP_NS
