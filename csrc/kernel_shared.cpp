// What the per-ISA kernel builds (csrc/kernels/, once per ISA) call but must not each
// compile: one definition, one rounding, whatever the ISA (kernel_api.h).
#include <cmath>

#include "kernel_api.h"

namespace tp {

double exp_of_difference(double a, double b) {
  const double d = a - b;
  if (!std::isfinite(d)) return std::exp(d);
  const double ap = d + b, bp = d - ap;
  return std::exp(d) * (1.0 + ((a - ap) + (-b - bp)));
}

}  // namespace tp
