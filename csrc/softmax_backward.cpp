// The backward driver: rows split evenly over threads, each thread calling the row
// kernel once on its block (threads.h: no split below kMinPerThread elements each);
// over a non-last axis, the panels (a row block's columns, `lanes` at a time) likewise.
#include "softmax_backward.h"

#include <algorithm>

#include "dispatch.h"
#include "kernel_api.h"
#include "threads.h"

namespace tp {
namespace {

template <class T>
void run_typed(const SoftmaxBackwardKernels<T>& k, const BackwardProblem& pb, int lanes, int threads, bool stream) {
  // T: the storage type
  const T* g = static_cast<const T*>(pb.g);
  const T* y = static_cast<const T*>(pb.y);
  const T* lse = static_cast<const T*>(pb.lse);
  T* gx = static_cast<T*>(pb.gx);
  if (pb.rows == 0 || pb.n == 0 || pb.inner == 0) return;
  if (pb.inner > 1) {
    const int64_t per_row = (pb.inner + lanes - 1) / lanes, panels = pb.rows * per_row;
    const int64_t size = pb.rows * pb.n * pb.inner;
    threads = (int)std::max<int64_t>(1, std::min<int64_t>({threads, panels, size / kMinPerThread}));
    parallel_ranges(panels, threads, size, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        const int64_t r = p / per_row, c = (p % per_row) * lanes;
        k.softmax_panel(g + r * pb.gs + c, y + r * pb.ys + c, gx + r * pb.xs + c, pb.n,
                        (int)std::min<int64_t>(lanes, pb.inner - c), pb.inner, pb.op == Op::kLogSoftmax);
      }
    });
    return;
  }
  threads = (int)std::max<int64_t>(1, std::min<int64_t>({threads, pb.rows, pb.rows * pb.n / kMinPerThread}));
  parallel_ranges(pb.rows, threads, pb.rows * pb.n, [&](int64_t lo, int64_t hi) {
    if (pb.op == Op::kLogSumExp)
      k.logsumexp(g + lo, y + lo * pb.ys, lse + lo, gx + lo * pb.xs, hi - lo, pb.n, pb.ys, pb.xs, stream);
    else
      k.softmax(g + lo * pb.gs, y + lo * pb.ys, gx + lo * pb.xs, hi - lo, pb.n, pb.gs, pb.ys, pb.xs,
                pb.op == Op::kLogSoftmax, stream);
  });
}

}  // namespace

void run_backward(const BackwardProblem& pb, Isa isa, int threads, bool stream) {
  const KernelTable& t = kernels(isa);
  const int lanes = pb.dtype_bytes == 8 ? t.lanes_f64 : t.lanes_f32;  // (halves compute in float32)
  switch (pb.dtype_bytes) {
    case 2:
      return pb.bf16 ? run_typed<bf16>(t.bwd_bf16, pb, lanes, threads, stream)
                     : run_typed<f16>(t.bwd_f16, pb, lanes, threads, stream);
    case 4: return run_typed<float>(t.bwd_f32, pb, lanes, threads, stream);
    default: return run_typed<double>(t.bwd_f64, pb, lanes, threads, stream);
  }
}

}  // namespace tp
