// The backward passes of softmax, log_softmax and logsumexp over contiguous rows
// (kernel_api.h, SoftmaxBackwardKernels) for one ISA: compiled once per ISA
// (CMakeLists.txt), in namespace TP_NS. Each row is read for its reduction and read
// again for the write while it is still in cache (a row of the benchmark's shapes is at
// most 1 MiB), so from memory the traffic is the minimum: read g and y (or x), write gx.
//   softmax:     gx = y * (g - sum(g * y))
//   log_softmax: gx = g - exp(y) * sum(g)
//   logsumexp:   gx = g_r * exp(x - lse_r)      (no reduction: one pass)
#include <algorithm>
#include <cmath>

#include "../kernel_api.h"
#include "exp.h"
#include "kernel_parts.h"
#include "loops.h"
#include "simd/vec.h"

namespace TP_NS {
namespace {

// sum_j a_j * b_j (b null: sum_j a_j): kUnroll registers in T, folded into double every
// block of 16 steps, so a long row keeps about one ulp of the sum.
template <class T> double row_dot(const T* a, const T* b, int64_t n) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int W = V::W;
  constexpr int64_t kBlock = 16 * kUnroll * W;
  double total = 0;
  for (int64_t s = 0; s < n; s += kBlock) {
    const int64_t end = std::min(n, s + kBlock);
    R acc[kUnroll];
    for (auto& r : acc) r = V::set1(0);
    int64_t i = s;
    for (; i + kUnroll * W <= end; i += kUnroll * W)
      for (int u = 0; u < kUnroll; ++u)
        acc[u] = b ? V::fma(V::load(a + i + u * W), V::load(b + i + u * W), acc[u]) : V::add(acc[u], V::load(a + i + u * W));
    for (; i < end; i += W) {
      const int k = (int)std::min<int64_t>(W, end - i);
      const R av = V::load_partial(a + i, k, 0);
      acc[0] = b ? V::fma(av, V::load_partial(b + i, k, 0), acc[0]) : V::add(acc[0], av);
    }
    for (int u = 1; u < kUnroll; ++u) acc[0] = V::add(acc[0], acc[u]);
    total += V::hsum_wide(acc[0]);
  }
  return total;
}

template <class T>
void softmax_backward_rows(const T* g, const T* y, T* gx, int64_t rows, int64_t n, int64_t gs, int64_t ys, int64_t xs,
                           bool log, bool stream) {
  using V = Vec<T>;
  using R = typename V::R;
  for (int64_t r = 0; r < rows; ++r) {
    const T* gr = g + r * gs;
    const T* yr = y + r * ys;
    T* out = gx + r * xs;
    if (log) {
      const R s = V::set1((T)row_dot<T>(gr, nullptr, n));
      // exp(y) with y <= 0: the kernels' exp (exp.h), -inf giving 0, NaN staying NaN.
      write_row(out, n, stream, (const T*)nullptr, [&](int64_t i, int k, int) {
        const R e = Exp<T>::nonpositive(load_k<T>(yr + i, k, 0));
        return V::sub(load_k<T>(gr + i, k, 0), V::mul(e, s));
      });
    } else {
      const R s = V::set1((T)row_dot<T>(gr, yr, n));
      write_row(out, n, stream, (const T*)nullptr, [&](int64_t i, int k, int) {
        return V::mul(load_k<T>(yr + i, k, 0), V::sub(load_k<T>(gr + i, k, 0), s));
      });
    }
  }
}

template <class T>
void logsumexp_backward_rows(const T* g, const T* x, const T* lse, T* gx, int64_t rows, int64_t n, int64_t xs,
                             int64_t gxs, bool stream) {
  using V = Vec<T>;
  using R = typename V::R;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * xs;
    const R gv = V::set1(g[r]), lv = V::set1(lse[r]);
    // x - lse <= 0 (lse is never below the row's maximum); a NaN or +inf lse gives NaN,
    // as torch's exp(x - lse) does.
    write_row(gx + r * gxs, n, stream, xr, [&](int64_t i, int k, int) {
      return V::mul(gv, Exp<T>::nonpositive(V::sub(load_k<T>(xr + i, k, 0), lv)));
    });
  }
}

}  // namespace

template <class T> tp::SoftmaxBackwardKernels<T> softmax_backward_kernels() {
  return {softmax_backward_rows<T>, logsumexp_backward_rows<T>};
}
template tp::SoftmaxBackwardKernels<float> softmax_backward_kernels<float>();
template tp::SoftmaxBackwardKernels<double> softmax_backward_kernels<double>();

}  // namespace TP_NS
