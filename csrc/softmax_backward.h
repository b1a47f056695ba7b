// The backward of softmax, log_softmax and logsumexp over rows of a last axis, and of
// softmax and log_softmax over a non-last axis (inner > 1: panels of columns): the
// per-ISA kernels (kernels/softmax_backward.cpp) spread over threads by rows or panels.
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
  // inner > 1 (softmax, log_softmax): each of the `rows` blocks (gs, ys, xs apart) is
  // C-contiguous (n, inner), reduced over its n (the axis) for each of its inner columns.
  int64_t inner = 1;
};

void run_backward(const BackwardProblem& pb, Isa isa, int threads, bool stream);

}  // namespace tp
