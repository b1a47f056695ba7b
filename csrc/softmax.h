// The softmax family's entry point: one softmax, log_softmax or logsumexp problem,
// already checked and laid out by the Python layer as (outer, n, inner) with unit
// stride across inner, run by one of the four algorithms (codes.h).
#pragma once

#include <cstdint>

#include "codes.h"

namespace tp {

struct Problem {
  Op op;
  Algo algo;
  int dtype_bytes;  // 4: float32, 8: float64, 2: float16 or (bf16) bfloat16, computed in float32
  const void* x;
  void* y;  // softmax/log_softmax: like x; logsumexp: (outer, inner)
  int64_t outer, n, inner;
  int64_t xs_outer, xs_n;  // strides in elements; the stride across inner is 1
  int64_t ys_outer, ys_n;
  int panel_lanes;  // columns per panel group (from dispatch.h, panel_lanes())
  void* lse = nullptr;  // softmax only, optional: logsumexp per (outer, inner), dense, x's dtype
  bool bf16 = false;    // dtype_bytes 2: bfloat16 rather than float16
};

// Runs the problem with `threads` threads (>= 1); `stream` asks for non-temporal stores
// (streaming_stores.h says where they are used).
void run(const Problem& pb, Isa isa, int threads, bool stream);

// The longest axis whose softmax panels go through a scratch panel (softmax.cpp,
// Algorithms::scratch_panel), for a dtype of `dtype_bytes`; Python's auto reads it.
int64_t panel_scratch_steps(int dtype_bytes);

}  // namespace tp
