// Vec for AVX-512F: 16 floats or 8 doubles per register; masked loads and stores for
// tails, vscalef for exact scaling by powers of two. Included by vec.h only.
//
// TP_AVX512_EMULATE: the build supplies the intrinsics itself (a C++ emulation,
// force-included by the build that defines this), so this code can be checked at 16
// lanes on CPUs without AVX-512.
#pragma once

#if !defined(TP_AVX512_EMULATE)
#include <immintrin.h>
#endif

#include "vec.h"

namespace TP_NS {

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
  static bool any_below(R a, T b) { return _mm512_cmp_ps_mask(a, set1(b), _CMP_LT_OQ) != 0; }
  static R zero_below(R r, R x, T b) { return _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(x, set1(b), _CMP_LT_OQ), set1(0)); }
  static T hmax(R a) { return _mm512_reduce_max_ps(a); }
  static double hsum_wide(R a) {  // lanes widened to double first: no float rounding
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(a));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
  }
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
  static bool any_below(R a, T b) { return _mm512_cmp_pd_mask(a, set1(b), _CMP_LT_OQ) != 0; }
  static R zero_below(R r, R x, T b) { return _mm512_mask_mov_pd(r, _mm512_cmp_pd_mask(x, set1(b), _CMP_LT_OQ), set1(0)); }
  // x = m * 2^e with m in [1, 2), for positive normal x (others: unspecified).
  static R mant_exp(R x, R& e) {
    e = _mm512_getexp_pd(x);
    return _mm512_getmant_pd(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
  }
  static T hmax(R a) { return _mm512_reduce_max_pd(a); }
  static double hsum_wide(R a) { return _mm512_reduce_add_pd(a); }
  static void sfence() { _mm_sfence(); }
};

// The float16/bfloat16 storage of one Vec<float> (16 lanes of 16 bits) and its
// conversions: float16 by vcvtph2ps / vcvtps2ph (round to nearest even), bfloat16 by a
// 16-bit shift and integer round-to-nearest-even (NaN kept quiet), narrowed by vpmovdw
// (AVX-512F only). Built with AVX512-BF16 (TP_AVX512_BF16, namespace tp_avx512bf16),
// bfloat16 narrows by vcvtneps2bf16, which rounds the same way but flushes subnormal
// inputs to zero: a vector holding one (vfpclassps) takes the integer form. In cache,
// bfloat16 softmax of 64K elements: 26.4 -> 22.6 us (float32 14.4; Zen 5, one core).
// The loops narrow a step's vectors together (Io::store_n, io.h): one test and branch
// for all of them.
#if !defined(TP_AVX512_EMULATE)  // (the emulation has no AVX2 integer ops: the float max there)
#include "half_keys_x86.h"
#include "half_tail_x86.h"
#endif

struct HalfVec {
  using H = __m256i;
  using R = __m512;
#if !defined(TP_AVX512_EMULATE)
  using Keys = HalfKeys;
#endif
  static H load(const uint16_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
#if !defined(TP_AVX512_EMULATE)
  static H load_partial(const uint16_t* p, int n, uint16_t fill) { return load_u16x16_partial(p, n, fill); }
#endif
  static void store(uint16_t* p, H h) { _mm256_storeu_si256((__m256i*)p, h); }
  static void stream(uint16_t* p, H h) { _mm256_stream_si256((__m256i*)p, h); }
  static R widen_f16(H h) { return _mm512_cvtph_ps(h); }
  static H narrow_f16(R v) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT); }
  static R widen_bf16(H h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  // The 2W bfloat16 at p as two vectors, not in order: the even-indexed elements (shifted
  // up) and the odd ones (masked), without widen_bf16's lane-crossing zero extension.
  // For reductions only (Io::load_unordered).
  static void widen_bf16_pair(const uint16_t* p, R& even, R& odd) {
    const __m512i w = _mm512_loadu_si512((const void*)p);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    odd = _mm512_castsi512_ps(_mm512_and_epi32(w, _mm512_set1_epi32((int)0xFFFF0000u)));
  }
  static H narrow_bf16(R v) {
#if defined(TP_AVX512_BF16)
    if (__builtin_expect(!any_subnormal(&v, 1), 1)) return narrow_bf16_native(v);
#endif
    return narrow_bf16_exact(v);
  }
#if defined(TP_AVX512_BF16)
  static bool any_subnormal(const R* v, int n) {
    __mmask16 m = 0;
    for (int i = 0; i < n; ++i) m |= _mm512_fpclass_ps_mask(v[i], 0x20);  // 0x20: subnormal
    return m != 0;
  }
  static H narrow_bf16_native(R v) { return (__m256i)_mm512_cvtneps_pbh(v); }
#endif
  static H narrow_bf16_exact(R v) { return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded_bf16(v), 16)); }
  // Each lane's bfloat16 in its upper 16 bits: round to nearest even (add 0x7FFF, plus 1
  // when the kept part is odd); a NaN keeps its upper bits, made quiet.
  static __m512i rounded_bf16(R v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_epi32(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), odd);
    return _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), u, _mm512_set1_epi32(0x400000));
  }
  // The inverse of widen_bf16_pair: the 2W bfloat16 of `even` and `odd` at p, in order.
  static void store_bf16_pair(uint16_t* p, R even, R odd) {
    __m512i w;
#if defined(TP_AVX512_BF16)
    const R v[2] = {even, odd};
    if (__builtin_expect(!any_subnormal(v, 2), 1)) {
      // [even 0..15 | odd 0..15], then interleaved (vpermw)
      const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                           21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
      w = _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(odd, even));
      _mm512_storeu_si512((void*)p, w);
      return;
    }
#endif
    // even's bfloat16 to the low halves, odd's kept in the high ones
    w = _mm512_or_epi32(_mm512_srli_epi32(rounded_bf16(even), 16),
                        _mm512_and_epi32(rounded_bf16(odd), _mm512_set1_epi32((int)0xFFFF0000u)));
    _mm512_storeu_si512((void*)p, w);
  }
};

}  // namespace TP_NS
