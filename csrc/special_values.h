// Rows of special values (NaN, +inf, only -inf): how they are recognised and what
// they give. Only rows whose fast path failed are scanned. ISA-independent.
#pragma once

#include <cstdint>
#include <limits>

#include "half.h"

namespace tp {

// Per-lane special values: what a row holds decides its result, as in torch. A row
// holding a NaN, or +inf, or only -inf gives NaN throughout for softmax and log_softmax;
// its logsumexp is NaN, +inf and -inf respectively (NaN wins over +inf).
enum class Special { kNone, kNaN, kPosInf, kAllNegInf };

template <class T> struct LaneScan {  // (no initialisers: arrays of them are per call, filled where read)
  Special kind;
  T max;
};
// Scalar scan of one lane; only rows whose fast path failed come here.
template <class S, class T = Compute<S>> LaneScan<T> scan_lane(const S* x, int64_t n, int64_t sx) {
  bool nan = false, posinf = false;
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    const T v = Storage<S>::widen(x[j * sx]);
    if (v != v)
      nan = true;
    else if (v > m)
      m = v;
  }
  posinf = m == std::numeric_limits<T>::infinity();
  if (nan) return {Special::kNaN, m};
  if (posinf) return {Special::kPosInf, m};
  if (m == -std::numeric_limits<T>::infinity()) return {Special::kAllNegInf, m};
  return {Special::kNone, m};
}

template <class T> constexpr T kNaN = std::numeric_limits<T>::quiet_NaN();

// The logsumexp of a special row (see Special).
template <class T> T special_lse(Special s) {
  switch (s) {
    case Special::kNaN: return kNaN<T>;
    case Special::kPosInf: return std::numeric_limits<T>::infinity();
    default: return -std::numeric_limits<T>::infinity();
  }
}

}  // namespace tp
