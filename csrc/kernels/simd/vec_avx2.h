// Vec for AVX2 + FMA: 8 floats or 4 doubles per register. Included by vec.h only.
#pragma once

#include <immintrin.h>

#include "vec.h"

namespace TP_NS {

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
  static R zero_below(R r, R x, T b) { return _mm256_andnot_ps(_mm256_cmp_ps(x, set1(b), _CMP_LT_OQ), r); }
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
  static R zero_below(R r, R x, T b) { return _mm256_andnot_pd(_mm256_cmp_pd(x, set1(b), _CMP_LT_OQ), r); }
  // x = m * 2^e with m in [1, 2), for positive normal x (others: unspecified): the
  // biased exponent placed in 2^52's low bits (2^52 + it, as pow2 undoes), and the
  // mantissa under 1.0's exponent.
  static R mant_exp(R x, R& e) {
    const __m256i bits = _mm256_castpd_si256(x);
    const __m256i biased = _mm256_or_si256(_mm256_srli_epi64(bits, B::kMantBits), _mm256_castpd_si256(set1(4503599627370496.0)));
    e = _mm256_sub_pd(_mm256_castsi256_pd(biased), set1(B::kPow2Magic));
    const __m256i mant = _mm256_and_si256(bits, _mm256_set1_epi64x((int64_t)((uint64_t{1} << B::kMantBits) - 1)));
    return _mm256_castsi256_pd(_mm256_or_si256(mant, _mm256_castpd_si256(set1(1.0))));
  }
  static T hmax(R a) {
    __m128d m = _mm_max_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_max_sd(m, _mm_unpackhi_pd(m, m)));
  }
  static double hsum_wide(R a) {
    __m128d t = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
  }
  static void sfence() { _mm_sfence(); }
};

// The float16/bfloat16 storage of one Vec<float> (8 lanes of 16 bits) and its
// conversions: float16 by F16C (-mf16c; the dispatch requires the f16c flag), bfloat16
// by a 16-bit shift and integer round-to-nearest-even.
#include "half_keys_x86.h"
#include "half_tail_x86.h"

struct HalfVec {
  using H = __m128i;
  using R = __m256;
  using Keys = HalfKeys;
  static H load(const uint16_t* p) { return _mm_loadu_si128((const __m128i*)p); }
  static H load_partial(const uint16_t* p, int n, uint16_t fill) { return load_u16x8_partial(p, n, fill); }
  static void store(uint16_t* p, H h) { _mm_storeu_si128((__m128i*)p, h); }
  static void stream(uint16_t* p, H h) { _mm_stream_si128((__m128i*)p, h); }
  static R widen_f16(H h) { return _mm256_cvtph_ps(h); }
  static H narrow_f16(R v) { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT); }
  static R widen_bf16(H h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
  // As vec_avx512.h's: even-indexed elements shifted up, odd ones masked (reductions only).
  static void widen_bf16_pair(const uint16_t* p, R& even, R& odd) {
    const __m256i w = _mm256_loadu_si256((const __m256i*)p);
    even = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32((int)0xFFFF0000u)));
  }
  // Round to nearest even: add 0x7FFF, plus 1 when the kept part is odd. Unlike
  // tp::float_to_bf16 (half.h) this does not test for NaN: a NaN whose low 16 bits are
  // zero passes unchanged (no carry), and every NaN the kernels produce is one, since
  // x86 arithmetic makes the default NaN or keeps an operand's payload, and operands
  // are bfloat16 widened (low bits zero) or derived from them. A NaN with other low
  // bits could round to infinity or -0, but never reaches this. The test costs a
  // third of the conversion (compare, or, blend; two_pass_write of bfloat16 on a Zen 1,
  // in cache: 1.62 ns per element without it, 1.78 with; tools/kernel_bench.cpp).
  static __m256i rounded_bf16(R v) {  // each lane's bfloat16 in its upper 16 bits
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    return _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd);
  }
  // The inverse of widen_bf16_pair: the 2W bfloat16 of `even` and `odd` at p, in order.
  static void store_bf16_pair(uint16_t* p, R even, R odd) {
    const __m256i w = _mm256_or_si256(_mm256_srli_epi32(rounded_bf16(even), 16),
                                      _mm256_and_si256(rounded_bf16(odd), _mm256_set1_epi32((int)0xFFFF0000u)));
    _mm256_storeu_si256((__m256i*)p, w);
  }
  static H narrow_bf16(R v) {
    const __m256i r = _mm256_srli_epi32(rounded_bf16(v), 16);
    // Every lane is <= 0xFFFF: the unsigned-saturating pack of the two 128-bit halves is
    // exact (cheaper than a 256-bit pack and a cross-lane permute on a half-width core).
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  }
};

}  // namespace TP_NS
