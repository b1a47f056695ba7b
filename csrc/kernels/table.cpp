// The kernel table of one ISA (kernel_api.h, tp::KernelTable): what dispatch.cpp hands
// out for that ISA. Compiled once per ISA (CMakeLists.txt), in namespace TP_NS.
#include "../kernel_api.h"
#include "kernel_parts.h"
#include "loops.h"
#include "simd/vec.h"

#define TP_STR2(x) #x
#define TP_STR(x) TP_STR2(x)

namespace TP_NS {

const tp::KernelTable& table() {
  static const tp::KernelTable t = {
      TP_STR(TP_NS) + 3,  // "tp_avx2" -> "avx2"
      kUnroll * Vec<float>::W,
      kUnroll * Vec<double>::W,
      softmax_kernels<float>(),
      softmax_kernels<double>(),
      softmax_kernels<tp::f16>(),
      softmax_kernels<tp::bf16>(),
      cross_entropy_row_kernels<float>(),
      cross_entropy_row_kernels<double>(),
      cross_entropy_row_kernels<tp::f16>(),
      cross_entropy_row_kernels<tp::bf16>(),
      softmax_backward_kernels<float>(),
      softmax_backward_kernels<double>(),
      softmax_backward_kernels<tp::f16>(),
      softmax_backward_kernels<tp::bf16>(),
  };
  return t;
}

}  // namespace TP_NS
