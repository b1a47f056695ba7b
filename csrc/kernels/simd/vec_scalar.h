// Vec for the portable baseline (TP_ISA_SCALAR). Included by vec.h only.
#pragma once

#include <cmath>

#include "../../half.h"
#include "vec.h"

namespace TP_NS {

// Width-1 "vector": the portable baseline. No FMA instruction is assumed (baseline
// x86-64 has none), so fma is a multiply and an add; the kernels' range reduction
// is exact without fusing (three-constant Cody-Waite).
template <class T> struct Vec {
  using R = T;
  using B = FloatBits<T>;
  static constexpr int W = 1;
  static R set1(T a) { return a; }
  static R load(const T* p) { return *p; }
  static R load_partial(const T* p, int n, T fill) { return n > 0 ? *p : fill; }
  static void store(T* p, R v) { *p = v; }
  static void store_partial(T* p, R v, int n) { if (n > 0) *p = v; }
  static void stream(T* p, R v) { *p = v; }
  static R add(R a, R b) { return a + b; }
  static R sub(R a, R b) { return a - b; }
  static R mul(R a, R b) { return a * b; }
  static R div(R a, R b) { return a / b; }
  static R fma(R a, R b, R c) { return a * b + c; }
  static R max(R a, R b) { return a > b ? a : b; }
  static R min(R a, R b) { return a < b ? a : b; }
  static R round(R a) {
    // Valid for |a| < 2^(mant-1); larger values only occur on rows the caller redoes.
    // Without -ffast-math the compiler may not fold (a + M) - M.
    return (a + B::kRoundMagic) - B::kRoundMagic;
  }
  // 2^k for integer-valued k in [-bias, bias]; k = -bias gives exactly 0.
  static R pow2(R k) {
    T biased = k + B::kPow2Magic;
    typename B::U bits;
    std::memcpy(&bits, &biased, sizeof bits);
    bits <<= B::kMantBits;
    T r;
    std::memcpy(&r, &bits, sizeof r);
    return r;
  }
  // x = m * 2^e with m in [1, 2), for positive normal x (others: unspecified).
  static R mant_exp(R x, R& e) {
    int k;
    const T m = std::frexp(x, &k);  // [0.5, 1)
    e = (T)(k - 1);
    return m * 2;
  }
  static bool any_below(R a, T b) { return a < b; }
  static R zero_below(R r, R x, T b) { return x < b ? T(0) : r; }
  static T hmax(R a) { return a; }
  static double hsum_wide(R a) { return (double)a; }
  static void sfence() {}
};

// float16/bfloat16 storage of one element, converted by half.h's scalar code.
struct HalfVec {
  using H = uint16_t;
  using R = float;
  static H load(const uint16_t* p) { return *p; }
  static void store(uint16_t* p, H h) { *p = h; }
  static void stream(uint16_t* p, H h) { *p = h; }
  static R widen_f16(H h) { return tp::f16_to_float(h); }
  static H narrow_f16(R v) { return tp::float_to_f16(v); }
  static R widen_bf16(H h) { return tp::bf16_to_float(h); }
  static H narrow_bf16(R v) { return tp::float_to_bf16(v); }
};

}  // namespace TP_NS
