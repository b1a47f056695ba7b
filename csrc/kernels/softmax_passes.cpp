// The passes of the softmax family (softmax, log_softmax, logsumexp; kernel_api.h,
// tp::Passes) for one ISA: compiled once per ISA (CMakeLists.txt), in namespace TP_NS.
//
// Each pass is a visitor run by one of the loops of loops.h. Reduction visitors first
// (two-pass sum, max, sum of exp, online), then map visitors (two-pass write, exp and
// scale, scale, log_softmax write), then the passes themselves.
#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../kernel_api.h"
#include "../lse.h"
#include "../streaming_stores.h"
#include "exp.h"
#include "kernel_parts.h"
#include "loops.h"
#include "simd/vec.h"

namespace TP_NS {
namespace {

using tp::ScaledSum;

// One element's (m, e), by the vector code (SoftmaxKernels::extexp).
template <class T> void extexp_one(T x, T* m, T* e) {
  using V = Vec<T>;
  typename V::R mv, ev;
  Exp<T>::extended(V::set1(x), mv, ev);
  T ms[V::W], es[V::W];
  V::store(ms, mv);
  V::store(es, ev);
  *m = ms[0];
  *e = es[0];
}

// Pass 1 of the two-pass algorithm. Per register: a sum S and its exponent E (a float
// holding an integer). Adding terms m_i * 2^e_i: E' = max(E, e_i...);
// S' = S * 2^(E - E') + sum m_i * 2^(e_i - E'). Along a row, one accumulator takes all
// kUnroll registers per update (step_row: kUnroll + 1 scalings per kUnroll vectors,
// instead of 2 per vector); across panel lanes each register is its own row. `Shifted`
// subtracts a per-row shift first (the rare redo of rows outside the accurate domain);
// the common path pays nothing for it.
template <class T, bool Shifted> struct TwoPassSumVisitor {
  using V = Vec<T>;
  using R = typename V::R;
  static constexpr T kFill = -INFINITY;
  static constexpr bool kPrefetch = true;
  // 32, not 16: the fold (a horizontal max and sum, a scalar ScaledSum merge) cost ~20% of
  // pass 1 at 16 (in cache, 2^16 floats: 0.41 -> 0.32 ns/element); the accuracy report
  // did not move (float32 softmax worst case 3.63 -> 3.68 ulp).
  static constexpr int kFoldSteps = 32;
  PerRegister<T> shift;
  R S[kUnroll], E[kUnroll], M[kUnroll];  // M: the maximum of x - shift, per register
  ScaledSum* out;
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
  inline R shifted(int u, R x) const { return Shifted ? V::sub(x, shift.v[u]) : x; }
  static inline R clamp(R x) { return V::max(V::set1(-tp::Numerics<T>::kAccurate), x); }
  // The loop-carried chain is one max on E and one fma on S; the terms' scaling and
  // sum happen off the chain.
  inline void step(int u, R x) {  // panel: register u is lane group u
    R m, e;
    x = clamp(shifted(u, x));
    M[u] = V::max(M[u], x);
    Exp<T>::extended(x, m, e);
    const R Emax = V::max(E[u], e);
    const R term = V::mul(m, Pow2Scale<T>::sum_factor(V::sub(e, Emax)));
    S[u] = V::fma(S[u], Pow2Scale<T>::sum_factor(V::sub(E[u], Emax)), term);
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
    for (int u = 0; u < kUnroll; ++u) Exp<T>::extended(xc[u], m[u], e[u]);
    R terms = V::mul(m[0], Pow2Scale<T>::sum_factor(V::sub(e[0], Emax)));
    for (int u = 1; u < kUnroll; ++u) terms = V::fma(m[u], Pow2Scale<T>::sum_factor(V::sub(e[u], Emax)), terms);
    S[0] = V::fma(S[0], Pow2Scale<T>::sum_factor(V::sub(E[0], Emax)), terms);
    E[0] = Emax;
  }
  // Registers merge in vector form, then the lanes, scaled to their largest exponent
  // (exactly: powers of two), are summed in double. Branch-free, once per block.
  void fold_row() {
    R Emax = E[0], Mall = M[0];
    for (int u = 1; u < kUnroll; ++u) Emax = V::max(Emax, E[u]), Mall = V::max(Mall, M[u]);
    R Ssum = V::set1(0);
    for (int u = 0; u < kUnroll; ++u) Ssum = V::fma(S[u], Pow2Scale<T>::sum_factor(V::sub(E[u], Emax)), Ssum);
    const T em = V::hmax(Emax);
    const double total = V::hsum_wide(V::mul(Ssum, Pow2Scale<T>::sum_factor(V::sub(Emax, V::set1(em)))));
    tp::scaled_sum_merge(out[0], total, em);
    const T mx = V::hmax(Mall);
    out_max[0] = out_max[0] > mx ? out_max[0] : mx;
  }
  void fold_panel(int lanes) {
    T s[V::W], e[V::W], mx[V::W];
    for (int u = 0; u * V::W < lanes; ++u) {
      V::store(s, S[u]);
      V::store(e, E[u]);
      V::store(mx, M[u]);
      for (int l = 0; l < V::W && u * V::W + l < lanes; ++l) {
        tp::scaled_sum_merge(out[u * V::W + l], s[l], e[l]);
        T& o = out_max[u * V::W + l];
        o = o > mx[l] ? o : mx[l];
      }
    }
  }
  void init_out(int k) {
    for (int i = 0; i < k; ++i) out[i] = tp::kEmptyScaledSum, out_max[i] = -INFINITY;
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
    T m[kUnroll * V::W];
    store_lanes(m, M, lanes);
    for (int i = 0; i < lanes; ++i) out[i] = out[i] > m[i] ? out[i] : m[i];
  }
  void init_out(int k) {
    for (int i = 0; i < k; ++i) out[i] = -INFINITY;
  }
};

// s + v into s, its rounding error into c (Neumaier): the sum is s + c.
inline void neumaier_add(double& s, double& c, double v) {
  const double t = s + v;
  c += std::fabs(s) >= std::fabs(v) ? (s - t) + v : (v - t) + s;
  s = t;
}

// One compensated sum in double: a row's block sums (rows_reload).
struct CompensatedSum {
  double s = 0, c = 0;
  void add(double v) { neumaier_add(s, c, v); }
  void scale(double f) { s *= f, c *= f; }
  double value() const { return s + c; }
};

// Plain sums (of exp(x - m)) folded into double with Neumaier compensation.
template <class T> struct CompensatedSums {
  double* out;
  double comp[tp::kMaxLanes];
  int k = 0;
  bool fresh = false;       // out not yet written: the first fold stores, adds nothing
  bool has_comp = false;    // comp written (from the second fold on)
  void init_out(int count) { k = count, fresh = true, has_comp = false; }
  void clear() {
    for (int i = 0; i < k; ++i) out[i] = comp[i] = 0.0;
    fresh = false, has_comp = true;
  }
  inline void add(int i, double v) {
    if (fresh) clear();
    neumaier_add(out[i], comp[i], v);
  }
  // A panel's registers (lanes == k), lane by lane: loops the compiler vectorizes (a
  // lane-by-lane scalar fold cost more than a short axis's whole exp pass). The first
  // fold stores the sums, the second the first compensation terms: nothing is zeroed
  // first (a short axis folds once).
  void add_lanes(const typename Vec<T>::R (&regs)[kUnroll], int lanes) {
    T v[kUnroll * Vec<T>::W];
    store_lanes(v, regs, lanes);
    double* o = out;
    if (fresh) {
      for (int i = 0; i < lanes; ++i) o[i] = v[i];
      fresh = false;
    } else if (!has_comp) {
      fold_lanes<false>(o, v, lanes);
      has_comp = true;
    } else {
      fold_lanes<true>(o, v, lanes);
    }
  }
  template <bool Accumulate> void fold_lanes(double* o, const T* v, int lanes) {
    for (int i = 0; i < lanes; ++i) {
      const double s = o[i], a = v[i], t = s + a;
      const double err = std::fabs(s) >= std::fabs(a) ? (s - t) + a : (a - t) + s;
      comp[i] = Accumulate ? comp[i] + err : err;
      o[i] = t;
    }
  }
  void finish(int count) {
    if (fresh) clear();
    if (has_comp)
      for (int i = 0; i < count; ++i) out[i] += comp[i];
  }
};

template <class T> struct SumExpVisitor : CompensatedSums<T> {
  using V = Vec<T>;
  using R = typename V::R;
  static constexpr T kFill = -INFINITY;
  static constexpr bool kPrefetch = true;
  static constexpr int kFoldSteps = 16;
  PerRegister<T> mx;
  R S[kUnroll];
  void reset() {
    for (auto& r : S) r = V::set1(0);
  }
  inline void step(int u, R x) { S[u] = V::add(S[u], Exp<T>::term(V::sub(x, mx.v[u]))); }
  void fold_row() {
    R all = S[0];
    for (int u = 1; u < kUnroll; ++u) all = V::add(all, S[u]);
    this->add(0, V::hsum_wide(all));
  }
  void fold_panel(int lanes) { this->add_lanes(S, lanes); }
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
    S[u] = V::fma(S[u], Exp<T>::term(V::sub(M[u], Mn)), Exp<T>::term(V::sub(x, Mn)));
    M[u] = Mn;
  }
  void fold_row() {
    R Mn = M[0];
    for (int u = 1; u < kUnroll; ++u) Mn = V::max(Mn, M[u]);
    const T mh = V::hmax(Mn);
    const R Mh = V::set1(mh);
    R all = V::set1(0);
    for (int u = 0; u < kUnroll; ++u) {
      all = V::fma(S[u], Exp<T>::term(V::sub(M[u], Mh)), all);
      M[u] = Mh;  // every register continues from the row's running maximum
    }
    merge(0, mh, V::hsum_wide(all));
  }
  void fold_panel(int lanes) {
    for (int u = 0; u * V::W < lanes; ++u) {
      T m[V::W], s[V::W];
      V::store(m, M[u]);
      V::store(s, S[u]);
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
template <class T, bool Shifted> struct TwoPassWriteVisitor {
  using V = Vec<T>;
  using R = typename V::R;
  static constexpr T kFill = 0;
  static constexpr bool kPrefetch = true;
  PerRegister<T> shift, scale, E;
  static constexpr bool kElementwise = true;  // (loops.h, map_row)
  inline R apply(int u, R x) {
    if (Shifted) x = V::sub(x, shift.v[u]);
    x = V::max(V::set1(-tp::Numerics<T>::kAccurate), x);
    R m, e;
    Exp<T>::extended(x, m, e);
    return Pow2Scale<T>::out(V::mul(m, scale.v[u]), V::sub(e, E.v[u]));
  }
};
template <class T> struct ExpScaleVisitor {
  static constexpr T kFill = 0;
  static constexpr bool kPrefetch = true;
  using R = typename Vec<T>::R;
  PerRegister<T> mx, c;
  static constexpr bool kElementwise = true;  // (loops.h, map_row)
  inline R apply(int u, R x) { return Vec<T>::mul(Exp<T>::nonpositive(Vec<T>::sub(x, mx.v[u])), c.v[u]); }
};
template <class T> struct ScaleVisitor {
  static constexpr T kFill = 0;
  static constexpr bool kPrefetch = false;
  using R = typename Vec<T>::R;
  PerRegister<T> c;
  static constexpr bool kElementwise = true;  // (loops.h, map_row)
  inline R apply(int u, R x) { return Vec<T>::mul(x, c.v[u]); }
};
template <class T> struct LogSoftmaxWriteVisitor {
  static constexpr T kFill = 0;
  static constexpr bool kPrefetch = false;
  using R = typename Vec<T>::R;
  PerRegister<T> hi, lo;
  static constexpr bool kElementwise = true;  // (loops.h, map_row)
  inline R apply(int u, R x) { return Vec<T>::sub(Vec<T>::sub(x, hi.v[u]), lo.v[u]); }
};
// Map and reduce at once: the maximum while x goes on unchanged (into a scratch panel);
// y = exp(x - m), sum of y.
template <class T> struct MaxStoreVisitor : MaxVisitor<T> {
  using R = typename Vec<T>::R;
  inline R apply(int u, R x) {
    this->step(u, x);
    return x;
  }
};
template <class T> struct ExpStoreSumVisitor : SumExpVisitor<T> {
  using R = typename Vec<T>::R;
  inline R apply(int u, R x) {
    R y = Exp<T>::nonpositive(Vec<T>::sub(x, this->mx.v[u]));
    this->S[u] = Vec<T>::add(this->S[u], y);
    return y;
  }
};

// ---------------------------------------------------------------------------------
// The passes of kernel_api.h (tp::Passes), one instantiation per loop shape: rows
// (Panel false) or panels.
// ---------------------------------------------------------------------------------
template <class S, bool Panel> struct PassKernels {
  using T = tp::Compute<S>;  // S: the storage type of x and y (loops.h)
  static constexpr bool kStores = std::is_same_v<S, T>;  // y can hold exp in T
  // bfloat16 loads and stores pairs of vectors where order is free (Io's unordered loads
  // and stores); float16 keeps its ordered conversions, which measured faster there
  // (the reload in cache, 1 thread, Zen 4: 0.35-0.37 against 0.40-0.47 ns per element).
  static constexpr bool kPairs = std::is_same_v<S, tp::bf16>;
  // float16's maximum and minimum on 16-bit integer keys where the ISA has them
  // (half_keys_x86.h): its pass 1 without F16C conversions.
  static constexpr bool kKeys = std::is_same_v<S, tp::f16> && HasHalfKeys<HalfVec>::value;
  template <bool Shifted> static void two_pass_sum_impl(const Group<S>& g, const T* shift, ScaledSum* out, T* mx) {
    TwoPassSumVisitor<T, Shifted> v;
    if (Shifted) v.shift.load(shift, g, Panel);
    v.out = out;
    v.out_max = mx;
    reduce<Panel>(g, v);
  }
  static void two_pass_sum(const Group<S>& g, const T* shift, ScaledSum* out, T* mx) {
    shift ? two_pass_sum_impl<true>(g, shift, out, mx) : two_pass_sum_impl<false>(g, shift, out, mx);
  }
  template <bool Shifted>
  static void two_pass_write_impl(const Group<S>& g, const T* shift, const T* scale, const T* E, bool stream) {
    TwoPassWriteVisitor<T, Shifted> v;
    if (Shifted) v.shift.load(shift, g, Panel);
    v.scale.load(scale, g, Panel);
    v.E.load(E, g, Panel);
    map<Panel>(g, v, stream);
  }
  static void two_pass_write(const Group<S>& g, const T* shift, const T* scale, const T* E, bool stream) {
    shift ? two_pass_write_impl<true>(g, shift, scale, E, stream)
          : two_pass_write_impl<false>(g, shift, scale, E, stream);
  }
  static void max(const Group<S>& g, T* m) {
    MaxVisitor<T> v;
    v.out = m;
    reduce<Panel>(g, v);
  }
  static void sumexp(const Group<S>& g, const T* m, double* s) {
    SumExpVisitor<T> v;
    v.mx.load(m, g, Panel);
    v.out = s;
    reduce<Panel>(g, v);
    v.finish(Panel ? g.lanes : 1);
  }
  static void online(const Group<S>& g, double* m, double* s) {
    OnlineVisitor<T> v;
    v.out_m = m;
    v.out_s = s;
    reduce<Panel>(g, v);
    v.finish(Panel ? g.lanes : 1);
  }
  // Sums are folded per block as in reduce_*: the map runs block by block, map_block(b,
  // len, v) over elements [b, b + len) of every lane.
  template <class F> static void exp_store_sum_blocks(const Group<S>& g, const T* m, double* s, F&& map_block) {
    ExpStoreSumVisitor<T> v;
    v.mx.load(m, g, Panel);
    v.out = s;
    const int k = Panel ? g.lanes : 1;
    v.init_out(k);
    const int64_t block = Panel ? kPanelBlock : kRowBlock<T, ExpStoreSumVisitor<T>>;
    for (int64_t b = 0; b < g.n; b += block) {
      v.reset();
      map_block(b, std::min(block, g.n - b), v);
      if (Panel)
        v.fold_panel(g.lanes);
      else
        v.fold_row();
    }
    v.finish(k);
  }
  static void exp_store_sum(const Group<S>& g, const T* m, double* s, bool stream) {
    exp_store_sum_blocks(g, m, s, [&](int64_t b, int64_t len, ExpStoreSumVisitor<T>& v) {
      Group<S> part = g;
      part.x += b * g.sx;
      part.y += b * g.sy;
      part.n = len;
      map<Panel>(part, v, stream);
    });
  }
  static void exp_store_sum_wide(const S* x, T* y, int64_t n, T m, double* s, bool stream, const S* next_row) {
    using Vis = ExpStoreSumVisitor<T>;
    RowPrefetch<S> next(next_row, n);
    exp_store_sum_blocks(Group<S>{x, nullptr, n, 1, 1, 1}, &m, s, [&](int64_t b, int64_t len, Vis& v) {
      const S* xb = x + b;
      write_row(y + b, len, stream, Reads{{xb}}, Vis::kPrefetch ? xb : nullptr, [&](int64_t i, int k, int u) {
        if (u == 0) next.step();
        return v.apply(u, load_k(xb + i, k, Vis::kFill));
      });
    });
  }
  // (Passes::max_to_scratch, scale_scratch, log_softmax_write_scratch: panels; step j
  // of the scratch panel at scratch + j * kMaxLanes.)
  static void max_to_scratch(const Group<S>& g, T* m, T* scratch) {
    MaxStoreVisitor<T> v;
    v.out = m;
    v.init_out(g.lanes);
    v.reset();
    map_panel(g.x, g.sx, scratch, tp::kMaxLanes, g.n, g.lanes, v);
    v.fold_panel(g.lanes);
  }
  static void scale_scratch(const Group<S>& g, const T* scratch, const T* c) {
    ScaleVisitor<T> v;
    v.c.load_lanes(c, g.lanes, 0);
    map_panel(scratch, tp::kMaxLanes, g.y, g.sy, g.n, g.lanes, v);
  }
  static void log_softmax_write_scratch(const Group<S>& g, const T* scratch, const T* hi, const T* lo) {
    LogSoftmaxWriteVisitor<T> v;
    v.hi.load_lanes(hi, g.lanes, 0);
    v.lo.load_lanes(lo, g.lanes, 0);
    map_panel(scratch, tp::kMaxLanes, g.y, g.sy, g.n, g.lanes, v);
  }
  static void exp_scale(const Group<S>& g, const T* m, const T* c, bool stream) {
    ExpScaleVisitor<T> v;
    v.mx.load(m, g, Panel);
    v.c.load(c, g, Panel);
    map<Panel>(g, v, stream);
  }
  static void scale(const Group<S>& g, const T* c, bool stream) {
    ScaleVisitor<T> v;
    v.c.load(c, g, Panel);
    map<Panel>(g, v, stream);
  }
  static void log_softmax_write(const Group<S>& g, const T* hi, const T* lo, bool stream) {
    LogSoftmaxWriteVisitor<T> v;
    v.hi.load(hi, g, Panel);
    v.lo.load(lo, g, Panel);
    map<Panel>(g, v, stream);
  }

  // Passes 1 and 2 of the reload on a long row (float, double softmax), fused block by
  // block: each block's maximum (the block comes into the L1), the running maximum m
  // updated from it (the sum so far rescaled by exp(m_old - m), in double), then
  // exp(x - m) stored in y and summed. block_refs[k] = the m block k's values are
  // relative to (-inf: none finite yet; its values are 0). The row is read from memory
  // once, while the exps compute, rather than once by a max pass with nothing to overlap
  // and again from cache (cold float32 rows of 64K-128K: the reload 1.05-1.2x slower than
  // two_pass before). Out: m, the row's maximum, and s = sum exp(x - m).
  // kUnordered (bfloat16 into the wide row, pass 3 with normal stores): each whole step
  // of exps is stored as Io's unordered loads give it, for scale_blocks_unordered.
  template <bool kUnordered = false>
  static void fused_max_exp(const S* xr, T* yr, int64_t n, RowPrefetch<S>& next, T* block_refs, T& m, double& s) {
    constexpr int64_t kBlock = kRowBlock<T, SumExpVisitor<T>>;
    T run = -INFINITY;
    CompensatedSum sum;  // float64 rows add many block sums
    for (int64_t b = 0, blk = 0; b < n; b += kBlock, ++blk) {
      const int64_t end = std::min(n, b + kBlock);
      const Range range = max_min<true>(xr, b, end, next);
      if (range.max > run) {  // (exp(-inf) = 0 for the first finite block: s is 0 or NaN before it)
        sum.scale(tp::exp_of_difference(run, range.max));
        run = range.max;
      }
      block_refs[blk] = run;
      // Before any finite element the block holds -inf and NaN only: exp(x - lowest) is 0
      // for -inf and keeps NaN, which the sum then carries to the redo.
      const T shift = run > -INFINITY ? run : std::numeric_limits<T>::lowest();
      sum.add(exp_sum<kUnordered>(xr, b, end, shift, range.min - run >= tp::Numerics<T>::kNormalMin, true, next,
                                  [&](int64_t i, typename Vec<T>::R e, int k) { store_k(yr + i, e, k); }));
    }
    m = run;
    s = sum.value();
  }

  // Pass 3 of the fused reload (after fused_max_exp): y = e * f[k] over block k, f[k] =
  // exp(refs[k] - m) / s computed into refs; e may be y itself.
  static void scale_blocks(const T* e, S* yr, int64_t n, T* refs, T m, double s, bool stream, RowPrefetch<S>& next) {
    using V = Vec<T>;
    using R = typename V::R;
    constexpr int64_t kBlock = kRowBlock<T, SumExpVisitor<T>>;
    static_assert(kBlock >= tp::kReloadMinBlock);
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    for (int64_t k = 0; k < blocks; ++k) refs[k] = (T)(tp::exp_of_difference(refs[k], m) / s);
    write_row(yr, n, stream, Reads{{e}}, (const S*)nullptr, [&](int64_t j, int k, int u) {
      if (u == 0) next.step();
      const int64_t blk = j / kBlock;
      R f = V::set1(refs[blk]);
      if ((j + k - 1) / kBlock != blk) {
        // A vector across two blocks: streaming stores peel a head to align y, which
        // shifts the vectors off the block boundaries.
        T lanes[V::W];
        for (int l = 0; l < V::W; ++l) lanes[l] = refs[std::min(blocks - 1, (j + l) / kBlock)];
        f = V::load(lanes);
      }
      return V::mul(load_k<T>(e + j, k, 0), f);
    });
  }

  // scale_blocks for e as fused_max_exp<true> stored it (halves, normal stores): the
  // same steps from each block's start, each stored back through Io's unordered stores
  // (bfloat16: a pair of vectors per store, no narrowing shuffle), the tails in order.
  static void scale_blocks_unordered(const T* e, S* yr, int64_t n, T* refs, T m, double s, RowPrefetch<S>& next) {
    using V = Vec<T>;
    using R = typename V::R;
    constexpr int W = V::W, kStep = kUnroll * W;
    constexpr int64_t kBlock = kRowBlock<T, SumExpVisitor<T>>;
    for (int64_t b = 0, k = 0; b < n; b += kBlock, ++k) {
      const int64_t end = std::min(n, b + kBlock);
      const R f = V::set1((T)(tp::exp_of_difference(refs[k], m) / s));
      int64_t i = b;
      for (; i + kStep <= end; i += kStep) {
        next.step();
        R v[kUnroll];
        for (int u = 0; u < kUnroll; ++u) v[u] = V::mul(V::load(e + i + u * W), f);
        Io<S>::template store_unordered<kUnroll>(yr + i, v);
      }
      for (; i < end; i += W) {
        const int w = (int)std::min<int64_t>(W, end - i);
        store_k(yr + i, V::mul(load_k<T>(e + i, w, 0), f), w);
      }
    }
  }

  // Kernel_api.h's reload_part and reload_part_scale (S = T only).
  static void reload_part(const S* x, S* y, int64_t n, T* refs, T* m, double* s) {
    if constexpr (std::is_same_v<S, T>) {
      RowPrefetch<S> none(nullptr, 0);
      fused_max_exp(x, y, n, none, refs, *m, *s);
    }
  }
  static void reload_part_scale(S* y, int64_t n, T* refs, T m, double s) {
    if constexpr (std::is_same_v<S, T>) {
      RowPrefetch<S> none(nullptr, 0);
      scale_blocks(y, y, n, refs, m, s, false, none);  // in place: normal stores (streaming_stores.h)
    }
  }

  // The maximum and minimum of x[b, end) (a NaN may or may not survive: the sums catch
  // it). Prefetching `kAhead` when the pass also computes exps (fused_max_exp); the
  // plain max pass runs on the hardware prefetchers (loops.h, prefetch_ahead).
  struct Range {
    T max, min;
  };
  template <bool kAhead, class HV = HalfVec>  // (HV: dependent, so Keys is looked up only where kKeys)
  static Range max_min(const S* x, int64_t b, int64_t end, RowPrefetch<S>& next) {
    using V = Vec<T>;
    using R = typename V::R;
    constexpr int W = V::W, kStep = kUnroll * W;
    R M[kUnroll], L[kUnroll];
    for (auto& v : M) v = V::set1(-INFINITY);
    for (auto& v : L) v = V::set1(INFINITY);
    int64_t i = b;
    // A partial head first, so that the loads below do not straddle two cache lines
    // (NumPy's large arrays start 16 bytes past one): the order of a max and a min
    // changes no bit, and this cheap pass runs at the L1's pace, which split loads halve
    // (the reload of float32 4096x4096 on one thread, cold, Zen 4: see the README,
    // "Aligned rows").
    if (const int64_t mis = ((uintptr_t)(x + i) % sizeof(S)) == 0 ? (int64_t)(((uintptr_t)(x + i) / sizeof(S)) % W) : 0) {
      const int k = (int)std::min<int64_t>(W - mis, end - i);
      M[0] = V::max(M[0], load_k<S>(x + i, k, -INFINITY));
      L[0] = V::min(L[0], load_k<S>(x + i, k, INFINITY));
      i += k;
    }
    if constexpr (kKeys) {
      using Keys = typename HV::Keys;
      static_assert(kStep % Keys::N == 0 && Keys::N % W == 0);
      Keys keys(tp::Storage<S>::narrow(-INFINITY).bits, tp::Storage<S>::narrow(INFINITY).bits);
      for (; i + kStep <= end; i += kStep) {
        if (kAhead) prefetch_ahead(x + i);
        next.step();
        for (int j = 0; j < kStep; j += Keys::N) keys.add(reinterpret_cast<const uint16_t*>(x + i + j));
      }
      uint16_t hi[Keys::N], lo[Keys::N];
      keys.out(hi, lo);
      for (int j = 0; j < Keys::N; j += W) {
        M[0] = V::max(M[0], Io<S>::load(reinterpret_cast<const S*>(hi + j)));
        L[0] = V::min(L[0], Io<S>::load(reinterpret_cast<const S*>(lo + j)));
      }
    }
    for (; i + kStep <= end; i += kStep) {  // (kKeys: none left)
      if (kAhead) prefetch_ahead(x + i);
      next.step();
      if constexpr (kPairs) {
        R v[kUnroll];  // (any order: a maximum and a minimum)
        Io<S>::template load_unordered<kUnroll>(x + i, v);
        for (int u = 0; u < kUnroll; ++u) M[u] = V::max(M[u], v[u]), L[u] = V::min(L[u], v[u]);
      } else {
        for (int u = 0; u < kUnroll; ++u) {
          const R v = Io<S>::load(x + i + u * W);
          M[u] = V::max(M[u], v);
          L[u] = V::min(L[u], v);
        }
      }
    }
    for (; i < end; i += W) {
      const int k = (int)std::min<int64_t>(W, end - i);
      M[0] = V::max(M[0], load_k<S>(x + i, k, -INFINITY));
      L[0] = V::min(L[0], load_k<S>(x + i, k, INFINITY));
    }
    for (int u = 1; u < kUnroll; ++u) M[0] = V::max(M[0], M[u]), L[0] = V::min(L[0], L[u]);
    return {V::hmax(M[0]), -V::hmax(V::sub(V::set1(0), L[0]))};
  }

  // sum exp(x - shift) over x[b, end), each vector of exps handed to store(i, e, k) (k
  // lanes from element i). `normal`: every x - shift lies in [kNormalMin, 0] (the common
  // row: no -inf, a range under 87 for float32), so the exp needs no clamp and no care
  // for subnormal results (one row in cache, one core: 4K floats 0.40 -> 0.37 ns per
  // element, 256K floats 0.45 -> 0.42). Otherwise `stored`: store keeps the exps (they
  // must be exact, subnormals included: Exp::nonpositive), else they are only summed
  // (Exp::term).
  // kUnordered: each whole step loaded through Io's unordered loads (its exps handed to
  // store in that order).
  template <bool kUnordered = false, class Store>
  static double exp_sum(const S* x, int64_t b, int64_t end, T shift, bool normal, bool stored, RowPrefetch<S>& next,
                        Store&& store) {
    using V = Vec<T>;
    using R = typename V::R;
    constexpr int W = V::W, kStep = kUnroll * W;
    const R mv = V::set1(shift);
    R Ssum[kUnroll];
    for (auto& v : Ssum) v = V::set1(0);
    int64_t i = b;
    auto body = [&](auto exp) {
      for (; i + kStep <= end; i += kStep) {
        next.step();
        if constexpr (kUnordered) {
          R v[kUnroll];
          Io<S>::template load_unordered<kUnroll>(x + i, v);
          for (int u = 0; u < kUnroll; ++u) {
            const R e = exp(V::sub(v[u], mv));
            store(i + u * W, e, W);
            Ssum[u] = V::add(Ssum[u], e);
          }
        } else {
          for (int u = 0; u < kUnroll; ++u) {
            const R e = exp(V::sub(Io<S>::load(x + i + u * W), mv));
            store(i + u * W, e, W);
            Ssum[u] = V::add(Ssum[u], e);
          }
        }
      }
    };
    if (normal)
      body([](R v) { return Exp<T>::normal_range(v); });
    else if (stored)
      body([](R v) { return Exp<T>::nonpositive(v); });
    else
      body([](R v) { return Exp<T>::term(v); });
    for (; i < end; i += W) {  // the tail, on the general exp
      const int k = (int)std::min<int64_t>(W, end - i);
      const R d = V::sub(load_k<S>(x + i, k, -INFINITY), mv);  // fill: exp(-inf) = 0
      const R e = stored ? Exp<T>::nonpositive(d) : Exp<T>::term(d);
      store(i, e, k);
      Ssum[0] = V::add(Ssum[0], e);
    }
    for (int u = 1; u < kUnroll; ++u) Ssum[0] = V::add(Ssum[0], Ssum[u]);
    return V::hsum_wide(Ssum[0]);
  }

  // A full (k = W) or partial store of k lanes.
  template <class D> static void store_k(D* p, typename Vec<T>::R v, int k) {
    if (k == Vec<T>::W)
      Io<D>::store(p, v);
    else
      Io<D>::store_partial(p, v, k);
  }

  // Rows of at most kShortRowVectors vectors (128 float32 on AVX-512, 64 on AVX2), two at
  // a time, each held in registers through its three passes: no scratch row, no minimum,
  // no prefetch, no block sums. The per-row costs of the general path below (~20 ns a
  // row, against ~17 ns of work in a row of 64 floats) made batches of such rows (the
  // attention of short sequences) 2x slower than ONNX Runtime's (tools/kernel_bench.cpp,
  // AVX-512 on a Zen 4, float32 rows in the L2, ns per element: 16 floats 1.83 -> 0.87,
  // 64 0.59 -> 0.36, 128 0.41 -> 0.30; AVX2 64 0.72 -> 0.51). The same operations in
  // the same order, so the same bits as that path: the maximum (in any order), exp(x - m)
  // summed as exp_sum sums it (whole steps of kUnroll vectors into as many registers, the
  // other vectors into register 0, then the registers into 0), the general exp throughout
  // (on arguments in the normal range it equals the normal-range exp, whose choice the
  // minimum was for), y = e * (1/s) or (x - m) - log(s). Normal stores: rows this short
  // never stream (each streamed row ends in a fence).
  static constexpr int kShortRowVectors = 2 * kUnroll;
  template <int NV, int Steps>
  static void short_rows(const S* x, S* y, int64_t rows, int64_t n, int64_t xs, int64_t ys, bool log, S* lse,
                         uint8_t* redo) {
    using V = Vec<T>;
    using R = typename V::R;
    constexpr int W = V::W;
    static_assert(NV <= kShortRowVectors && Steps * kUnroll <= NV);
    const int last = (int)(n - (int64_t)(NV - 1) * W);  // lanes of the last vector: 1..W
    struct Row {
      R v[NV], e[NV];
      T m;
      double s;
    };
    auto first = [&](const S* xr, Row& a) TP_ALWAYS_INLINE {
      for (int u = 0; u < NV - 1; ++u) a.v[u] = Io<S>::load(xr + u * W);
      a.v[NV - 1] = load_k<S>(xr + (NV - 1) * W, last, -INFINITY);  // exp(-inf - m) = 0
      R M = a.v[0];
      for (int u = 1; u < NV; ++u) M = V::max(M, a.v[u]);
      a.m = V::hmax(M);
      const R mv = V::set1(a.m);
      R sum[kUnroll];
      for (auto& r : sum) r = V::set1(0);
      for (int u = 0; u < NV; ++u) {
        a.e[u] = Exp<T>::nonpositive(V::sub(a.v[u], mv));
        const int reg = u < Steps * kUnroll ? u % kUnroll : 0;
        sum[reg] = V::add(sum[reg], a.e[u]);
      }
      for (int u = 1; u < kUnroll; ++u) sum[0] = V::add(sum[0], sum[u]);
      a.s = V::hsum_wide(sum[0]);
    };
    auto write = [&](int64_t r, const Row& a) TP_ALWAYS_INLINE {
      redo[r] = !(std::isfinite(a.s) && a.s > 0 && std::isfinite(a.m));
      if (redo[r]) return;
      if (!log && lse) lse[r] = tp::Storage<S>::narrow((T)((double)a.m + tp::log_at_least_1(a.s)));
      if (!y) return;  // logsumexp: the lse alone
      S* yr = y + r * ys;
      R out[NV];
      if (log) {
        const R mv = V::set1(a.m), b = V::set1((T)std::log(a.s));
        for (int u = 0; u < NV; ++u) out[u] = V::sub(V::sub(a.v[u], mv), b);
      } else {
        const R c = V::set1((T)(1.0 / a.s));
        for (int u = 0; u < NV; ++u) out[u] = V::mul(a.e[u], c);
      }
      for (int u = 0; u < NV - 1; ++u) Io<S>::store(yr + u * W, out[u]);
      store_k(yr + (NV - 1) * W, out[NV - 1], last);
    };
    // Two rows at a time: a row's chain of dependent steps (maximum, exp, sum, 1/s) is
    // long next to its work (four rows of up to two vectors were no faster).
    int64_t r = 0;
    for (; r + 2 <= rows; r += 2) {
      Row a, b;
      first(x + r * xs, a);
      first(x + (r + 1) * xs, b);
      write(r, a);
      write(r + 1, b);
    }
    if (r < rows) {
      Row a;
      first(x + r * xs, a);
      write(r, a);
    }
  }
  template <int NV>
  static void short_rows_nv(const S* x, S* y, int64_t rows, int64_t n, int64_t xs, int64_t ys, bool log, S* lse,
                            uint8_t* redo) {
    const int64_t steps = n / (kUnroll * Vec<T>::W);  // exp_sum's whole unrolled steps
    if constexpr (NV >= 2 * kUnroll)
      if (steps == 2) return short_rows<NV, 2>(x, y, rows, n, xs, ys, log, lse, redo);
    if constexpr (NV >= kUnroll)
      if (steps == 1) return short_rows<NV, 1>(x, y, rows, n, xs, ys, log, lse, redo);
    return short_rows<NV, 0>(x, y, rows, n, xs, ys, log, lse, redo);
  }
  static void short_rows_any(const S* x, S* y, int64_t rows, int64_t n, int64_t xs, int64_t ys, bool log, S* lse,
                             uint8_t* redo) {
    static_assert(kShortRowVectors == 8);
    switch ((n + Vec<T>::W - 1) / Vec<T>::W) {
      case 1: return short_rows_nv<1>(x, y, rows, n, xs, ys, log, lse, redo);
      case 2: return short_rows_nv<2>(x, y, rows, n, xs, ys, log, lse, redo);
      case 3: return short_rows_nv<3>(x, y, rows, n, xs, ys, log, lse, redo);
      case 4: return short_rows_nv<4>(x, y, rows, n, xs, ys, log, lse, redo);
      case 5: return short_rows_nv<5>(x, y, rows, n, xs, ys, log, lse, redo);
      case 6: return short_rows_nv<6>(x, y, rows, n, xs, ys, log, lse, redo);
      case 7: return short_rows_nv<7>(x, y, rows, n, xs, ys, log, lse, redo);
      default: return short_rows_nv<8>(x, y, rows, n, xs, ys, log, lse, redo);
    }
  }

  // The three-pass reload over a block of contiguous rows in one call (kernel_api.h). For
  // short rows the separate passes' fixed costs (a call, block setup, folds, the
  // driver's bookkeeping) outweigh the work, so the passes are written out here once,
  // constants hoisted out of the row loop. Sums fold into double every block, as in
  // exp_store_sum (plainly: a short row has one block).
  static void rows_reload(const S* x, S* y, int64_t rows, int64_t n, int64_t xs, int64_t ys, bool log, bool stream, S* lse,
                          uint8_t* redo) {
    using V = Vec<T>;
    if (n >= 1 && n <= kShortRowVectors * V::W) return short_rows_any(x, y, rows, n, xs, ys, log, lse, redo);
    // exp(x - m) goes to a scratch row on the stack when the row fits it (the short rows
    // this path is for): y is then written once, by pass 3, with streaming stores where
    // the output is out of cache, so y costs one write and no read-for-ownership. Longer
    // rows store exp in y (float, double) or, for halves, where a 16-bit y would round
    // exp before pass 3 rounds again, in a float32 row of the thread's own (wide_row)
    // up to kWideRowElements, and beyond recompute it in pass 3 (kernel_api.h,
    // rows_reload). y null: logsumexp, each row's lse alone (passes 1 and 2).
    constexpr int64_t kScratch = tp::kReloadScratchBytes / sizeof(T);
    T scratch[kScratch];
    const bool buffered = n <= kScratch;
    using R = typename V::R;
    constexpr int64_t kBlock = kRowBlock<T, SumExpVisitor<T>>;
    T* wide = nullptr;
    if constexpr (!kStores) wide = y && !buffered && !log && n <= tp::kWideRowElements ? wide_row(n) : nullptr;
    // Longer rows of softmax fuse passes 1 and 2 block by block (see fused_max_exp),
    // storing exp in y or the wide row: one factor per block for pass 3.
    const bool fused = y && (kStores || wide) && !buffered && !log;
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    constexpr int64_t kStackBlocks = 256;
    T block_refs_stack[kStackBlocks];
    std::vector<T> block_refs_heap(fused && blocks > kStackBlocks ? blocks : 0);
    T* block_refs = blocks > kStackBlocks ? block_refs_heap.data() : block_refs_stack;
    for (int64_t r = 0; r < rows; ++r) {
      const S* xr = x + r * xs;
      S* yr = y ? y + r * ys : nullptr;  // (logsumexp: no y)
      // The next row, fetched while the passes compute on this one in cache: otherwise
      // memory idles through passes 2 and 3 and pass 1 of every row waits on it.
      RowPrefetch<S> next(r + 1 < rows ? xr + xs : nullptr, n);
      T m;
      double s;
      if (fused) {
        T* e = nullptr;  // where pass 2 keeps exp: y itself (S = T) or the wide row
        if constexpr (kStores) e = yr;
        else e = wide;
        const tp::Reuse reuse = kStores ? tp::Reuse::kInPlace : tp::Reuse::kFinalOutput;
        const bool stream_y = tp::use_streaming_stores(stream, reuse);
        // bfloat16 with normal stores keeps the wide row in Io's unordered order (in
        // cache, 1 thread, Zen 4: see the README, "Half precision").
        const bool unordered = kPairs && !stream_y;
        if constexpr (kPairs) {  // (instantiated for bfloat16 only)
          if (unordered) fused_max_exp<true>(xr, e, n, next, block_refs, m, s);
        }
        if (!unordered) fused_max_exp(xr, e, n, next, block_refs, m, s);
        redo[r] = !(std::isfinite(s) && s > 0 && std::isfinite(m));
        if (redo[r]) {
          if ((const void*)e == (const void*)xr) redo[r] = 2;  // (in place: x is gone)
          continue;
        }
        if constexpr (kPairs) {
          if (unordered) scale_blocks_unordered(e, yr, n, block_refs, m, s, next);
        }
        if (!unordered) scale_blocks(e, yr, n, block_refs, m, s, stream_y, next);
        if (lse) lse[r] = tp::Storage<S>::narrow((T)((double)m + tp::log_at_least_1(s)));
        continue;
      }
      // Pass 1: the maximum and minimum; pass 2: exp(x - m), kept in the scratch row
      // (softmax) and summed, block by block.
      // The first row has had no RowPrefetch: a short row read cold (its pages and lines
      // not cached) waits on each line and page in turn unless the pass prefetches
      // ahead (Xeon VM, one float32 row of 4096 read cold, the sets in shuffled order:
      // the reload 7.9 us against two_pass's 5.7, whose first pass prefetches).
      const Range range = r == 0 ? max_min<true>(xr, 0, n, next) : max_min<false>(xr, 0, n, next);
      m = range.max;
      const R mv = V::set1(m);
      const bool normal = range.min - m >= tp::Numerics<T>::kNormalMin;
      CompensatedSum sum;
      const bool stored = buffered && !log && y;
      for (int64_t b = 0; b < n; b += kBlock)
        sum.add(exp_sum(xr, b, std::min(n, b + kBlock), m, normal, stored, next, [&](int64_t i, R e, int k) {
          if (stored) store_k(scratch + i, e, k);
        }));
      s = sum.value();
      redo[r] = !(std::isfinite(s) && s > 0 && std::isfinite(m));
      if (redo[r]) continue;
      if (!y) {
        if (lse) lse[r] = tp::Storage<S>::narrow((T)((double)m + tp::log_at_least_1(s)));
        continue;
      }
      // Pass 3: y *= 1/s (softmax, in place on what pass 2 wrote), y = (x - m) - log s.
      if (log) {
        const R b = V::set1((T)std::log(s));
        write_row(yr, n, tp::use_streaming_stores(stream, tp::Reuse::kFinalOutput), Reads{{xr}}, (const S*)nullptr,
                  [&](int64_t j, int k, int u) {
                    if (u == 0) next.step();
                    return V::sub(V::sub(load_k<S>(xr + j, k, 0), mv), b);
                  });
      } else if (buffered) {  // y = scratch * (1/s), rounded to S once
        const R c = V::set1((T)(1.0 / s));
        write_row(yr, n, tp::use_streaming_stores(stream, tp::Reuse::kFinalOutput), Reads{{scratch}}, (const S*)nullptr,
                  [&](int64_t j, int k, int u) {
                    if (u == 0) next.step();
                    return V::mul(load_k<T>(scratch + j, k, 0), c);
                  });
      } else {  // halves, longer rows: y = exp(x - m) * (1/s), recomputed from x
        const R c = V::set1((T)(1.0 / s));
        write_row(yr, n, tp::use_streaming_stores(stream, tp::Reuse::kFinalOutput), Reads{{xr}}, (const S*)nullptr,
                  [&](int64_t j, int k, int) { return V::mul(Exp<T>::nonpositive(V::sub(load_k<S>(xr + j, k, 0), mv)), c); });
      }
      if (!log && lse) lse[r] = tp::Storage<S>::narrow((T)((double)m + tp::log_at_least_1(s)));
    }
  }

  static constexpr tp::Passes<S> table() {
    return {two_pass_sum, two_pass_write, max,   sumexp, online, exp_store_sum, exp_scale, scale, log_softmax_write,
            Panel ? nullptr : rows_reload, Panel ? nullptr : exp_store_sum_wide,
            Panel || !kStores ? nullptr : reload_part, Panel || !kStores ? nullptr : reload_part_scale,
            Panel ? max_to_scratch : nullptr, Panel ? scale_scratch : nullptr,
            Panel ? log_softmax_write_scratch : nullptr};
  }
};


}  // namespace

// (SoftmaxKernels::check_lanes) Loops without branches (& rather than &&), which the
// compiler vectorizes for the ISA.
template <class T> int check_lanes(const T* max, const double* sum, int lanes, T* inv_sum, double* log_sum, bool* redo) {
  auto accepted = [&](int l) -> bool {
    const bool max_finite = std::fabs(max[l]) <= std::numeric_limits<T>::max();
    if (!sum) return max_finite;
    const double s = sum[l];
    return (std::fabs(s) <= std::numeric_limits<double>::max()) & (s > 0) & max_finite;
  };
  int rejected = 0;
  for (int l = 0; l < lanes; ++l) rejected += !accepted(l);
  for (int l = 0; l < lanes && rejected; ++l) redo[l] = !accepted(l);
  assert(sum || (!inv_sum && !log_sum));  // the derived values need the sums
  if (inv_sum)
    for (int l = 0; l < lanes; ++l) inv_sum[l] = (T)(1.0 / sum[l]);
  if (log_sum) {
    using V = Vec<double>;
    int l = 0;
    for (; l + V::W <= lanes; l += V::W) V::store(log_sum + l, log_at_least_1_vec(V::load(sum + l)));
    if (l < lanes) V::store_partial(log_sum + l, log_at_least_1_vec(V::load_partial(sum + l, lanes - l, 1.0)), lanes - l);
  }
  return rejected;
}

template <class S> tp::SoftmaxKernels<S> softmax_kernels() {
  using T = tp::Compute<S>;
  return {PassKernels<S, false>::table(), PassKernels<S, true>::table(), PassKernels<T, true>::table(), extexp_one<T>,
          check_lanes<T>};
}
template tp::SoftmaxKernels<float> softmax_kernels<float>();
template tp::SoftmaxKernels<double> softmax_kernels<double>();
template tp::SoftmaxKernels<tp::f16> softmax_kernels<tp::f16>();
template tp::SoftmaxKernels<tp::bf16> softmax_kernels<tp::bf16>();

}  // namespace TP_NS
