// The backward of softmax, log_softmax and logsumexp over rows of a last axis: the
// per-ISA row kernels (kernels/softmax_backward.cpp) spread over threads by rows.
#pragma once

#include <cstdint>

#include "codes.h"

namespace tp {

struct BackwardProblem {
  Op op;
  int dtype_bytes;  // 2: float16 or bfloat16 (bf16), 4: float32, 8: float64
  const void* g;    // the upstream gradient: like y (softmax), one per row (logsumexp)
  const void* y;    // softmax/log_softmax: the forward's output; logsumexp: its input x
  const void* lse;  // logsumexp only: the forward's result, one per row, dense
  void* gx;
  int64_t rows, n;
  int64_t gs, ys, xs;  // row strides (elements) of g, y (or x), gx; along a row the stride is 1
  bool bf16 = false;    // dtype_bytes 2: bfloat16, else float16
};

void run_backward(const BackwardProblem& pb, Isa isa, int threads, bool stream);

}  // namespace tp
