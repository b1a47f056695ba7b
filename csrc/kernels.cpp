// The kernels: written once, compiled once per ISA (CMakeLists.txt builds this file as
// tp_scalar, tp_avx2 and tp_avx512 with the matching -m flags; see simd.h).
//
// Each primitive of twopass.h is a "visitor" (what to do with one vector of elements)
// run by one of two loops: along a contiguous row, or across the lanes of a panel.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "simd.h"
#include "twopass.h"

namespace TP_NS {
namespace {

using tp::Group;
using tp::Pair;

// exp on the reduced interval and the constants of the range reduction (Cody-Waite).
// With a fused multiply-add (AVX2, AVX-512): ln2 = F1 + F2, F1 = ln2 rounded to T;
// fma(e, -F1, x) rounds once, so t = x - e*ln2 is exact to ~ulp(t).
// Without one (the scalar baseline): ln2 = L1 + L2 + L3, where L1 and L2 have so few
// significant bits that e*L1 and e*L2 are exact for every e of the accurate domain.
// The polynomial is 1 + t*q(t), fitted by tools/fit_exp_poly.py for |t| <= ln2/2.
template <class T> struct ExpConst;
template <> struct ExpConst<float> {
  static constexpr float kLog2e = 0x1.715476p+0f;
  static constexpr float kF1 = 0x1.62e43p-1f, kF2 = -0x1.05c61p-29f;
  static constexpr float kL1 = 0x1.63p-1f, kL2 = -0x1.bdp-13f, kL3 = -0x1.05c61p-29f;
  static constexpr int kDegree = 5;  // max relative error 9.4e-8
  static constexpr float kC[kDegree] = {9.999997e-01f, 4.9999142e-01f, 1.6667643e-01f, 4.189885e-02f,
                                        8.290149e-03f};
};
template <> struct ExpConst<double> {
  static constexpr double kLog2e = 0x1.71547652b82fep+0;
  static constexpr double kF1 = 0x1.62e42fefa39efp-1, kF2 = 0x1.abc9e3b39803fp-56;
  static constexpr double kL1 = 0x1.62e42ffp-1, kL2 = -0x1.718432a2p-35, kL3 = 0x1.3c7673007e5edp-69;
  static constexpr int kDegree = 12;  // max relative error 3.0e-16
  static constexpr double kC[kDegree] = {
      1.0000000000000002e+00, 5.000000000000063e-01,  1.6666666666666732e-01, 4.16666666656465e-02,
      8.333333332612066e-03,  1.3888889312933814e-03, 1.9841272804360093e-04, 2.4800863484825396e-05,
      2.755352265477691e-06,  2.810488650276851e-07,  2.6613290028869074e-08, -1.3100247896135633e-08};
};

template <class T> struct Math {
  using V = Vec<T>;
  using R = typename V::R;
  using C = ExpConst<T>;

  // exp(x) = m * 2^e with e = round(x*log2(e)) and m = p(x - e*ln2) in [0.70, 1.42].
  static inline void extexp(R x, R& m, R& e) {
    e = V::round(V::mul(x, V::set1(C::kLog2e)));
#if defined(TP_ISA_SCALAR)
    R t = V::fma(e, V::set1(-C::kL1), x);
    t = V::fma(e, V::set1(-C::kL2), t);
    t = V::fma(e, V::set1(-C::kL3), t);
#else
    R t = V::fma(e, V::set1(-C::kF1), x);
    t = V::fma(e, V::set1(-C::kF2), t);
#endif
    R q = V::set1(C::kC[C::kDegree - 1]);
    for (int i = C::kDegree - 2; i >= 0; --i) q = V::fma(q, t, V::set1(C::kC[i]));
    m = V::fma(q, t, V::set1(T(1)));
  }
  // exp(x) for x <= 0 (the argument is x - max in the three-pass and online kernels).
  // -inf and anything that would underflow is clamped first, so inf*0 never occurs;
  // max(bound, x) returns x when x is NaN, so NaN still propagates.
  static inline R exp(R x) {
    x = V::max(V::set1(tp::Numerics<T>::kExpMin), x);
    R m, e;
    extexp(x, m, e);
    return Scale<T>::out(m, e);
  }
  // exp(x) for x in [kNormalMin, 0] (not NaN-safe beyond propagating it): the result
  // is normal, so there is nothing to clamp and one power of two scales it.
  static inline R exp_normal(R x) {
    R m, e;
    extexp(x, m, e);
    return Scale<T>::out_normal(m, e);
  }
};

using tp::pair_merge;

// One element's pair, by the vector code (PrimPair::extexp).
template <class T> void extexp_one(T x, T* m, T* e) {
  using V = Vec<T>;
  typename V::R mv, ev;
  Math<T>::extexp(V::set1(x), mv, ev);
  T ms[V::W], es[V::W];
  V::lanes(ms, mv);
  V::lanes(es, ev);
  *m = ms[0];
  *e = es[0];
}

// ---------------------------------------------------------------------------------
// Visitors. A reduction visitor holds vector state per unrolled register u, consumes
// vectors with step(u, x), and folds its state into per-lane double results with
// fold_row (all lanes into result 0) or fold_panel (lane l of register u into result
// u*W + l). A map visitor returns the output vector with apply(u, x).
// Parameters are per register u: a broadcast scalar for rows, W lanes for panels.
// ---------------------------------------------------------------------------------
constexpr int kUnroll = 4;

template <class T> struct Params {
  using V = Vec<T>;
  typename V::R p[kUnroll];
  // Row: one value for every register. Panel: lanes u*W.. of the array (missing lanes
  // read as `fill`, which keeps their arithmetic finite).
  void row(const T* a) {
    for (auto& r : p) r = V::set1(a[0]);
  }
  void panel(const T* a, int lanes, T fill) {
    for (int u = 0; u < kUnroll; ++u) p[u] = V::load_partial(a + u * V::W, std::clamp(lanes - u * V::W, 0, V::W), fill);
  }
};

// Pass 1 of the two-pass algorithm. Per register: a sum S and its exponent E (a float
// holding an integer). Adding terms m_i * 2^e_i: E' = max(E, e_i...);
// S' = S * 2^(E - E') + sum m_i * 2^(e_i - E'). Along a row, each accumulator takes two
// vectors per update (3 scalings per 2 vectors instead of 4); across panel lanes each
// register is its own row. `Shifted` subtracts a per-row shift first (the rare redo of
// rows outside the accurate domain); the common path pays nothing for it.
template <class T, bool Shifted> struct PairSumVisitor {
  using V = Vec<T>;
  using R = typename V::R;
  static constexpr T kFill = -INFINITY;
  static constexpr bool kPrefetch = true;
  // 32, not 16: the fold (a horizontal max and sum, a scalar pair merge) cost ~20% of
  // pass 1 at 16 (in cache, 2^16 floats: 0.41 -> 0.32 ns/element); the accuracy report
  // did not move (float32 softmax worst case 3.63 -> 3.68 ulp).
  static constexpr int kFoldSteps = 32;
  Params<T> shift;
  R S[kUnroll], E[kUnroll], M[kUnroll];  // M: the maximum of x - shift, per register
  Pair* out;
  T* out_max;
  void reset() {
    for (int u = 0; u < kUnroll; ++u) {
      S[u] = V::set1(0);
      E[u] = V::set1(T(-1e30));  // finite sentinel: no inf - inf in E - max(E, e)
      M[u] = V::set1(-INFINITY);
    }
  }
  // The argument of exp (x - shift), clamped below the accurate domain (this also maps
  // -inf to a finite value): such elements contribute < 2^-180 of the row's largest
  // term whenever the driver accepts this pass's result. max(bound, x) keeps NaN. M
  // tracks the clamped argument: a row whose maximum is clamped is redone anyway.
  inline R shifted(int u, R x) const { return Shifted ? V::sub(x, shift.p[u]) : x; }
  static inline R clamp(R x) { return V::max(V::set1(-tp::Numerics<T>::kAccurate), x); }
  // The loop-carried chain is one max on E and one fma on S; the terms' scaling and
  // sum happen off the chain.
  inline void step(int u, R x) {  // panel: register u is lane group u
    R m, e;
    x = clamp(shifted(u, x));
    M[u] = V::max(M[u], x);
    Math<T>::extexp(x, m, e);
    const R Emax = V::max(E[u], e);
    const R term = V::mul(m, Scale<T>::acc_pow2(V::sub(e, Emax)));
    S[u] = V::fma(S[u], Scale<T>::acc_pow2(V::sub(E[u], Emax)), term);
    E[u] = Emax;
  }
  // Along a row the largest exponent comes from the maximum: round(x * log2(e)) is
  // monotonic in x, so round(M * log2(e)) is the largest e of the elements M covers.
  // Tracking M (which log_softmax and logsumexp need) then costs one multiply and one
  // round per step of kUnroll vectors over the exponent maximum it replaces.
  inline void step_row(const R (&x)[kUnroll]) {  // row: one accumulator takes all registers
    R xc[kUnroll], m[kUnroll], e[kUnroll];
    for (int u = 0; u < kUnroll; ++u) xc[u] = clamp(shifted(u, x[u]));
    R Mx = M[0];
    for (int u = 0; u < kUnroll; ++u) Mx = V::max(Mx, xc[u]);
    M[0] = Mx;
    const R Emax = V::round(V::mul(Mx, V::set1(ExpConst<T>::kLog2e)));  // >= E[0]: M only grows
    for (int u = 0; u < kUnroll; ++u) Math<T>::extexp(xc[u], m[u], e[u]);
    R terms = V::mul(m[0], Scale<T>::acc_pow2(V::sub(e[0], Emax)));
    for (int u = 1; u < kUnroll; ++u) terms = V::fma(m[u], Scale<T>::acc_pow2(V::sub(e[u], Emax)), terms);
    S[0] = V::fma(S[0], Scale<T>::acc_pow2(V::sub(E[0], Emax)), terms);
    E[0] = Emax;
  }
  // Registers merge in vector form, then the lanes, scaled to their largest exponent
  // (exactly: powers of two), are summed in double. Branch-free, once per block.
  void fold_row() {
    R Emax = E[0], Mall = M[0];
    for (int u = 1; u < kUnroll; ++u) Emax = V::max(Emax, E[u]), Mall = V::max(Mall, M[u]);
    R Ssum = V::set1(0);
    for (int u = 0; u < kUnroll; ++u) Ssum = V::fma(S[u], Scale<T>::acc_pow2(V::sub(E[u], Emax)), Ssum);
    const T em = V::hmax(Emax);
    const double total = V::hsum_wide(V::mul(Ssum, Scale<T>::acc_pow2(V::sub(Emax, V::set1(em)))));
    pair_merge(out[0], total, em);
    const T mx = V::hmax(Mall);
    out_max[0] = out_max[0] > mx ? out_max[0] : mx;
  }
  void fold_panel(int lanes) {
    T s[V::W], e[V::W], mx[V::W];
    for (int u = 0; u * V::W < lanes; ++u) {
      V::lanes(s, S[u]);
      V::lanes(e, E[u]);
      V::lanes(mx, M[u]);
      for (int l = 0; l < V::W && u * V::W + l < lanes; ++l) {
        pair_merge(out[u * V::W + l], s[l], e[l]);
        T& o = out_max[u * V::W + l];
        o = o > mx[l] ? o : mx[l];
      }
    }
  }
  void init_out(int k) {
    for (int i = 0; i < k; ++i) out[i] = Pair{0.0, -1e300, 0.0}, out_max[i] = -INFINITY;
  }
};

template <class T> struct MaxVisitor {
  using V = Vec<T>;
  using R = typename V::R;
  static constexpr T kFill = -INFINITY;
  static constexpr bool kPrefetch = false;
  static constexpr int kFoldSteps = 64;  // exact: folding only costs time
  R M[kUnroll];
  T* out;
  void reset() {
    for (auto& r : M) r = V::set1(-INFINITY);
  }
  inline void step(int u, R x) { M[u] = V::max(M[u], x); }
  void fold_row() {
    R all = M[0];
    for (int u = 1; u < kUnroll; ++u) all = V::max(all, M[u]);
    const T m = V::hmax(all);
    out[0] = out[0] > m ? out[0] : m;
  }
  void fold_panel(int lanes) {
    T m[V::W];
    for (int u = 0; u * V::W < lanes; ++u) {
      V::lanes(m, M[u]);
      for (int l = 0; l < V::W && u * V::W + l < lanes; ++l) {
        T& o = out[u * V::W + l];
        o = o > m[l] ? o : m[l];
      }
    }
  }
  void init_out(int k) {
    for (int i = 0; i < k; ++i) out[i] = -INFINITY;
  }
};

// Plain sums (of exp(x - m)) folded into double with Neumaier compensation.
template <class T> struct SumFold {
  double* out;
  double comp[tp::kMaxLanes];
  void init_out(int k) {
    for (int i = 0; i < k; ++i) out[i] = comp[i] = 0.0;
  }
  inline void add(int i, double v) {
    double t = out[i] + v;
    comp[i] += std::fabs(out[i]) >= std::fabs(v) ? (out[i] - t) + v : (v - t) + out[i];
    out[i] = t;
  }
  void finish(int k) {
    for (int i = 0; i < k; ++i) out[i] += comp[i];
  }
};

template <class T> struct SumExpVisitor : SumFold<T> {
  using V = Vec<T>;
  using R = typename V::R;
  static constexpr T kFill = -INFINITY;
  static constexpr bool kPrefetch = true;
  static constexpr int kFoldSteps = 16;
  Params<T> mx;
  R S[kUnroll];
  void reset() {
    for (auto& r : S) r = V::set1(0);
  }
  inline void step(int u, R x) { S[u] = V::add(S[u], Math<T>::exp(V::sub(x, mx.p[u]))); }
  void fold_row() {
    R all = S[0];
    for (int u = 1; u < kUnroll; ++u) all = V::add(all, S[u]);
    this->add(0, V::hsum_wide(all));
  }
  void fold_panel(int lanes) {
    T s[V::W];
    for (int u = 0; u * V::W < lanes; ++u) {
      V::lanes(s, S[u]);
      for (int l = 0; l < V::W && u * V::W + l < lanes; ++l) this->add(u * V::W + l, s[l]);
    }
  }
};

// Online softmax (Milakov & Gimelshein): running max M and sum S of exp(x - M).
template <class T> struct OnlineVisitor {
  using V = Vec<T>;
  using R = typename V::R;
  static constexpr T kFill = -INFINITY;
  static constexpr bool kPrefetch = true;
  static constexpr int kFoldSteps = 64;
  R M[kUnroll], S[kUnroll];
  double* out_m;
  double* out_s;
  double comp[tp::kMaxLanes];  // Neumaier compensation of out_s
  bool fresh = true;
  // The running maxima M persist across blocks (only the sums restart), so a fold adds
  // sums taken at the same maximum: exp(M - M) = 1 exactly, and rescaling (a rounding)
  // happens only when a maximum grows.
  void reset() {
    for (int u = 0; u < kUnroll; ++u) {
      if (fresh) M[u] = V::set1(std::numeric_limits<T>::lowest());  // finite: no inf - inf
      S[u] = V::set1(0);
    }
    fresh = false;
  }
  inline void step(int u, R x) {
    R Mn = V::max(M[u], x);
    S[u] = V::fma(S[u], Math<T>::exp(V::sub(M[u], Mn)), Math<T>::exp(V::sub(x, Mn)));
    M[u] = Mn;
  }
  void fold_row() {
    R Mn = M[0];
    for (int u = 1; u < kUnroll; ++u) Mn = V::max(Mn, M[u]);
    const T mh = V::hmax(Mn);
    const R Mh = V::set1(mh);
    R all = V::set1(0);
    for (int u = 0; u < kUnroll; ++u) {
      all = V::fma(S[u], Math<T>::exp(V::sub(M[u], Mh)), all);
      M[u] = Mh;  // every register continues from the row's running maximum
    }
    merge(0, mh, V::hsum_wide(all));
  }
  void fold_panel(int lanes) {
    for (int u = 0; u * V::W < lanes; ++u) {
      T m[V::W], s[V::W];
      V::lanes(m, M[u]);
      V::lanes(s, S[u]);
      for (int l = 0; l < V::W && u * V::W + l < lanes; ++l)
        merge(u * V::W + l, m[l], s[l]);
    }
  }
  // (out_m, out_s) += (m2, s2), compensated: with the maxima persisting, m2 == out_m
  // nearly always, and the fold is a plain (exact-ish) sum.
  void merge(int i, double m2, double s2) {
    double &m = out_m[i], &s = out_s[i], &c = comp[i];
    if (!(s2 == s2) || !(m2 == m2)) {
      s = NAN;
      return;
    }
    if (s2 == 0) return;
    if (s == 0 && c == 0) {
      m = m2, s = s2;
      return;
    }
    if (m2 > m) {
      const double f = std::exp(m - m2);
      s *= f, c *= f, m = m2;
    } else if (m2 < m) {
      s2 *= std::exp(m2 - m);
    }
    const double t = s + s2;
    c += std::fabs(s) >= std::fabs(s2) ? (s - t) + s2 : (s2 - t) + s;
    s = t;
  }
  void init_out(int k) {
    for (int i = 0; i < k; ++i) out_m[i] = -INFINITY, out_s[i] = 0.0, comp[i] = 0.0;
  }
  void finish(int k) {
    for (int i = 0; i < k; ++i) out_s[i] += comp[i];
  }
};

// ---- map visitors ----
// Pass 2 of the two-pass algorithm: y = p(t) * scale * 2^(e - E), t = x - e*ln2.
template <class T, bool Shifted> struct PairWriteVisitor {
  using V = Vec<T>;
  using R = typename V::R;
  static constexpr T kFill = 0;
  static constexpr bool kPrefetch = true;
  Params<T> shift, scale, E;
  inline R apply(int u, R x) {
    if (Shifted) x = V::sub(x, shift.p[u]);
    x = V::max(V::set1(-tp::Numerics<T>::kAccurate), x);
    R m, e;
    Math<T>::extexp(x, m, e);
    return Scale<T>::out(V::mul(m, scale.p[u]), V::sub(e, E.p[u]));
  }
};
template <class T> struct ExpScaleVisitor {
  static constexpr T kFill = 0;
  static constexpr bool kPrefetch = true;
  using R = typename Vec<T>::R;
  Params<T> mx, c;
  inline R apply(int u, R x) { return Vec<T>::mul(Math<T>::exp(Vec<T>::sub(x, mx.p[u])), c.p[u]); }
};
template <class T> struct ScaleVisitor {
  static constexpr T kFill = 0;
  static constexpr bool kPrefetch = false;
  using R = typename Vec<T>::R;
  Params<T> c;
  inline R apply(int u, R x) { return Vec<T>::mul(x, c.p[u]); }
};
template <class T> struct Sub2Visitor {
  static constexpr T kFill = 0;
  static constexpr bool kPrefetch = false;
  using R = typename Vec<T>::R;
  Params<T> hi, lo;
  inline R apply(int u, R x) { return Vec<T>::sub(Vec<T>::sub(x, hi.p[u]), lo.p[u]); }
};
// Map and reduce at once: y = exp(x - m), sum of y.
template <class T> struct ExpStoreSumVisitor : SumExpVisitor<T> {
  using R = typename Vec<T>::R;
  inline R apply(int u, R x) {
    R y = Math<T>::exp(Vec<T>::sub(x, this->mx.p[u]));
    this->S[u] = Vec<T>::add(this->S[u], y);
    return y;
  }
};

// ---------------------------------------------------------------------------------
// The two loops.
// ---------------------------------------------------------------------------------
// Steps per fold (Vis::kFoldSteps along a row): a register lane sums at most 16 terms
// (32 in pass 1) in T before the partial sum moves to double, so a row's sum is
// accurate to ~1 ulp however long the row. A panel lane is a whole row (its largest
// term lands in the same lane as all the others), so it folds after 8 steps.
template <class T, class Vis> constexpr int64_t kRowBlock = Vis::kFoldSteps * kUnroll * Vec<T>::W;
constexpr int64_t kPanelBlock = 8;  // steps along the axis per fold, in panel mode

// A row visitor may take the unrolled registers together (step_row); by default each
// register feeds its own accumulator.
template <class Vis, class R> auto step_row(Vis& vis, const R (&v)[kUnroll]) -> decltype(vis.step_row(v)) {
  return vis.step_row(v);
}
template <class Vis, class R, class... Ignored> void step_row(Vis& vis, const R (&v)[kUnroll], Ignored...) {
  for (int u = 0; u < kUnroll; ++u) vis.step(u, v[u]);
}

// Software prefetch, kPrefetchBytes ahead of a row's loads, for the visitors that
// compute an exp per element (Vis::kPrefetch). Those loops are compute-bound on AVX2
// and slow enough that the hardware prefetchers alone leave DRAM latency exposed: out
// of cache, pass 1 ran ~15% slower than in cache (pair_sum over 2^24 floats, one
// thread: 7.1 ms without, 6.2 ms with; 2 KB was the best of 256 B .. 8 KB). The cheap
// visitors (max, scale, sub2) run at memory speed on the hardware prefetchers alone;
// prefetching slowed the max pass from 4.1 to 5.1 ms. Prefetches never fault, so
// reading past a row's end is harmless.
constexpr int kPrefetchBytes = 2048;
template <class T> inline void prefetch_ahead(const T* p) {
  constexpr int kBytes = kUnroll * Vec<T>::W * (int)sizeof(T);  // one unrolled step
  for (int b = 0; b < kBytes; b += 64) __builtin_prefetch((const char*)p + kPrefetchBytes + b);
}

// Reduce a contiguous row (lanes = 1).
template <class T, class Vis> void reduce_row(const T* x, int64_t n, Vis& vis) {
  using V = Vec<T>;
  constexpr int W = V::W;
  vis.init_out(1);
  for (int64_t b = 0; b < n; b += kRowBlock<T, Vis>) {
    const int64_t end = std::min(n, b + kRowBlock<T, Vis>);
    vis.reset();
    int64_t i = b;
    typename V::R v[kUnroll];
    for (; i + kUnroll * W <= end; i += kUnroll * W) {
      if (Vis::kPrefetch) prefetch_ahead(x + i);
      for (int u = 0; u < kUnroll; ++u) v[u] = V::load(x + i + u * W);
      step_row(vis, v);
    }
    if (i < end) {  // tail: masked loads; missing lanes (and whole registers) = kFill
      for (int u = 0; u < kUnroll; ++u)
        v[u] = V::load_partial(x + i + u * W, (int)std::clamp<int64_t>(end - i - u * W, 0, W), Vis::kFill);
      step_row(vis, v);
    }
    vis.fold_row();
  }
}

// Reduce a panel: lanes contiguous, step sx along the axis.
template <class T, class Vis> void reduce_panel(const Group<T>& g, Vis& vis) {
  using V = Vec<T>;
  constexpr int W = V::W;
  vis.init_out(g.lanes);
  const int nvec = (g.lanes + W - 1) / W;
  for (int64_t b = 0; b < g.n; b += kPanelBlock) {
    const int64_t end = std::min(g.n, b + kPanelBlock);
    vis.reset();
    for (int64_t j = b; j < end; ++j) {
      const T* xj = g.x + j * g.sx;
      if (nvec == kUnroll && g.lanes == kUnroll * W) {
        for (int u = 0; u < kUnroll; ++u) vis.step(u, V::load(xj + u * W));
      } else {
        for (int u = 0; u < nvec; ++u) vis.step(u, V::load_partial(xj + u * W, std::min(W, g.lanes - u * W), Vis::kFill));
      }
    }
    vis.fold_panel(g.lanes);
  }
}

// Write a contiguous row y[0..n) from f(i, k, u): the vector of elements i..i+k (k <= W
// lanes; u the unrolled register it stands for), with streaming stores when asked;
// `src` (may be null) is the row f reads, prefetched ahead.
template <class T, class F> void write_row(T* y, int64_t n, bool stream, const T* src, F&& f) {
  using V = Vec<T>;
  constexpr int W = V::W;
  int64_t i = 0;
  // Streaming stores need vector-aligned addresses: peel a partial head first.
  stream = stream && W > 1 && ((uintptr_t)y % sizeof(T)) == 0;
  if (stream) {
    const int64_t mis = (int64_t)(((uintptr_t)y / sizeof(T)) % W);
    if (mis) {
      const int h = (int)std::min<int64_t>(n, W - mis);
      V::store_partial(y, f(0, h, 0), h);
      i = h;
    }
    for (; i + kUnroll * W <= n; i += kUnroll * W) {
      if (src) prefetch_ahead(src + i);
      for (int u = 0; u < kUnroll; ++u) V::stream(y + i + u * W, f(i + u * W, W, u));
    }
  } else {
    for (; i + kUnroll * W <= n; i += kUnroll * W) {
      if (src) prefetch_ahead(src + i);
      for (int u = 0; u < kUnroll; ++u) V::store(y + i + u * W, f(i + u * W, W, u));
    }
  }
  for (; i + W <= n; i += W) V::store(y + i, f(i, W, 0));
  if (i < n) V::store_partial(y + i, f(i, (int)(n - i), 0), (int)(n - i));
  if (stream) V::sfence();
}

// Full or partial (missing lanes = fill) load of k <= W elements.
template <class T> inline typename Vec<T>::R load_k(const T* p, int k, T fill) {
  return k == Vec<T>::W ? Vec<T>::load(p) : Vec<T>::load_partial(p, k, fill);
}

template <class T, class Vis> void map_row(const T* x, T* y, int64_t n, Vis& vis, bool stream) {
  write_row(y, n, stream, Vis::kPrefetch ? x : nullptr, [&](int64_t i, int k, int u) { return vis.apply(u, load_k(x + i, k, Vis::kFill)); });
}

template <class T, class Vis> void map_panel(const Group<T>& g, Vis& vis) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const int nvec = (g.lanes + W - 1) / W;
  const bool full = nvec == kUnroll && g.lanes == kUnroll * W;
  for (int64_t j = 0; j < g.n; ++j) {
    const T* xj = g.x + j * g.sx;
    T* yj = g.y + j * g.sy;
    if (full) {
      for (int u = 0; u < kUnroll; ++u) V::store(yj + u * W, vis.apply(u, V::load(xj + u * W)));
    } else {
      for (int u = 0; u < nvec; ++u) {
        const int k = std::min(W, g.lanes - u * W);
        V::store_partial(yj + u * W, vis.apply(u, V::load_partial(xj + u * W, k, Vis::kFill)), k);
      }
    }
  }
}

// ---------------------------------------------------------------------------------
// Cross-entropy helpers (twopass.h, CeRow). Rows only: logits are contiguous rows, and
// each row is in cache when these run (cross_entropy.cpp), so they are plain loops.
// ---------------------------------------------------------------------------------
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
    const R u = Math<T>::exp(V::mul(V::set1(T(-2)), a));
    const R t = V::div(V::mul(y, V::sub(V::set1(1), u)), V::mul(V::add(V::set1(1), u), a));
    return V::mul(cap, t);
  }
};

template <class T> void ce_softcap(const T* x, T* y, int64_t n, T cap) {
  SoftcapVisitor<T> v;
  v.cap = Vec<T>::set1(cap);
  v.inv = Vec<T>::set1(T(1) / cap);
  map_row(x, y, n, v, false);
}

// sum_j x_j * w_j (w null: sum_j x_j): T registers folded into double every block, so
// long rows keep ~1 ulp. 0 * -inf = NaN, as torch's (x * w).sum() gives.
template <class T> double ce_dot(const T* x, const T* w, int64_t n) {
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
        acc[u] = w ? V::fma(V::load(x + i + u * W), V::load(w + i + u * W), acc[u]) : V::add(acc[u], V::load(x + i + u * W));
    for (; i < end; i += W) {
      const int k = (int)std::min<int64_t>(W, end - i);
      const R xv = V::load_partial(x + i, k, 0);
      acc[0] = w ? V::fma(xv, V::load_partial(w + i, k, 0), acc[0]) : V::add(acc[0], xv);
    }
    for (int u = 1; u < kUnroll; ++u) acc[0] = V::add(acc[0], acc[u]);
    total += V::hsum_wide(acc[0]);
  }
  return total;
}

// The gradient from the softmax p: y_j = (a * p_j - c * w_j) * d_j, with w_j = 1 when w
// is null and d_j = 1 - (xc_j / cap)^2 (the soft-cap's derivative, from the capped
// logits xc) when xc is not null. p is a cached scratch row; y is the output, written
// with streaming stores when asked (it is not read again).
template <class T, bool Weighted, bool Capped>
void ce_finish_impl(const T* p, T* y, const T* xc, const T* w, int64_t n, T a, T c, T inv_cap, bool stream) {
  using V = Vec<T>;
  using R = typename V::R;
  const R av = V::set1(a), cv = V::set1(c), iv = V::set1(inv_cap), one = V::set1(1);
  write_row(y, n, stream, (const T*)nullptr, [&](int64_t i, int k, int) {
    R g = V::mul(av, load_k<T>(p + i, k, 0));
    g = Weighted ? V::sub(g, V::mul(cv, load_k<T>(w + i, k, 0))) : V::sub(g, cv);
    if (Capped) {
      const R s = V::mul(load_k<T>(xc + i, k, 0), iv);
      g = V::mul(g, V::sub(one, V::mul(s, s)));
    }
    return g;
  });
}
template <class T>
void ce_finish(const T* p, T* y, const T* xc, const T* w, int64_t n, T a, T c, T inv_cap, bool stream) {
  if (w)
    xc ? ce_finish_impl<T, true, true>(p, y, xc, w, n, a, c, inv_cap, stream)
       : ce_finish_impl<T, true, false>(p, y, xc, w, n, a, c, inv_cap, stream);
  else
    xc ? ce_finish_impl<T, false, true>(p, y, xc, w, n, a, c, inv_cap, stream)
       : ce_finish_impl<T, false, false>(p, y, xc, w, n, a, c, inv_cap, stream);
}

// bfloat16 is the upper half of a float32: widening is a shift, narrowing rounds to
// nearest even (NaN kept quiet). Plain loops, vectorised by the compiler for this ISA.
void bf16_to_f32(const uint16_t* a, float* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t u = (uint32_t)a[j] << 16;
    std::memcpy(y + j, &u, 4);
  }
}
void f32_to_bf16(const float* a, uint16_t* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    uint32_t u;
    std::memcpy(&u, a + j, 4);
    const uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    y[j] = (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? ((u >> 16) | 0x40u) : r);
  }
}

// ---------------------------------------------------------------------------------
// The primitives of twopass.h, one template per loop shape.
// ---------------------------------------------------------------------------------
template <class T, bool Panel> struct Prim {
  static void load(Params<T>& p, const T* a, const Group<T>& g) {
    if (Panel)
      p.panel(a, g.lanes, 0);
    else
      p.row(a);
  }
  template <class Vis> static void reduce(const Group<T>& g, Vis& v) {
    if (Panel)
      reduce_panel(g, v);
    else
      reduce_row(g.x, g.n, v);
  }
  template <class Vis> static void map(const Group<T>& g, Vis& v, bool stream) {
    if (Panel)
      map_panel(g, v);
    else
      map_row(g.x, g.y, g.n, v, stream);
  }

  template <bool Shifted> static void pair_sum_impl(const Group<T>& g, const T* shift, Pair* out, T* mx) {
    PairSumVisitor<T, Shifted> v;
    if (Shifted) load(v.shift, shift, g);
    v.out = out;
    v.out_max = mx;
    reduce(g, v);
  }
  static void pair_sum(const Group<T>& g, const T* shift, Pair* out, T* mx) {
    shift ? pair_sum_impl<true>(g, shift, out, mx) : pair_sum_impl<false>(g, shift, out, mx);
  }
  template <bool Shifted>
  static void pair_write_impl(const Group<T>& g, const T* shift, const T* scale, const T* E, bool stream) {
    PairWriteVisitor<T, Shifted> v;
    if (Shifted) load(v.shift, shift, g);
    load(v.scale, scale, g);
    load(v.E, E, g);
    map(g, v, stream);
  }
  static void pair_write(const Group<T>& g, const T* shift, const T* scale, const T* E, bool stream) {
    shift ? pair_write_impl<true>(g, shift, scale, E, stream) : pair_write_impl<false>(g, shift, scale, E, stream);
  }
  static void max(const Group<T>& g, T* m) {
    MaxVisitor<T> v;
    v.out = m;
    reduce(g, v);
  }
  static void sumexp(const Group<T>& g, const T* m, double* s) {
    SumExpVisitor<T> v;
    load(v.mx, m, g);
    v.out = s;
    reduce(g, v);
    v.finish(Panel ? g.lanes : 1);
  }
  static void online(const Group<T>& g, double* m, double* s) {
    OnlineVisitor<T> v;
    v.out_m = m;
    v.out_s = s;
    reduce(g, v);
    v.finish(Panel ? g.lanes : 1);
  }
  static void exp_store_sum(const Group<T>& g, const T* m, double* s, bool stream) {
    // Sums are folded per block as in reduce_*: run the map block by block.
    ExpStoreSumVisitor<T> v;
    load(v.mx, m, g);
    v.out = s;
    const int k = Panel ? g.lanes : 1;
    v.init_out(k);
    const int64_t block = Panel ? kPanelBlock : kRowBlock<T, ExpStoreSumVisitor<T>>;
    for (int64_t b = 0; b < g.n; b += block) {
      Group<T> sub = g;
      sub.x += b * g.sx;
      sub.y += b * g.sy;
      sub.n = std::min(block, g.n - b);
      v.reset();
      map(sub, v, stream);
      if (Panel)
        v.fold_panel(g.lanes);
      else
        v.fold_row();
    }
    v.finish(k);
  }
  static void exp_scale(const Group<T>& g, const T* m, const T* c, bool stream) {
    ExpScaleVisitor<T> v;
    load(v.mx, m, g);
    load(v.c, c, g);
    map(g, v, stream);
  }
  static void scale(const Group<T>& g, const T* c, bool stream) {
    ScaleVisitor<T> v;
    load(v.c, c, g);
    map(g, v, stream);
  }
  static void sub2(const Group<T>& g, const T* hi, const T* lo, bool stream) {
    Sub2Visitor<T> v;
    load(v.hi, hi, g);
    load(v.lo, lo, g);
    map(g, v, stream);
  }

  // The three-pass reload over a block of contiguous rows in one call (twopass.h). For
  // short rows the separate passes' fixed costs (a call, block setup, folds, the
  // driver's bookkeeping) outweigh the work, so the passes are written out here once,
  // constants hoisted out of the row loop. Sums fold into double every block, as in
  // exp_store_sum (plainly: a short row has one block).
  static void rows_reload(const T* x, T* y, int64_t rows, int64_t n, int64_t xs, int64_t ys, bool log, bool stream, T* lse,
                          uint8_t* redo) {
    using V = Vec<T>;
    using R = typename V::R;
    constexpr int W = V::W, kStep = kUnroll * W;
    constexpr int64_t kBlock = kRowBlock<T, SumExpVisitor<T>>;
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * xs;
      T* yr = y + r * ys;
      // Pass 1: the maximum and minimum (a NaN may or may not survive: the sum catches it).
      R M[kUnroll], L[kUnroll];
      for (auto& v : M) v = V::set1(-INFINITY);
      for (auto& v : L) v = V::set1(INFINITY);
      int64_t i = 0;
      for (; i + kStep <= n; i += kStep)
        for (int u = 0; u < kUnroll; ++u) {
          const R v = V::load(xr + i + u * W);
          M[u] = V::max(M[u], v);
          L[u] = V::min(L[u], v);
        }
      for (; i < n; i += W) {
        const int k = (int)std::min<int64_t>(W, n - i);
        M[0] = V::max(M[0], load_k<T>(xr + i, k, -INFINITY));
        L[0] = V::min(L[0], load_k<T>(xr + i, k, INFINITY));
      }
      for (int u = 1; u < kUnroll; ++u) M[0] = V::max(M[0], M[u]), L[0] = V::min(L[0], L[u]);
      const T m = V::hmax(M[0]);
      const R mv = V::set1(m);
      // Every exp(x - m) normal (the common row: no -inf, a range under 87 for float32):
      // the exp needs no clamp and no care for subnormal results (one row in cache, one
      // core: 4K floats 0.40 -> 0.37 ns per element, 256K floats 0.45 -> 0.42).
      const bool normal = -V::hmax(V::sub(V::set1(0), L[0])) - m >= tp::Numerics<T>::kNormalMin;
      // Pass 2: exp(x - m), stored (softmax) and summed.
      double s = 0;
      for (int64_t b = 0; b < n; b += kBlock) {
        const int64_t end = std::min(n, b + kBlock);
        R S[kUnroll];
        for (auto& v : S) v = V::set1(0);
        auto body = [&](auto exp) {
          for (i = b; i + kStep <= end; i += kStep)
            for (int u = 0; u < kUnroll; ++u) {
              const R e = exp(V::sub(V::load(xr + i + u * W), mv));
              if (!log) V::store(yr + i + u * W, e);
              S[u] = V::add(S[u], e);
            }
        };
        if (normal)
          body([](R v) { return Math<T>::exp_normal(v); });
        else
          body([](R v) { return Math<T>::exp(v); });
        for (; i < end; i += W) {  // the tail, on the general exp
          const int k = (int)std::min<int64_t>(W, end - i);
          const R e = Math<T>::exp(V::sub(load_k<T>(xr + i, k, -INFINITY), mv));  // fill: exp(-inf) = 0
          if (!log) V::store_partial(yr + i, e, k);
          S[0] = V::add(S[0], e);
        }
        for (int u = 1; u < kUnroll; ++u) S[0] = V::add(S[0], S[u]);
        s += V::hsum_wide(S[0]);
      }
      redo[r] = !(std::isfinite(s) && s > 0 && std::isfinite(m));
      if (redo[r]) continue;
      // Pass 3: y *= 1/s (softmax, in place on what pass 2 wrote), y = (x - m) - log s.
      if (log) {
        const R b = V::set1((T)std::log(s));
        write_row(yr, n, stream, (const T*)nullptr,
                  [&](int64_t j, int k, int) { return V::sub(V::sub(load_k<T>(xr + j, k, 0), mv), b); });
      } else {
        const R c = V::set1((T)(1.0 / s));
        write_row(yr, n, false, (const T*)nullptr, [&](int64_t j, int k, int) { return V::mul(load_k<T>(yr + j, k, 0), c); });
        if (lse) lse[r] = (T)((double)m + std::log(s));
      }
    }
  }

  static constexpr tp::Prims<T> table() {
    return {pair_sum, pair_write, max, sumexp, online, exp_store_sum, exp_scale, scale, sub2, Panel ? nullptr : rows_reload};
  }
};

}  // namespace

#define TP_STR2(x) #x
#define TP_STR(x) TP_STR2(x)

const tp::KernelTable& table() {
  static const tp::KernelTable t = {
      TP_STR(TP_NS) + 3,  // "tp_avx2" -> "avx2"
      kUnroll * Vec<float>::W,
      kUnroll * Vec<double>::W,
      {Prim<float, false>::table(), Prim<float, true>::table(), extexp_one<float>},
      {Prim<double, false>::table(), Prim<double, true>::table(), extexp_one<double>},
      {ce_softcap<float>, ce_dot<float>, ce_finish<float>},
      {ce_softcap<double>, ce_dot<double>, ce_finish<double>},
      bf16_to_f32,
      f32_to_bf16,
  };
  return t;
}

}  // namespace TP_NS
