// The row helpers of the fused cross-entropy (kernel_api.h, CrossEntropyRowKernels)
// for one ISA: compiled once per ISA (CMakeLists.txt), in namespace TP_NS. Rows only:
// logits are contiguous rows, and each row is in cache when these run
// (cross_entropy.cpp), so they are plain loops. Logits and gradient are of the storage
// type S (loops.h), converted in registers; the scratch rows (softmax, soft-capped
// logits) and the weights are of the compute type T.
#include <algorithm>
#include <cmath>
#include <limits>

#include "../kernel_api.h"
#include "exp.h"
#include "kernel_parts.h"
#include "loops.h"
#include "simd/vec.h"

namespace TP_NS {
namespace {

// x' = cap * tanh(x / cap). With y = x / cap, a = |y| and u = exp(-2a) (the kernels'
// exp, argument <= 0): tanh(y) = y * (1 - u) / ((1 + u) * a). The error is a few ulp of
// 1 in absolute terms (small |y| loses relative accuracy, which no loss notices); y is
// clamped to +-1e30 so +-inf give +-cap, and the x86-style max/min (NaN in the second
// operand wins) keep NaN.
template <class T> struct SoftcapVisitor {
  using V = Vec<T>;
  using R = typename V::R;
  static constexpr T kFill = 0;
  static constexpr bool kPrefetch = false;
  R cap, inv;
  inline R apply(int, R x) {
    const R y = V::min(V::set1(T(1e30)), V::max(V::set1(T(-1e30)), V::mul(x, inv)));
    const R a = V::max(V::set1(std::numeric_limits<T>::min()), V::max(y, V::sub(V::set1(0), y)));
    const R u = Exp<T>::nonpositive(V::mul(V::set1(T(-2)), a));
    const R t = V::div(V::mul(y, V::sub(V::set1(1), u)), V::mul(V::add(V::set1(1), u), a));
    return V::mul(cap, t);
  }
};

template <class S, class T = tp::Compute<S>> void ce_softcap(const S* x, T* y, int64_t n, T cap) {
  SoftcapVisitor<T> v;
  v.cap = Vec<T>::set1(cap);
  v.inv = Vec<T>::set1(T(1) / cap);
  map_row(x, y, n, v, false);
}

// The row widened to T (rows the generic softmax driver redoes in T: cross_entropy.cpp).
template <class T> struct WidenVisitor {
  static constexpr T kFill = 0;
  static constexpr bool kPrefetch = false;
  inline typename Vec<T>::R apply(int, typename Vec<T>::R x) { return x; }
};
template <class S, class T = tp::Compute<S>> void ce_widen(const S* x, T* y, int64_t n) {
  WidenVisitor<T> v;
  map_row(x, y, n, v, false);
}

// sum_j x_j * w_j (w null: sum_j x_j): T registers folded into double every block, so
// long rows keep ~1 ulp. 0 * -inf = NaN, as torch's (x * w).sum() gives.
template <class S, class T = tp::Compute<S>> double ce_dot(const S* x, const T* w, int64_t n) {
  using IO = Io<S>;
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int W = V::W;
  constexpr int64_t kBlock = 16 * kUnroll * W;
  double total = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t end = std::min(n, b + kBlock);
    R acc[kUnroll];
    for (auto& r : acc) r = V::set1(0);
    int64_t i = b;
    for (; i + kUnroll * W <= end; i += kUnroll * W)
      for (int u = 0; u < kUnroll; ++u)
        acc[u] = w ? V::fma(IO::load(x + i + u * W), V::load(w + i + u * W), acc[u]) : V::add(acc[u], IO::load(x + i + u * W));
    for (; i < end; i += W) {
      const int k = (int)std::min<int64_t>(W, end - i);
      const R xv = load_k<S>(x + i, k, 0);
      acc[0] = w ? V::fma(xv, V::load_partial(w + i, k, 0), acc[0]) : V::add(acc[0], xv);
    }
    for (int u = 1; u < kUnroll; ++u) acc[0] = V::add(acc[0], acc[u]);
    total += V::hsum_wide(acc[0]);
  }
  return total;
}

// The gradient from the softmax p: y_j = (a * p_j - c * w_j) * d_j, with w_j = 1 when w
// is null and d_j = 1 - (xc_j / cap)^2 (the soft-cap's derivative, from the capped
// logits xc) when xc is not null. p is a cached scratch row; y is the output, rounded
// once to S and written with streaming stores when `stream` (the caller applies
// tp::use_streaming_stores).
template <class S, bool Weighted, bool Capped, class T>
void ce_gradient_impl(const T* p, S* y, const T* xc, const T* w, int64_t n, T a, T c, T inv_cap, bool stream,
                      const S* next_row) {
  using V = Vec<T>;
  using R = typename V::R;
  const R av = V::set1(a), cv = V::set1(c), iv = V::set1(inv_cap), one = V::set1(1);
  RowPrefetch<S> next(next_row, n);
  write_row(y, n, stream, Reads{{p, w, xc}}, (const T*)nullptr, [&](int64_t i, int k, int u) {
    if (u == 0) next.step();
    R g = V::mul(av, load_k<T>(p + i, k, 0));
    g = Weighted ? V::sub(g, V::mul(cv, load_k<T>(w + i, k, 0))) : V::sub(g, cv);
    if (Capped) {
      const R s = V::mul(load_k<T>(xc + i, k, 0), iv);
      g = V::mul(g, V::sub(one, V::mul(s, s)));
    }
    return g;
  });
}
template <class S, class T = tp::Compute<S>>
void ce_gradient(const T* p, S* y, const T* xc, const T* w, int64_t n, T a, T c, T inv_cap, bool stream,
                 const S* next) {
  if (w)
    xc ? ce_gradient_impl<S, true, true>(p, y, xc, w, n, a, c, inv_cap, stream, next)
       : ce_gradient_impl<S, true, false>(p, y, xc, w, n, a, c, inv_cap, stream, next);
  else
    xc ? ce_gradient_impl<S, false, true>(p, y, xc, w, n, a, c, inv_cap, stream, next)
       : ce_gradient_impl<S, false, false>(p, y, xc, w, n, a, c, inv_cap, stream, next);
}

}  // namespace

template <class S> tp::CrossEntropyRowKernels<S> cross_entropy_row_kernels() {
  return {ce_softcap<S>, ce_widen<S>, ce_dot<S>, ce_gradient<S>};
}
template tp::CrossEntropyRowKernels<float> cross_entropy_row_kernels<float>();
template tp::CrossEntropyRowKernels<double> cross_entropy_row_kernels<double>();
template tp::CrossEntropyRowKernels<tp::f16> cross_entropy_row_kernels<tp::f16>();
template tp::CrossEntropyRowKernels<tp::bf16> cross_entropy_row_kernels<tp::bf16>();

}  // namespace TP_NS
