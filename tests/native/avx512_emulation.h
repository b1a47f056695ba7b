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
  inline T _mm512_reduce_max_##SUF(V a) {                                                                 \
    T m = a.v[0];                                                                                         \
    for (int i = 1; i < N; ++i) m = emu::x86_max(m, a.v[i]);                                              \
    return m;                                                                                             \
  }

TP_EMU_FAMILY(ps, __m512, float, 16, __mmask16)
TP_EMU_FAMILY(pd, __m512d, double, 8, __mmask8)
#undef TP_EMU_FAMILY

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
