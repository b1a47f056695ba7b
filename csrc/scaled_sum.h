// Sums kept with their own power-of-two exponent, and how partial sums merge: the
// kernels fold per-block sums into these, and the driver merges the parts of a row
// split over threads. Header-only, ISA-independent.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace tp {

// A sum of m_i * 2^e_i kept as (S + C) * 2^E: E an integer held in a double, C the
// compensation of a Neumaier sum (so float64 rows sum as accurately as float32 ones).
struct ScaledSum {
  double S, E, C;
  double value() const { return S + C; }
};
// The empty sum: merging into it takes the other side's exponent.
constexpr ScaledSum kEmptyScaledSum{0.0, -1e300, 0.0};

// 2^k for integer k <= 0 as a double, built from its bits; 0 below the normal range.
inline double pow2d(double k) {
  if (k < -1022) return 0.0;
  uint64_t bits = (uint64_t)(int64_t)(k + 1023) << 52;
  double r;
  std::memcpy(&r, &bits, sizeof r);
  return r;
}

// acc += S * 2^E. Sums merge in any order: this is what lets a row be split across
// threads with no second round for the maximum. Scaling by powers of two is exact, so
// the compensated (Neumaier) sum stays exact up to its final rounding.
inline void scaled_sum_merge(ScaledSum& acc, double S, double E) {
  if (S == 0) return;            // empty part: nothing to add (its E may be a sentinel)
  if (!(S == S) || !(E == E)) {  // NaN poisons the sum; the driver classifies the row
    acc.S = NAN;
    return;
  }
  if (acc.S == 0 && acc.C == 0) {
    acc = ScaledSum{S, E, 0.0};
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

// (m, s) += (m2, s2) for online sums s = sum exp(x - m): the parts of a row split over
// threads, each with its own running maximum.
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

}  // namespace tp
