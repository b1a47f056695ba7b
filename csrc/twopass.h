// The interface between the per-ISA kernels (kernels.cpp, compiled once per ISA) and the
// ISA-independent driver (driver.cpp: algorithms, special values, threads).
//
// Kernels see only groups of rows. A group is `lanes` independent rows of `n` elements;
// element j of lane l is x[l + j*sx] (and y[l + j*sy]). Two shapes occur:
//   - a contiguous row: lanes = 1, sx = sy = 1, vectorised along the row;
//   - a panel of a non-last axis: lanes <= kMaxLanes contiguous lanes, vectorised across
//     lanes, stepping sx / sy elements along the softmax axis.
// Every primitive is one pass over memory; per-lane parameters and results are arrays
// of `lanes` entries. Sums come back as (sum, exponent) in double: the partial sums are
// folded into double every few thousand elements, so the normaliser of a long row is
// accurate to about one float32 ulp (see ALGORITHMS.md, "careful summation").
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace tp {

constexpr int kMaxLanes = 64;  // 4 vectors of 16 floats: one panel call

template <class T> struct Group {
  const T* x;
  T* y;
  int64_t n;
  int64_t sx, sy;
  int lanes;
};

// A sum of m_i * 2^e_i kept as (S + C) * 2^E: E an integer held in a double, C the
// compensation of a Neumaier sum (so float64 rows sum as accurately as float32 ones).
struct Pair {
  double S, E, C;
  double value() const { return S + C; }
};

// 2^k for integer k <= 0 as a double, built from its bits; 0 below the normal range.
inline double pow2d(double k) {
  if (k < -1022) return 0.0;
  uint64_t bits = (uint64_t)(int64_t)(k + 1023) << 52;
  double r;
  std::memcpy(&r, &bits, sizeof r);
  return r;
}

// acc += S * 2^E. Pairs merge in any order: this is what lets a row be split across
// threads with no second round for the maximum. Scaling by powers of two is exact, so
// the compensated (Neumaier) sum stays exact up to its final rounding.
inline void pair_merge(Pair& acc, double S, double E) {
  if (S == 0) return;            // empty part: nothing to add (its E may be a sentinel)
  if (!(S == S) || !(E == E)) {  // NaN poisons the sum; the driver classifies the row
    acc.S = NAN;
    return;
  }
  if (acc.S == 0 && acc.C == 0) {
    acc = Pair{S, E, 0.0};
    return;
  }
  if (E > acc.E) {  // rescale the accumulator to the larger exponent
    const double f = pow2d(acc.E - E);
    acc.S *= f;
    acc.C *= f;
    acc.E = E;
  } else {
    S *= pow2d(E - acc.E);
  }
  const double t = acc.S + S;
  acc.C += std::fabs(acc.S) >= std::fabs(S) ? (acc.S - t) + S : (S - t) + acc.S;
  acc.S = t;
}

// (m, s) += (m2, s2) for online sums s = sum exp(x - m).
inline void online_merge(double& m, double& s, double m2, double s2) {
  if (!(s2 == s2) || !(m2 == m2)) {
    s = NAN;
    return;
  }
  if (s2 == 0) return;
  if (s == 0) {
    m = m2;
    s = s2;
    return;
  }
  const double M = std::max(m, m2);
  s = s * std::exp(m - M) + s2 * std::exp(m2 - M);
  m = M;
}

template <class T> struct Prims {
  // Pass 1 of the two-pass algorithm: sum of exp(x - shift) as a pair, per lane, and
  // the maximum of x - shift (one vector max per vector: free while pass 1 waits on
  // memory; the driver measures the sum relative to it, see driver.cpp). x below
  // shift - Numerics<T>::kAccurate is treated as that bound.
  void (*pair_sum)(const Group<T>& g, const T* shift, Pair* out, T* max);
  // Pass 2: y = p(x - shift) * scale * 2^(e(x - shift) - E).
  void (*pair_write)(const Group<T>& g, const T* shift, const T* scale, const T* E, bool stream);
  // Maximum per lane (NaN may or may not propagate: later passes detect it).
  void (*max)(const Group<T>& g, T* m);
  // Sum of exp(x - m) per lane.
  void (*sumexp)(const Group<T>& g, const T* m, double* s);
  // Online pass: running maximum m and sum s of exp(x - m) per lane.
  void (*online)(const Group<T>& g, double* m, double* s);
  // y = exp(x - m), returning the sum of y per lane (three-pass reload, pass 2).
  void (*exp_store_sum)(const Group<T>& g, const T* m, double* s, bool stream);
  // y = exp(x - m) * c (three-pass recompute and online, last pass).
  void (*exp_scale)(const Group<T>& g, const T* m, const T* c, bool stream);
  // y = x * c (three-pass reload, pass 3; x is the y of pass 2).
  void (*scale)(const Group<T>& g, const T* c, bool stream);
  // y = (x - hi) - lo (log_softmax's last pass, hi the maximum, lo = log(sum exp(x - hi)): no exp).
  void (*sub2)(const Group<T>& g, const T* hi, const T* lo, bool stream);
  // Rows only (null in the panel table): the three-pass reload over `rows` contiguous
  // rows of n elements (row r at x + r*xs, y + r*ys) in one call, softmax (log false;
  // lse[r] = the row's logsumexp when lse is not null) or log_softmax (log true). The
  // arithmetic of max, exp_store_sum and scale (or max, sumexp and sub2) row by row
  // (the per-block double sums are added plainly, without compensation), without a
  // call and the driver's bookkeeping per row: for rows of 64 floats those cost as
  // much as the work. A row whose maximum or sum is not finite (NaN, +inf, all -inf)
  // gets redo[r] = 1 and an unspecified output, for the driver to redo; otherwise
  // redo[r] = 0.
  void (*rows_reload)(const T* x, T* y, int64_t rows, int64_t n, int64_t xs, int64_t ys, bool log, bool stream, T* lse,
                      uint8_t* redo);
};

template <class T> struct PrimPair {
  Prims<T> row, panel;
  // exp(x) = m * 2^e, the pair of one element exactly as pair_sum's loop computes it
  // (same instructions, lane 0 of a broadcast vector).
  void (*extexp)(T x, T* m, T* e);
};

// Row helpers of the fused cross-entropy (cross_entropy.cpp; docs/cross_entropy.md).
template <class T> struct CeRow {
  // y = cap * tanh(x / cap): the soft-capped logits.
  void (*softcap)(const T* x, T* y, int64_t n, T cap);
  // sum_j x_j * w_j, or sum_j x_j when w is null (the label-smoothing term).
  double (*dot)(const T* x, const T* w, int64_t n);
  // y_j = (a * p_j - c * w_j) * (1 - (xc_j * inv_cap)^2): the gradient from the softmax
  // p; w null means w_j = 1, xc null means no soft-cap; `stream`: non-temporal stores.
  void (*finish)(const T* p, T* y, const T* xc, const T* w, int64_t n, T a, T c, T inv_cap, bool stream);
};

struct KernelTable {
  const char* isa;
  int lanes_f32, lanes_f64;  // lanes of one panel call
  PrimPair<float> f32;
  PrimPair<double> f64;
  CeRow<float> ce_f32;
  CeRow<double> ce_f64;
  // bfloat16 rows of the cross-entropy, widened to float32 and narrowed back (RNE).
  void (*bf16_to_f32)(const uint16_t* a, float* y, int64_t n);
  void (*f32_to_bf16)(const float* a, uint16_t* y, int64_t n);
};

// Domain of the extended-exponent kernels, per element type. Inside it the range
// reduction x - e*ln2 is exact enough for ~1 ulp; rows whose maximum lies outside are
// redone by the driver after subtracting the maximum.
template <class T> struct Numerics;
template <> struct Numerics<float> {
  static constexpr float kAccurate = 4096.0f;  // |e| < 2^13: e * ln2 parts exact
  static constexpr float kMargin = 128.0f;     // exp(-128) < float's smallest subnormal / 2
  static constexpr float kExpMin = -110.0f;    // exp(x) rounds to 0 below this
  static constexpr float kNormalMin = -87.0f;  // exp(x) is normal (>= 2^-126) above this
};
template <> struct Numerics<double> {
  static constexpr double kAccurate = 524288.0;  // |e| < 2^20
  static constexpr double kMargin = 1024.0;
  static constexpr double kExpMin = -760.0;
  static constexpr double kNormalMin = -708.0;
};

}  // namespace tp

namespace tp_scalar { const tp::KernelTable& table(); }
namespace tp_avx2 { const tp::KernelTable& table(); }
namespace tp_avx512 { const tp::KernelTable& table(); }
namespace tp_neon { const tp::KernelTable& table(); }
