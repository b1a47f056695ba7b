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

// The row-level entry of the eager paths (twopass.torch, the C table of c_api.h that
// twopass.jax's FFI handlers call): (rows, n) logits with contiguous rows, int64
// targets, everything as addresses. Also does what the NumPy layer does in Python
// around its kernel call (target check, the reduction's scales, the reduction itself:
// 40 us there, the time of a 1x1024 loss many times over). reduction: 0 mean, 1 sum,
// 2 none. loss and z get the reduced values (one element each) or, for "none", the
// per-row ones; lse the per-row logsumexp. float32/float64 logits (half 0, bytes 4 or
// 8): everything in their dtype. float16 (half 1) / bfloat16 (half 2) logits and grad
// (bytes 2): computed in float32, the weight and lse float32, loss and z float32
// (twopass.jax) or, with half_loss, in the logits' dtype rounded once (twopass.torch,
// as its custom op). zl and lse may be 0: not wanted. Throws std::invalid_argument for
// bad arguments and for a target outside [0, n) that is not ignore_index.
void cross_entropy_rows(int isa, int algo, int bytes, int half, uintptr_t x, int64_t rows, int64_t n, int64_t xs,
                        uintptr_t target, uintptr_t weight, int64_t ignore_index, double eps, double zc, double cap,
                        int reduction, uintptr_t grad, int64_t gs, uintptr_t loss, uintptr_t zl, uintptr_t lse,
                        int threads, bool stream, bool half_loss);

}  // namespace tp
