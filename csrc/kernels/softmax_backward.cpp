// The backward passes of softmax, log_softmax and logsumexp over contiguous rows, and
// of softmax and log_softmax over panels of a non-last axis (kernel_api.h,
// SoftmaxBackwardKernels) for one ISA: compiled once per ISA
// (CMakeLists.txt), in namespace TP_NS. Each row is read for its reduction and read
// again for the write while it is still in cache (a row of the benchmark's shapes is at
// most 1 MiB), so from memory the traffic is the minimum: read g and y (or x), write gx.
//   softmax:     gx = y * (g - sum(g * y))
//   log_softmax: gx = g - exp(y) * sum(g)
//   logsumexp:   gx = g_r * exp(x - lse_r)      (no reduction: one pass)
// Storage types as in the forward (loops.h): float16 and bfloat16 rows are widened in
// registers, computed in float32 and rounded once (to nearest even) on the write.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../kernel_api.h"
#include "exp.h"
#include "kernel_parts.h"
#include "loops.h"
#include "simd/vec.h"

namespace TP_NS {
namespace {

// sum_j a_j * b_j (b null: sum_j a_j): kUnroll registers in the compute type, folded
// into double every block of 16 steps, so a long row keeps about one ulp of the sum.
// With kKeep, a and b widened to the compute type are also stored in wa and wb.
template <class S, bool kKeep = false>
double row_dot(const S* a, const S* b, int64_t n, tp::Compute<S>* wa = nullptr, tp::Compute<S>* wb = nullptr) {
  using T = tp::Compute<S>;
  using IO = Io<S>;
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
      for (int u = 0; u < kUnroll; ++u) {
        const R av = IO::load(a + i + u * W);
        if (!b) {
          acc[u] = V::add(acc[u], av);
          continue;
        }
        const R bv = IO::load(b + i + u * W);
        if constexpr (kKeep) V::store(wa + i + u * W, av), V::store(wb + i + u * W, bv);
        acc[u] = V::fma(av, bv, acc[u]);
      }
    for (; i < end; i += W) {
      const int k = (int)std::min<int64_t>(W, end - i);
      const R av = load_k<S>(a + i, k, 0);
      if (!b) {
        acc[0] = V::add(acc[0], av);
        continue;
      }
      const R bv = load_k<S>(b + i, k, 0);
      if constexpr (kKeep) V::store_partial(wa + i, av, k), V::store_partial(wb + i, bv, k);
      acc[0] = V::fma(av, bv, acc[0]);
    }
    for (int u = 1; u < kUnroll; ++u) acc[0] = V::add(acc[0], acc[u]);
    total += V::hsum_wide(acc[0]);
  }
  return total;
}

// float16's softmax backward widens g and y once, into float32 rows of the thread's
// (wide_row), which the write pass reads: F16C's vcvtph2ps is the backward's bottleneck
// on a core that splits 256-bit ops (Zen 1 VM, one thread, hot, into a reused output:
// 256x1024 and 8x32000 0.72 -> 0.52-0.54 ns per element, torch 0.64; 32x128256, whose
// float32 rows leave the L2, 0.80 -> 0.71). bfloat16 widens by a shift: not needed.
// AVX-512 and NEON convert at full width in one instruction: there (unmeasured) the
// rows are converted twice, as before.
#if defined(TP_ISA_AVX2) || defined(TP_ISA_SCALAR)
template <class S> constexpr bool kWidenOnce = std::is_same_v<S, tp::f16>;
#else
template <class S> constexpr bool kWidenOnce = false;
#endif

template <class S>
void softmax_backward_rows(const S* g, const S* y, S* gx, int64_t rows, int64_t n, int64_t gs, int64_t ys, int64_t xs,
                           bool log, bool stream) {
  using T = tp::Compute<S>;
  using V = Vec<T>;
  using R = typename V::R;
  for (int64_t r = 0; r < rows; ++r) {
    const S* gr = g + r * gs;
    const S* yr = y + r * ys;
    S* out = gx + r * xs;
    if (log) {
      const R s = V::set1((T)row_dot<S>(gr, nullptr, n));
      // exp(y) with y <= 0: the kernels' exp (exp.h), -inf giving 0, NaN staying NaN.
      write_row(out, n, stream, Reads{{yr, gr}}, (const S*)nullptr, [&](int64_t i, int k, int) {
        const R e = Exp<T>::nonpositive(load_k<S>(yr + i, k, 0));
        return V::sub(load_k<S>(gr + i, k, 0), V::mul(e, s));
      });
    } else {
      if constexpr (kWidenOnce<S>) {
        if (n <= tp::kWideRowElements) {
          T* wg = wide_row(2 * n);
          T* wy = wg + n;
          const R s = V::set1((T)row_dot<S, true>(gr, yr, n, wg, wy));
          write_row(out, n, stream, Reads{{wy, wg}}, (const T*)nullptr, [&](int64_t i, int k, int) {
            return V::mul(load_k<T>(wy + i, k, 0), V::sub(load_k<T>(wg + i, k, 0), s));
          });
          continue;
        }
      }
      const R s = V::set1((T)row_dot<S>(gr, yr, n));
      write_row(out, n, stream, Reads{{yr, gr}}, (const S*)nullptr, [&](int64_t i, int k, int) {
        return V::mul(load_k<S>(yr + i, k, 0), V::sub(load_k<S>(gr + i, k, 0), s));
      });
    }
  }
}

// One panel (SoftmaxBackwardKernels::softmax_panel): `lanes` contiguous columns of n
// steps, each `step` elements after the last in g, y and gx alike. Pass 1 sums g * y
// (log: g) per lane in registers, folded into double every kPanelFoldSteps steps; pass 2
// writes gx while the panel (n steps of a few lines) is still in the L2. Both prefetch
// ahead as the forward's panels do (loops.h, kPanelAhead).
constexpr int64_t kPanelFoldSteps = 16;

template <class S, bool Log>
void softmax_backward_panel_impl(const S* g, const S* y, S* gx, int64_t n, int lanes, int64_t step) {
  using T = tp::Compute<S>;
  using IO = Io<S>;
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int W = V::W;
  const int nvec = (lanes + W - 1) / W;
  const bool full = lanes == kUnroll * W;
  auto load = [&](const S* p, int u) {
    return full ? IO::load(p + u * W) : IO::load_partial(p + u * W, std::min(W, lanes - u * W), T(0));
  };
  double sum[kUnroll * W] = {};
  for (int64_t b = 0; b < n; b += kPanelFoldSteps) {
    const int64_t end = std::min(n, b + kPanelFoldSteps);
    R acc[kUnroll];
    for (auto& r : acc) r = V::set1(0);
    for (int64_t j = b; j < end; ++j) {
      const S* gj = g + j * step;
      const S* yj = y + j * step;
      if (j + kPanelAhead < n) {
        prefetch_panel_step<false>(gj + kPanelAhead * step, lanes);
        if (!Log) prefetch_panel_step<false>(yj + kPanelAhead * step, lanes);
      }
      for (int u = 0; u < nvec; ++u) acc[u] = Log ? V::add(acc[u], load(gj, u)) : V::fma(load(gj, u), load(yj, u), acc[u]);
    }
    T part[kUnroll * W];
    store_lanes(part, acc, lanes);
    for (int l = 0; l < lanes; ++l) sum[l] += part[l];
  }
  T st[kUnroll * W] = {};
  for (int l = 0; l < lanes; ++l) st[l] = (T)sum[l];
  R s[kUnroll];
  for (int u = 0; u < nvec; ++u) s[u] = V::load(st + u * W);
  for (int64_t j = 0; j < n; ++j) {
    const S* gj = g + j * step;
    const S* yj = y + j * step;
    S* oj = gx + j * step;
    if (j + kPanelAhead < n) {
      prefetch_panel_step<false>(gj + kPanelAhead * step, lanes);
      prefetch_panel_step<false>(yj + kPanelAhead * step, lanes);
      prefetch_panel_step<true>(oj + kPanelAhead * step, lanes);
    }
    for (int u = 0; u < nvec; ++u) {
      const R gv = load(gj, u), yv = load(yj, u);
      // (exp(y) with y <= 0: the kernels' exp, -inf giving 0, NaN staying NaN)
      const R r = Log ? V::sub(gv, V::mul(Exp<T>::nonpositive(yv), s[u])) : V::mul(yv, V::sub(gv, s[u]));
      if (full)
        IO::store(oj + u * W, r);
      else
        IO::store_partial(oj + u * W, r, std::min(W, lanes - u * W));
    }
  }
}

template <class S> void softmax_backward_panel(const S* g, const S* y, S* gx, int64_t n, int lanes, int64_t step, bool log) {
  (log ? softmax_backward_panel_impl<S, true> : softmax_backward_panel_impl<S, false>)(g, y, gx, n, lanes, step);
}

template <class S>
void logsumexp_backward_rows(const S* g, const S* x, const S* lse, S* gx, int64_t rows, int64_t n, int64_t xs,
                             int64_t gxs, bool stream) {
  using T = tp::Compute<S>;
  using V = Vec<T>;
  using R = typename V::R;
  for (int64_t r = 0; r < rows; ++r) {
    const S* xr = x + r * xs;
    const R gv = V::set1(tp::Storage<S>::widen(g[r])), lv = V::set1(tp::Storage<S>::widen(lse[r]));
    // x - lse <= 0 (lse is never below the row's maximum); a NaN or +inf lse gives NaN,
    // as torch's exp(x - lse) does.
    write_row(gx + r * gxs, n, stream, Reads{{xr}}, xr, [&](int64_t i, int k, int) {
      return V::mul(gv, Exp<T>::nonpositive(V::sub(load_k<S>(xr + i, k, 0), lv)));
    });
  }
}

}  // namespace

template <class S> tp::SoftmaxBackwardKernels<S> softmax_backward_kernels() {
  return {softmax_backward_rows<S>, logsumexp_backward_rows<S>, softmax_backward_panel<S>};
}
template tp::SoftmaxBackwardKernels<float> softmax_backward_kernels<float>();
template tp::SoftmaxBackwardKernels<double> softmax_backward_kernels<double>();
template tp::SoftmaxBackwardKernels<tp::f16> softmax_backward_kernels<tp::f16>();
template tp::SoftmaxBackwardKernels<tp::bf16> softmax_backward_kernels<tp::bf16>();

}  // namespace TP_NS
