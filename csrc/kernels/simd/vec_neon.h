// Vec for AArch64 Advanced SIMD (TP_ISA_NEON). Included by vec.h only.
#pragma once

#include <arm_neon.h>

#include "vec.h"

namespace TP_NS {

// AArch64 Advanced SIMD. Tails go through a small buffer (NEON has no masked loads);
// max/min follow the x86 convention the kernels assume (b when either is NaN).
template <> struct Vec<float> {
  using T = float;
  using R = float32x4_t;
  using B = FloatBits<T>;
  static constexpr int W = 4;
  static R set1(T a) { return vdupq_n_f32(a); }
  static R load(const T* p) { return vld1q_f32(p); }
  static R load_partial(const T* p, int n, T fill) {
    T b[W] = {fill, fill, fill, fill};
    for (int i = 0; i < n; ++i) b[i] = p[i];
    return vld1q_f32(b);
  }
  static void store(T* p, R v) { vst1q_f32(p, v); }
  static void store_partial(T* p, R v, int n) {
    T b[W];
    vst1q_f32(b, v);
    for (int i = 0; i < n; ++i) p[i] = b[i];
  }
  static void stream(T* p, R v) { vst1q_f32(p, v); }
  static R add(R a, R b) { return vaddq_f32(a, b); }
  static R sub(R a, R b) { return vsubq_f32(a, b); }
  static R mul(R a, R b) { return vmulq_f32(a, b); }
  static R div(R a, R b) { return vdivq_f32(a, b); }
  static R fma(R a, R b, R c) { return vfmaq_f32(c, a, b); }
  static R max(R a, R b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }
  static R min(R a, R b) { return vbslq_f32(vcltq_f32(a, b), a, b); }
  static R round(R a) { return vrndnq_f32(a); }
  static R pow2(R k) {
    uint32x4_t bits = vreinterpretq_u32_f32(vaddq_f32(k, set1(B::kPow2Magic)));
    return vreinterpretq_f32_u32(vshlq_n_u32(bits, B::kMantBits));
  }
  static bool any_below(R a, T b) { return vmaxvq_u32(vcltq_f32(a, set1(b))) != 0; }
  static R zero_below(R r, R x, T b) {
    return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(r), vcltq_f32(x, set1(b))));
  }
  static T hmax(R a) { return vmaxvq_f32(a); }
  static double hsum_wide(R a) {
    return vaddvq_f64(vaddq_f64(vcvt_f64_f32(vget_low_f32(a)), vcvt_high_f64_f32(a)));
  }
  static void sfence() {}
};

template <> struct Vec<double> {
  using T = double;
  using R = float64x2_t;
  using B = FloatBits<T>;
  static constexpr int W = 2;
  static R set1(T a) { return vdupq_n_f64(a); }
  static R load(const T* p) { return vld1q_f64(p); }
  static R load_partial(const T* p, int n, T fill) {
    T b[W] = {fill, fill};
    for (int i = 0; i < n; ++i) b[i] = p[i];
    return vld1q_f64(b);
  }
  static void store(T* p, R v) { vst1q_f64(p, v); }
  static void store_partial(T* p, R v, int n) {
    T b[W];
    vst1q_f64(b, v);
    for (int i = 0; i < n; ++i) p[i] = b[i];
  }
  static void stream(T* p, R v) { vst1q_f64(p, v); }
  static R add(R a, R b) { return vaddq_f64(a, b); }
  static R sub(R a, R b) { return vsubq_f64(a, b); }
  static R mul(R a, R b) { return vmulq_f64(a, b); }
  static R div(R a, R b) { return vdivq_f64(a, b); }
  static R fma(R a, R b, R c) { return vfmaq_f64(c, a, b); }
  static R max(R a, R b) { return vbslq_f64(vcgtq_f64(a, b), a, b); }
  static R min(R a, R b) { return vbslq_f64(vcltq_f64(a, b), a, b); }
  static R round(R a) { return vrndnq_f64(a); }
  static R pow2(R k) {
    uint64x2_t bits = vreinterpretq_u64_f64(vaddq_f64(k, set1(B::kPow2Magic)));
    return vreinterpretq_f64_u64(vshlq_n_u64(bits, B::kMantBits));
  }
  // x = m * 2^e with m in [1, 2), for positive normal x (others: unspecified): as
  // vec_avx2.h's.
  static R mant_exp(R x, R& e) {
    const uint64x2_t bits = vreinterpretq_u64_f64(x);
    const uint64x2_t biased = vorrq_u64(vshrq_n_u64(bits, B::kMantBits), vreinterpretq_u64_f64(set1(4503599627370496.0)));
    e = vsubq_f64(vreinterpretq_f64_u64(biased), set1(B::kPow2Magic));
    const uint64x2_t mant = vandq_u64(bits, vdupq_n_u64((uint64_t{1} << B::kMantBits) - 1));
    return vreinterpretq_f64_u64(vorrq_u64(mant, vreinterpretq_u64_f64(set1(1.0))));
  }
  static bool any_below(R a, T b) {
    const uint64x2_t m = vcltq_f64(a, set1(b));
    return (vgetq_lane_u64(m, 0) | vgetq_lane_u64(m, 1)) != 0;
  }
  static R zero_below(R r, R x, T b) {
    return vreinterpretq_f64_u64(vbicq_u64(vreinterpretq_u64_f64(r), vcltq_f64(x, set1(b))));
  }
  static T hmax(R a) { return vmaxvq_f64(a); }
  static double hsum_wide(R a) { return vaddvq_f64(a); }
  static void sfence() {}
};

// The float16/bfloat16 storage of one Vec<float> (4 lanes of 16 bits): float16 by
// fcvtl / fcvtn (round to nearest even under the default FPCR), bfloat16 by a 16-bit
// shift and integer round-to-nearest-even (NaN kept quiet).
struct HalfVec {
  using H = uint16x4_t;
  using R = float32x4_t;
  static H load(const uint16_t* p) { return vld1_u16(p); }
  static void store(uint16_t* p, H h) { vst1_u16(p, h); }
  static void stream(uint16_t* p, H h) { vst1_u16(p, h); }
  static R widen_f16(H h) { return vcvt_f32_f16(vreinterpret_f16_u16(h)); }
  static H narrow_f16(R v) { return vreinterpret_u16_f16(vcvt_f16_f32(v)); }
  static R widen_bf16(H h) { return vreinterpretq_f32_u32(vshll_n_u16(h, 16)); }
  static H narrow_bf16(R v) {
    const uint32x4_t u = vreinterpretq_u32_f32(v), hi = vshrq_n_u32(u, 16);
    uint32x4_t r = vshrq_n_u32(vaddq_u32(vaddq_u32(u, vdupq_n_u32(0x7FFF)), vandq_u32(hi, vdupq_n_u32(1))), 16);
    r = vbslq_u32(vceqq_f32(v, v), r, vorrq_u32(hi, vdupq_n_u32(0x40)));  // v != v: NaN
    return vmovn_u32(r);
  }
};

}  // namespace TP_NS
