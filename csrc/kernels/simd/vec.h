// The small vector API the kernels are written against, Vec<float> and Vec<double>:
// one implementation per ISA, in vec_<isa>.h.
//
// Every kernel source under csrc/kernels/ is compiled once per ISA with exactly one of
// TP_ISA_SCALAR, TP_ISA_AVX2, TP_ISA_AVX512, TP_ISA_NEON defined (and the matching -m
// flags; CMakeLists.txt); this header picks the matching implementation and the
// namespace TP_NS (tp_scalar, tp_avx2, ...) everything compiled for that ISA lives in.
// Everything the kernels need from the hardware is here:
//   W (lanes per register), set1, load / load_partial (missing lanes read as `fill`),
//   store / store_partial, stream (non-temporal store, vector-aligned address) and
//   sfence (orders streaming stores before later ones), add, sub, mul, div,
//   fma (a*b + c), max / min (x86 semantics: b when either is NaN), round (to nearest
//   even), hmax / hsum_wide (horizontal maximum, and sum in double), and the
//   power-of-two primitives exp.h builds its scaling on: scalef (AVX-512) or
//   pow2 (the others); any_below (whether some lane is below a bound) and zero_below
//   (r, 0 in the lanes where x is below a bound; NaN is not below), which keep exp.h's
//   results that round to 0 away from subnormal arithmetic.
// Each vec_<isa>.h also has HalfVec: the 16-bit storage of one Vec<float> (load, store,
// stream) and its float16 / bfloat16 conversions, which simd/io.h builds Io<S> on.
#pragma once

#include <cstdint>
#include <cstring>

// For code GCC would leave out of line in a hot loop: lambdas whose arguments must stay
// in registers (GCC left short_rows' rows on the stack, passed by reference to
// out-of-line lambdas: rows of 64 floats 0.54 -> 0.36 ns per element inlined), and
// io.h's half-precision tails (a call per vector of a panel: bfloat16 softmax recompute
// over axis 0 of 4096x4096, 1.35 ns per element inlined, 1.86 out of line).
#define TP_ALWAYS_INLINE __attribute__((always_inline))

#if defined(TP_ISA_SCALAR)
#define TP_NS tp_scalar
#elif defined(TP_ISA_AVX2)
#define TP_NS tp_avx2
#elif defined(TP_ISA_AVX512) && defined(TP_AVX512_BF16)
#define TP_NS tp_avx512bf16  // the AVX-512 kernels again, with AVX512-BF16 (CMakeLists.txt)
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

}  // namespace TP_NS

#if defined(TP_ISA_SCALAR)
#include "vec_scalar.h"
#elif defined(TP_ISA_AVX2)
#include "vec_avx2.h"
#elif defined(TP_ISA_AVX512)
#include "vec_avx512.h"
#elif defined(TP_ISA_NEON)
#include "vec_neon.h"
#endif
