// The memory-bandwidth probes of the benchmark (twopass.bench), built from the same
// row kernels as the softmax.
#pragma once

#include <cstdint>

#include "codes.h"

namespace tp {

// A read pass (returns the maximum of x) and a copy pass (y = x * 1), split over
// `threads` threads.
float read_pass(const float* x, int64_t n, Isa isa, int threads);
void copy_pass(const float* x, float* y, int64_t n, Isa isa, int threads, bool stream);

}  // namespace tp
