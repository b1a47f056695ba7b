// The row's logsumexp from what the passes computed, in the forms the last pass needs:
// log(sum) relative to the maximum, and lse split into two floats for log_softmax.
// ISA-independent, double precision.
#pragma once

#include <cmath>

#include "scaled_sum.h"

namespace tp {

// hi + lo = base + logs in twice T's precision (a two-sum, then hi rounded to T), for
// log_softmax's (x - hi) - lo: no loss when |lse| is large. hi >= base, as rounding is
// monotonic and base is a T; where logs is below half an ulp of base, hi = base and
// lo = logs >= 0, so the result stays <= 0 (and exactly 0 when logs is).
template <class T> inline void split_sum(double base, double logs, T& hi, T& lo) {
  const double s = base + logs, bb = s - base;
  const double err = (base - (s - bb)) + (logs - bb);
  hi = (T)s;
  lo = (T)((s - (double)hi) + err);
}
// log(s) for a sum s >= 1 up to its rounding (the max-first paths: exp(0) = 1 is in it).
inline double log_at_least_1(double s) { return s > 1 ? std::log(s) : 0.0; }
// log(sum_i exp(x_i - M)) >= 0 for a row whose pass 1 gave the ScaledSum p (the sum of
// m_i * 2^e_i) and the maximum M, (mM, eM) being M's own pair as the kernel computed
// it; the row's lse is M + this. The other terms are counted relative to M's own,
// r = p / (mM * 2^eM) - 1, so M's term is exactly 1 whatever the polynomial's error on
// it: a row that M dominates (every other term below half an ulp of it) gives r = 0,
// log_softmax exactly 0 at its maximum and logsumexp exactly M. Sums of terms >= 0
// round monotonically, so r >= 0 up to the last bits of the compensated sum; clamping
// keeps log_softmax <= 0 and logsumexp >= max without exception. r is then rescaled by
// mM / exp(M - eM ln2) (exp in double): the others' terms relative to exp(M) itself,
// so the polynomial's error on the one term M does not enter the result (it would
// otherwise stand alone, where the others' errors average out).
inline double log_sum_rel_max(const ScaledSum& p, double M, double mM, double eM) {
  const double r = std::ldexp(p.value(), (int)(p.E - eM)) / mM - 1;
  if (!(r > 0)) return 0.0;
  constexpr double kLn2Hi = 0x1.62e42fefa39efp-1;  // ln2 rounded to double
  constexpr double kLn2Lo = 0x1.abc9e3b39803fp-56;  // ln2 - kLn2Hi
  const double a = eM * kLn2Hi;                     // |eM| < 2^21: M - eM ln2 to ~2^-100
  const double t = ((M - a) - std::fma(eM, kLn2Hi, -a)) - eM * kLn2Lo;
  return std::log1p(r * (mM / std::exp(t)));
}

}  // namespace tp
