// The kernels' exp, in extended form: exp(x) = m * 2^e with m in about [0.70, 1.42] and
// e an integer held in T, so a sum of exponentials can keep its own exponent and never
// overflow. Range reduction (Cody-Waite), the polynomial on the reduced interval, and
// the scaling by 2^e that turns the pair back into a T. Per ISA (namespace TP_NS).
#pragma once

#include "../kernel_api.h"
#include "simd/vec.h"

namespace TP_NS {

// The constants of the range reduction and the polynomial.
// With a fused multiply-add (AVX2, AVX-512, NEON): ln2 = F1 + F2, F1 = ln2 rounded to
// T; fma(e, -F1, x) rounds once, so t = x - e*ln2 is exact to ~ulp(t).
// Without one (the scalar baseline): ln2 = L1 + L2 + L3, where L1 and L2 have so few
// significant bits that e*L1 and e*L2 are exact for every e of the accurate domain
// (Numerics<T>::kAccurate).
// The polynomial is 1 + t*q(t), q's coefficients kC below, fitted by
// tools/fit_exp_poly.py (minimax relative error) for |t| <= ln2/2.
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

// Scaling by 2^k, written once on top of each ISA's primitives.
// AVX-512 has vscalef; elsewhere 2^k is built from its bits (pow2), which covers
// only normal powers, so outputs take two steps to round correctly into subnormals.
template <class T> struct Pow2Scale {
  using V = Vec<T>;
  using R = typename V::R;
#if defined(TP_ISA_AVX512)
  static R sum_factor(R k) { return V::scalef(V::set1(T(1)), k); }
  static R out(R v, R k) { return V::scalef(v, k); }
  static R out_normal(R v, R k) { return V::scalef(v, k); }
#else
  static constexpr T kBias = (T)FloatBits<T>::kBias;
  // 2^k for the terms of a sum (k <= 0): terms scaled below 2^(1-bias) are negligible
  // next to the leading term (about 1), so they may become 0: k is clamped at -bias,
  // and pow2(-bias) is 0.
  static R sum_factor(R k) { return V::pow2(V::max(k, V::set1(-kBias))); }
  // Outputs (v in about [0.25, 4], k <= 0): v * 2^k rounded once, subnormals included.
  // Usually one normal power of two does it; when some lane's result may be subnormal,
  // split k = k1 + k2 with both powers normal, so v * 2^k1 is exact and the final
  // product rounds once. k below 2*(1-bias) only gives 0 anyway.
  static R out(R v, R k) {
    if (!V::any_below(k, 3 - kBias)) return V::mul(v, V::pow2(k));
    R k1 = V::max(k, V::set1(3 - kBias));
    R k2 = V::max(V::sub(k, k1), V::set1(1 - kBias));
    return V::mul(V::mul(v, V::pow2(k1)), V::pow2(k2));
  }
  // Outputs known to be normal (v * 2^k >= the smallest normal): one power of two.
  static R out_normal(R v, R k) { return V::mul(v, V::pow2(k)); }
#endif
};

template <class T> struct Exp {
  using V = Vec<T>;
  using R = typename V::R;
  using C = ExpConst<T>;

  // exp(x) = m * 2^e with e = round(x*log2(e)) and m = p(x - e*ln2) in [0.70, 1.42].
  static inline void extended(R x, R& m, R& e) {
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
  // Results below the smallest normal go through subnormal arithmetic, which Intel's
  // cores run as a microcode assist (~85 ns a vector: vscalefps or a multiply whose
  // result is subnormal, or rounds to 0 from just below): a masked logit (-inf,
  // -1e4, finfo.min) in every vector made the max-first softmax 11x slower (Xeon VM,
  // float32 rows of 4096 with every other entry -inf, 0.62 -> 6.95 ns per element). So
  // lanes below kNormalMin are computed at it, and those whose exp rounds to 0 (below
  // kExpMin) set to 0 by a mask; only a vector with a lane in between, a true subnormal
  // result, takes the exact scaling and its assist. max(bound, x) returns x when x is
  // NaN, so NaN still propagates (and is never below a bound).
  static inline R nonpositive(R x) {
    R r = normal_range(V::max(V::set1(tp::Numerics<T>::kNormalMin), x));
    if (V::any_below(x, tp::Numerics<T>::kNormalMin)) r = below_normal(x, r);
    return r;
  }
  static R below_normal(R x, R r) {
    constexpr T kZero = tp::Numerics<T>::kExpMin;
    if (V::any_below(V::zero_below(x, x, kZero), tp::Numerics<T>::kNormalMin)) {  // a subnormal result
      R m, e;
      extended(V::max(V::set1(kZero), x), m, e);
      r = Pow2Scale<T>::out(m, e);
    }
    return V::zero_below(r, x, kZero);
  }
  // exp(x) for x <= 0 as a term of a sum that holds exp(0) = 1 (x - max): results below
  // the normal range are 0, by a mask and without a branch. Each such term is below
  // 2^-126, so n of them move a sum >= 1 by less than n * 2^-126 (float64: 2^-1022), far
  // under its rounding; only values written out need nonpositive's exact subnormals.
  // Logits of a wide range lose the assists (256 float32 rows of 4096, standard
  // deviation 25-250, log_softmax by the reload: 7.0-7.7 -> 0.57-0.61 ms).
  static inline R term(R x) {
    constexpr T kMin = tp::Numerics<T>::kNormalMin;
    return V::zero_below(normal_range(V::max(V::set1(kMin), x)), x, kMin);
  }
  // exp(x) for x in [kNormalMin, 0] (not NaN-safe beyond propagating it): the result
  // is normal, so there is nothing to clamp and one power of two scales it.
  static inline R normal_range(R x) {
    R m, e;
    extended(x, m, e);
    return Pow2Scale<T>::out_normal(m, e);
  }
};

// log(max(s, 1)) in double, vectorized (the max-first algorithms' log of a row's sum
// s >= 1, per panel lane: SoftmaxKernels::check_lanes; std::log per lane cost more than
// a short axis's passes). s = m * 2^e with m in [1, 2), halved where above ~sqrt(2)
// (a rounded difference: no select), so u = m - 1 (exact) is in [-0.30, 0.42];
// log(m) = 2 atanh(t), t = u / (2 + u), |t| <= 0.1716, written u - t (u - R) with
// R = sum 2 t^2k / (2k + 1) through t^20 (the next term is below 2^-58 relative): the
// rounding errors fall on the correction t (u - R), not on u. e ln2 in two parts, the
// first exact. s = 1 gives exactly 0; s NaN gives 0 (max); +inf unspecified. Within
// 1.5 ulp of the exact log (tests/native/kernel_check.cpp).
inline Vec<double>::R log_at_least_1_vec(Vec<double>::R s) {
  using V = Vec<double>;
  const V::R one = V::set1(1.0);
  V::R e;
  V::R m = V::mant_exp(V::max(s, one), e);
  const V::R up = V::round(V::sub(m, V::set1(0.91421356237309505)));  // 1 for m > sqrt(2), else 0
  m = V::mul(m, V::fma(up, V::set1(-0.5), one));
  e = V::add(e, up);
  const V::R u = V::sub(m, one);
  const V::R t = V::div(u, V::add(u, V::set1(2.0)));
  const V::R z = V::mul(t, t);
  V::R r = V::set1(2.0 / 21);
  for (int k = 19; k >= 3; k -= 2) r = V::fma(r, z, V::set1(2.0 / k));
  r = V::mul(r, z);
  const V::R log_m = V::sub(u, V::mul(t, V::sub(u, r)));
  constexpr double kLn2Hi = 0.693147180369123816490;  // 0x3FE62E42FEE00000: e * it is exact
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  return V::fma(e, V::set1(kLn2Hi), V::fma(e, V::set1(kLn2Lo), log_m));
}

}  // namespace TP_NS
