// Scalar stand-ins for the AVX-512F intrinsics that csrc/kernels/simd/vec_avx512.h
// uses, with Intel's semantics (SDM: VMAXPS returns the second operand when either is
// NaN; VSCALEFPS is a * 2^floor(b), correctly rounded, subnormals included; VRNDSCALEPS
// with imm 8 rounds to nearest even). Only for tests/native/kernel_check.cpp on CPUs
// without AVX-512: run_avx512_emulated.sh force-includes this header (-include) into
// the kernel sources it builds with TP_AVX512_EMULATE, so vec_avx512.h, and the kernels
// at 16 lanes, run everywhere. It checks the kernel logic at that width, not the
// silicon; a real AVX-512 run still has to confirm the instructions (README,
// Instruction sets).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

template <class T, int N> struct EmuVec {
  T v[N];
};
using __m512 = EmuVec<float, 16>;
using __m512d = EmuVec<double, 8>;
using __m256 = EmuVec<float, 8>;
using __m256d = EmuVec<double, 4>;
using __mmask16 = uint16_t;
using __mmask8 = uint8_t;
#define _MM_FROUND_TO_NEAREST_INT 0
#define _MM_FROUND_NO_EXC 8
#define _CMP_UNORD_Q 3
#define _CMP_LT_OQ 17

namespace emu {
template <class V, class F> V map2(V a, V b, F f) {
  for (auto i = 0u; i < sizeof(a.v) / sizeof(a.v[0]); ++i) a.v[i] = f(a.v[i], b.v[i]);
  return a;
}
template <class T> T scalef(T a, T b) {
  if (a != a || b != b) return NAN;
  const T fb = std::floor(b);
  const int k = fb < -4000 ? -4000 : fb > 4000 ? 4000 : (int)fb;
  return std::ldexp(a, k);  // exact scaling, one rounding into subnormals
}
template <class T> T x86_max(T a, T b) { return a > b ? a : b; }
template <class T> T x86_min(T a, T b) { return a < b ? a : b; }
}  // namespace emu

#define TP_EMU_FAMILY(SUF, V, T, N, M)                                                                    \
  inline V _mm512_set1_##SUF(T a) {                                                                       \
    V r;                                                                                                  \
    for (int i = 0; i < N; ++i) r.v[i] = a;                                                               \
    return r;                                                                                             \
  }                                                                                                       \
  inline V _mm512_loadu_##SUF(const T* p) {                                                               \
    V r;                                                                                                  \
    std::memcpy(r.v, p, sizeof r.v);                                                                      \
    return r;                                                                                             \
  }                                                                                                       \
  inline V _mm512_mask_loadu_##SUF(V src, M k, const T* p) {                                              \
    for (int i = 0; i < N; ++i)                                                                           \
      if (k >> i & 1) src.v[i] = p[i];                                                                    \
    return src;                                                                                           \
  }                                                                                                       \
  inline void _mm512_storeu_##SUF(T* p, V a) { std::memcpy(p, a.v, sizeof a.v); }                        \
  inline void _mm512_mask_storeu_##SUF(T* p, M k, V a) {                                                  \
    for (int i = 0; i < N; ++i)                                                                           \
      if (k >> i & 1) p[i] = a.v[i];                                                                      \
  }                                                                                                       \
  inline void _mm512_stream_##SUF(T* p, V a) {                                                            \
    if ((uintptr_t)p % 64) __builtin_trap(); /* the real instruction faults when misaligned */            \
    std::memcpy(p, a.v, sizeof a.v);                                                                      \
  }                                                                                                       \
  inline V _mm512_add_##SUF(V a, V b) { return emu::map2(a, b, [](T x, T y) { return x + y; }); }         \
  inline V _mm512_sub_##SUF(V a, V b) { return emu::map2(a, b, [](T x, T y) { return x - y; }); }         \
  inline V _mm512_mul_##SUF(V a, V b) { return emu::map2(a, b, [](T x, T y) { return x * y; }); }         \
  inline V _mm512_div_##SUF(V a, V b) { return emu::map2(a, b, [](T x, T y) { return x / y; }); }         \
  inline V _mm512_fmadd_##SUF(V a, V b, V c) {                                                            \
    for (int i = 0; i < N; ++i) a.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);                                \
    return a;                                                                                             \
  }                                                                                                       \
  inline V _mm512_max_##SUF(V a, V b) { return emu::map2(a, b, emu::x86_max<T>); }                        \
  inline V _mm512_min_##SUF(V a, V b) { return emu::map2(a, b, emu::x86_min<T>); }                        \
  inline V _mm512_roundscale_##SUF(V a, int imm) {                                                        \
    if (imm != (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)) __builtin_trap();                         \
    for (int i = 0; i < N; ++i) a.v[i] = std::nearbyint(a.v[i]);                                          \
    return a;                                                                                             \
  }                                                                                                       \
  inline V _mm512_scalef_##SUF(V a, V b) { return emu::map2(a, b, emu::scalef<T>); }                     \
  inline M _mm512_cmp_##SUF##_mask(V a, V b, int pred) { /* _CMP_UNORD_Q and _CMP_LT_OQ */               \
    if (pred != _CMP_UNORD_Q && pred != _CMP_LT_OQ) __builtin_trap();                                     \
    M k = 0;                                                                                              \
    for (int i = 0; i < N; ++i)                                                                           \
      if (pred == _CMP_LT_OQ ? a.v[i] < b.v[i] : a.v[i] != a.v[i] || b.v[i] != b.v[i]) k |= (M)(1u << i); \
    return k;                                                                                             \
  }                                                                                                       \
  inline V _mm512_mask_mov_##SUF(V src, M k, V a) {                                                       \
    for (int i = 0; i < N; ++i)                                                                           \
      if (k >> i & 1) src.v[i] = a.v[i];                                                                  \
    return src;                                                                                           \
  }                                                                                                       \
  inline T _mm512_reduce_max_##SUF(V a) {                                                                 \
    T m = a.v[0];                                                                                         \
    for (int i = 1; i < N; ++i) m = emu::x86_max(m, a.v[i]);                                              \
    return m;                                                                                             \
  }

TP_EMU_FAMILY(ps, __m512, float, 16, __mmask16)
TP_EMU_FAMILY(pd, __m512d, double, 8, __mmask8)
#undef TP_EMU_FAMILY

// getexp / getmant (interval [1, 2), sign of the source) for positive normal inputs:
// all that Vec<double>::mant_exp asks of them.
#define _MM_MANT_NORM_1_2 0
#define _MM_MANT_SIGN_src 0
inline __m512d _mm512_getexp_pd(__m512d a) {
  for (double& v : a.v) v = (double)std::ilogb(v);
  return a;
}
inline __m512d _mm512_getmant_pd(__m512d a, int interval, int sign) {
  if (interval != _MM_MANT_NORM_1_2 || sign != _MM_MANT_SIGN_src) __builtin_trap();
  for (double& v : a.v) v = std::scalbn(v, -std::ilogb(v));
  return a;
}
inline double _mm512_reduce_add_pd(__m512d a) {
  double s = 0;
  for (double v : a.v) s += v;
  return s;
}
inline __m512d _mm512_cvtps_pd(__m256 a) {
  __m512d r;
  for (int i = 0; i < 8; ++i) r.v[i] = a.v[i];
  return r;
}
inline __m256 _mm512_castps512_ps256(__m512 a) {
  __m256 r;
  std::memcpy(r.v, a.v, sizeof r.v);
  return r;
}
inline __m512d _mm512_castps_pd(__m512 a) {
  __m512d r;
  std::memcpy(r.v, a.v, sizeof r.v);
  return r;
}
inline __m256d _mm512_extractf64x4_pd(__m512d a, int hi) {
  __m256d r;
  std::memcpy(r.v, a.v + 4 * hi, sizeof r.v);
  return r;
}
inline __m256 _mm256_castpd_ps(__m256d a) {
  __m256 r;
  std::memcpy(r.v, a.v, sizeof r.v);
  return r;
}
inline void _mm_sfence() {}

// The float16/bfloat16 conversions of vec_avx512.h (HalfVec): 16 lanes of 16 bits in a
// __m256i, integer lanes of 32 bits in a __m512i. float16 goes through the compiler's
// _Float16 (its own correctly rounded conversion, independent of csrc/half.h); the
// bfloat16 path is integer arithmetic, emulated lane by lane.
using __m256i = EmuVec<uint16_t, 16>;
using __m512i = EmuVec<uint32_t, 16>;
inline __m256i _mm256_loadu_si256(const __m256i* p) {
  __m256i r;
  std::memcpy(r.v, p, sizeof r.v);
  return r;
}
inline void _mm256_storeu_si256(__m256i* p, __m256i a) { std::memcpy(p, a.v, sizeof a.v); }
inline void _mm256_stream_si256(__m256i* p, __m256i a) {
  if ((uintptr_t)p % 32) __builtin_trap();  // the real instruction faults when misaligned
  std::memcpy(p, a.v, sizeof a.v);
}
inline __m512 _mm512_cvtph_ps(__m256i a) {
  __m512 r;
  for (int i = 0; i < 16; ++i) {
    _Float16 h;
    std::memcpy(&h, &a.v[i], 2);
    r.v[i] = (float)h;
  }
  return r;
}
inline __m256i _mm512_cvtps_ph(__m512 a, int) {
  __m256i r;
  for (int i = 0; i < 16; ++i) {
    const _Float16 h = (_Float16)a.v[i];
    std::memcpy(&r.v[i], &h, 2);
    if (a.v[i] != a.v[i]) r.v[i] |= 0x200;  // the instruction returns a quiet NaN
  }
  return r;
}
inline __m512i _mm512_set1_epi32(int a) {
  __m512i r;
  for (auto& v : r.v) v = (uint32_t)a;
  return r;
}
inline __m512i _mm512_castps_si512(__m512 a) {
  __m512i r;
  std::memcpy(r.v, a.v, sizeof r.v);
  return r;
}
inline __m512 _mm512_castsi512_ps(__m512i a) {
  __m512 r;
  std::memcpy(r.v, a.v, sizeof r.v);
  return r;
}
inline __m512i _mm512_loadu_si512(const void* p) {  // (little-endian lanes, as the real load)
  __m512i r;
  std::memcpy(r.v, p, sizeof r.v);
  return r;
}
inline __m512i _mm512_cvtepu16_epi32(__m256i a) {
  __m512i r;
  for (int i = 0; i < 16; ++i) r.v[i] = a.v[i];
  return r;
}
inline __m256i _mm512_cvtepi32_epi16(__m512i a) {  // vpmovdw: truncation
  __m256i r;
  for (int i = 0; i < 16; ++i) r.v[i] = (uint16_t)a.v[i];
  return r;
}
inline __m512i _mm512_slli_epi32(__m512i a, unsigned k) {
  for (auto& v : a.v) v <<= k;
  return a;
}
inline __m512i _mm512_srli_epi32(__m512i a, unsigned k) {
  for (auto& v : a.v) v >>= k;
  return a;
}
inline __m512i _mm512_add_epi32(__m512i a, __m512i b) { return emu::map2(a, b, [](uint32_t x, uint32_t y) { return x + y; }); }
inline __m512i _mm512_and_epi32(__m512i a, __m512i b) { return emu::map2(a, b, [](uint32_t x, uint32_t y) { return x & y; }); }
inline __m512i _mm512_or_epi32(__m512i a, __m512i b) { return emu::map2(a, b, [](uint32_t x, uint32_t y) { return x | y; }); }
inline void _mm512_storeu_si512(void* p, __m512i a) { std::memcpy(p, a.v, sizeof a.v); }
inline __m512i _mm512_mask_or_epi32(__m512i src, __mmask16 k, __m512i a, __m512i b) {
  for (int i = 0; i < 16; ++i)
    if (k >> i & 1) src.v[i] = a.v[i] | b.v[i];
  return src;
}
