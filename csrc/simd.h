// The small vector API the kernels are written against: one implementation per ISA.
//
// kernels.cpp is compiled once per ISA with exactly one of TP_ISA_SCALAR, TP_ISA_AVX2,
// TP_ISA_AVX512 defined (and the matching -m flags); this header picks the matching
// Vec<float> / Vec<double>. Everything the kernels need from the hardware is here:
//   load / load_partial (missing lanes read as `fill`), store / store_partial / stream,
//   add, sub, mul, div, fma (a*b + c), max (x86 semantics: returns b when either is NaN),
//   round (to nearest even), scale_acc(v, k) = v * 2^k for sums (results below the
//   normal range may flush to 0), scale_out(v, k) = v * 2^k correctly rounded into the
//   subnormal range (for outputs), hmax / hsum_wide (horizontal maximum, and sum
//   in double), and lanes() to spill a register to memory.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(TP_ISA_AVX512) && defined(TP_AVX512_EMULATE)
#include "../tests/native/avx512_emulation.h"  // test builds on CPUs without AVX-512
#elif defined(TP_ISA_AVX2) || defined(TP_ISA_AVX512)
#include <immintrin.h>
#elif defined(TP_ISA_NEON)
#include <arm_neon.h>
#endif

#if defined(TP_ISA_SCALAR)
#define TP_NS tp_scalar
#elif defined(TP_ISA_AVX2)
#define TP_NS tp_avx2
#elif defined(TP_ISA_AVX512)
#define TP_NS tp_avx512
#elif defined(TP_ISA_NEON)
#define TP_NS tp_neon
#else
#error "define one of TP_ISA_SCALAR, TP_ISA_AVX2, TP_ISA_AVX512, TP_ISA_NEON"
#endif

namespace TP_NS {

// Bit-level facts about the element type, shared by every ISA.
template <class T> struct FloatBits;
template <> struct FloatBits<float> {
  using U = uint32_t;
  static constexpr int kMantBits = 23;
  static constexpr int kBias = 127;
  static constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: x + M - M rounds to int
  static constexpr float kPow2Magic = 8388608.0f + 127.0f;  // 2^23 + bias
};
template <> struct FloatBits<double> {
  using U = uint64_t;
  static constexpr int kMantBits = 52;
  static constexpr int kBias = 1023;
  static constexpr double kRoundMagic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double kPow2Magic = 4503599627370496.0 + 1023.0;  // 2^52 + bias
};

template <class T> struct Vec;

#if defined(TP_ISA_SCALAR)

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
  static bool any_below(R a, T b) { return a < b; }
  static T hmax(R a) { return a; }
  static double hsum_wide(R a) { return (double)a; }
  static void lanes(T* p, R v) { *p = v; }
  static void sfence() {}
};

#elif defined(TP_ISA_AVX2)

template <> struct Vec<float> {
  using T = float;
  using R = __m256;
  using B = FloatBits<T>;
  static constexpr int W = 8;
  static __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static R set1(T a) { return _mm256_set1_ps(a); }
  static R load(const T* p) { return _mm256_loadu_ps(p); }
  static R load_partial(const T* p, int n, T fill) {
    __m256i m = mask(n);
    return _mm256_blendv_ps(set1(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  static void store(T* p, R v) { _mm256_storeu_ps(p, v); }
  static void store_partial(T* p, R v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static void stream(T* p, R v) { _mm256_stream_ps(p, v); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R div(R a, R b) { return _mm256_div_ps(a, b); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R max(R a, R b) { return _mm256_max_ps(a, b); }
  static R min(R a, R b) { return _mm256_min_ps(a, b); }
  static R round(R a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static R pow2(R k) {
    __m256i bits = _mm256_castps_si256(_mm256_add_ps(k, set1(B::kPow2Magic)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(bits, B::kMantBits));
  }
  static bool any_below(R a, T b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, set1(b), _CMP_LT_OQ)) != 0; }
  static T hmax(R a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
  }
  static double hsum_wide(R a) {  // lanes widened to double first: no float rounding
    __m256d s = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)), _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
    __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
  }
  static void lanes(T* p, R v) { _mm256_storeu_ps(p, v); }
  static void sfence() { _mm_sfence(); }
};

template <> struct Vec<double> {
  using T = double;
  using R = __m256d;
  using B = FloatBits<T>;
  static constexpr int W = 4;
  static __m256i mask(int n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static R set1(T a) { return _mm256_set1_pd(a); }
  static R load(const T* p) { return _mm256_loadu_pd(p); }
  static R load_partial(const T* p, int n, T fill) {
    __m256i m = mask(n);
    return _mm256_blendv_pd(set1(fill), _mm256_maskload_pd(p, m), _mm256_castsi256_pd(m));
  }
  static void store(T* p, R v) { _mm256_storeu_pd(p, v); }
  static void store_partial(T* p, R v, int n) { _mm256_maskstore_pd(p, mask(n), v); }
  static void stream(T* p, R v) { _mm256_stream_pd(p, v); }
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static R sub(R a, R b) { return _mm256_sub_pd(a, b); }
  static R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  static R div(R a, R b) { return _mm256_div_pd(a, b); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static R max(R a, R b) { return _mm256_max_pd(a, b); }
  static R min(R a, R b) { return _mm256_min_pd(a, b); }
  static R round(R a) { return _mm256_round_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static R pow2(R k) {
    __m256i bits = _mm256_castpd_si256(_mm256_add_pd(k, set1(B::kPow2Magic)));
    return _mm256_castsi256_pd(_mm256_slli_epi64(bits, B::kMantBits));
  }
  static bool any_below(R a, T b) { return _mm256_movemask_pd(_mm256_cmp_pd(a, set1(b), _CMP_LT_OQ)) != 0; }
  static T hmax(R a) {
    __m128d m = _mm_max_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_max_sd(m, _mm_unpackhi_pd(m, m)));
  }
  static double hsum_wide(R a) {
    __m128d t = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
  }
  static void lanes(T* p, R v) { _mm256_storeu_pd(p, v); }
  static void sfence() { _mm_sfence(); }
};

#elif defined(TP_ISA_AVX512)

template <> struct Vec<float> {
  using T = float;
  using R = __m512;
  static constexpr int W = 16;
  static __mmask16 mask(int n) { return (__mmask16)((1u << n) - 1u); }
  static R set1(T a) { return _mm512_set1_ps(a); }
  static R load(const T* p) { return _mm512_loadu_ps(p); }
  static R load_partial(const T* p, int n, T fill) { return _mm512_mask_loadu_ps(set1(fill), mask(n), p); }
  static void store(T* p, R v) { _mm512_storeu_ps(p, v); }
  static void store_partial(T* p, R v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static void stream(T* p, R v) { _mm512_stream_ps(p, v); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R div(R a, R b) { return _mm512_div_ps(a, b); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R max(R a, R b) { return _mm512_max_ps(a, b); }
  static R min(R a, R b) { return _mm512_min_ps(a, b); }
  static R round(R a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // vscalefps: v * 2^floor(k), correctly rounded, subnormals included.
  static R scalef(R v, R k) { return _mm512_scalef_ps(v, k); }
  static T hmax(R a) { return _mm512_reduce_max_ps(a); }
  static double hsum_wide(R a) {  // lanes widened to double first: no float rounding
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(a));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
  }
  static void lanes(T* p, R v) { _mm512_storeu_ps(p, v); }
  static void sfence() { _mm_sfence(); }
};

template <> struct Vec<double> {
  using T = double;
  using R = __m512d;
  static constexpr int W = 8;
  static __mmask8 mask(int n) { return (__mmask8)((1u << n) - 1u); }
  static R set1(T a) { return _mm512_set1_pd(a); }
  static R load(const T* p) { return _mm512_loadu_pd(p); }
  static R load_partial(const T* p, int n, T fill) { return _mm512_mask_loadu_pd(set1(fill), mask(n), p); }
  static void store(T* p, R v) { _mm512_storeu_pd(p, v); }
  static void store_partial(T* p, R v, int n) { _mm512_mask_storeu_pd(p, mask(n), v); }
  static void stream(T* p, R v) { _mm512_stream_pd(p, v); }
  static R add(R a, R b) { return _mm512_add_pd(a, b); }
  static R sub(R a, R b) { return _mm512_sub_pd(a, b); }
  static R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  static R div(R a, R b) { return _mm512_div_pd(a, b); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static R max(R a, R b) { return _mm512_max_pd(a, b); }
  static R min(R a, R b) { return _mm512_min_pd(a, b); }
  static R round(R a) { return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static R scalef(R v, R k) { return _mm512_scalef_pd(v, k); }
  static T hmax(R a) { return _mm512_reduce_max_pd(a); }
  static double hsum_wide(R a) { return _mm512_reduce_add_pd(a); }
  static void lanes(T* p, R v) { _mm512_storeu_pd(p, v); }
  static void sfence() { _mm_sfence(); }
};

#elif defined(TP_ISA_NEON)

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
  static T hmax(R a) { return vmaxvq_f32(a); }
  static double hsum_wide(R a) {
    return vaddvq_f64(vaddq_f64(vcvt_f64_f32(vget_low_f32(a)), vcvt_high_f64_f32(a)));
  }
  static void lanes(T* p, R v) { vst1q_f32(p, v); }
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
  static bool any_below(R a, T b) {
    const uint64x2_t m = vcltq_f64(a, set1(b));
    return (vgetq_lane_u64(m, 0) | vgetq_lane_u64(m, 1)) != 0;
  }
  static T hmax(R a) { return vmaxvq_f64(a); }
  static double hsum_wide(R a) { return vaddvq_f64(a); }
  static void lanes(T* p, R v) { vst1q_f64(p, v); }
  static void sfence() {}
};

#endif

// Scaling by 2^k, written once on top of each ISA's primitives.
// AVX-512 has vscalef; elsewhere 2^k is built from its bits (pow2), which covers
// only normal powers, so outputs take two steps to round correctly into subnormals.
template <class T> struct Scale {
  using V = Vec<T>;
  using R = typename V::R;
#if defined(TP_ISA_AVX512)
  static R acc(R v, R k) { return V::scalef(v, k); }
  static R acc_pow2(R k) { return V::scalef(V::set1(T(1)), k); }
  static R out(R v, R k) { return V::scalef(v, k); }
  static R out_normal(R v, R k) { return V::scalef(v, k); }
#else
  static constexpr T kBias = (T)FloatBits<T>::kBias;
  // Sums (k <= 0): terms scaled below 2^(1-bias) are negligible next to the leading
  // term (about 1), so they may become 0: k is clamped at -bias, and pow2(-bias) is 0.
  static R acc_pow2(R k) { return V::pow2(V::max(k, V::set1(-kBias))); }
  static R acc(R v, R k) { return V::mul(v, acc_pow2(k)); }
  // Outputs (v in about [0.25, 4], k <= 0). Usually one normal power of two does it;
  // when some lane's result may be subnormal, split k = k1 + k2 with both powers
  // normal, so v * 2^k1 is exact and the final product rounds once. k below
  // 2*(1-bias) only gives 0 anyway.
  // Outputs known to be normal (v * 2^k >= the smallest normal): one power of two.
  static R out_normal(R v, R k) { return V::mul(v, V::pow2(k)); }
  static R out(R v, R k) {
    if (!V::any_below(k, 3 - kBias)) return V::mul(v, V::pow2(k));
    R k1 = V::max(k, V::set1(3 - kBias));
    R k2 = V::max(V::sub(k, k1), V::set1(1 - kBias));
    return V::mul(V::mul(v, V::pow2(k1)), V::pow2(k2));
  }
#endif
};

}  // namespace TP_NS
