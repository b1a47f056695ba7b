// The fused cross-entropy over contiguous rows of logits (docs/cross_entropy.md), and
// the local gradient of a vocabulary-parallel row. ISA-independent entry points.
#pragma once

#include <cstdint>

#include "codes.h"

namespace tp {

// The fused cross-entropy of docs/cross_entropy.md over contiguous rows of logits: per
// row, the loss terms and lse from one read, and (grad != null) the gradient for an
// upstream gradient of 1, written while the row is still in cache.
struct CrossEntropyProblem {
  int dtype_bytes;
  const void* x;  // (rows, n): row stride xs elements, class stride 1
  int64_t rows, n, xs;
  const int64_t* target;  // (rows,); targets are checked by the caller
  const void* weight;     // (n,) or null
  double weight_total;    // sum of weight (n without one)
  int64_t ignore_index;
  double smoothing, z_coef, softcap;  // softcap 0: none
  double s_ce, s_z;                   // the gradient scales of the ce and z terms
  void* grad;                         // (rows, n) with row stride gs, or null; may be x
  int64_t gs;
  double *ce, *z, *lse;  // (rows,) each
  Algo algo;             // of the softmax inside (two_pass or a max-based one)
  bool stream;           // streaming stores asked for grad (streaming_stores.h)
  bool bf16 = false;     // x and grad hold bfloat16 (dtype_bytes 4: computed in float32)
  bool f16 = false;      // x and grad hold float16 (likewise; bf16 and f16 exclusive)
};
void cross_entropy(const CrossEntropyProblem& pb, Isa isa, int threads);

// The gradient of a row whose lse is known (a shard of a vocabulary-parallel row):
// grad_j = a exp(x_j - lse) - c w_j, minus b at the target; target -1: not in this
// row, -2: an ignored row (all 0).
struct CrossEntropyGradProblem {
  int dtype_bytes;
  const void* x;  // (rows, n): row stride xs, class stride 1
  int64_t rows, n, xs;
  const double *lse, *a, *c, *b;  // (rows,) each
  const int64_t* target;          // (rows,)
  const void* weight;             // (n,) or null
  void* grad;                     // (rows, n), row stride gs
  int64_t gs;
  bool stream;
};
void cross_entropy_grad(const CrossEntropyGradProblem& pb, Isa isa, int threads);

}  // namespace tp
