// Half-precision storage types (float16, bfloat16) and their scalar conversions, shared
// by every ISA build. Kernels read and write them and compute in float32 (Compute<S>).
// The vector conversions are per ISA (kernels/simd/vec_<isa>.h, HalfVec) and meet these
// bit for bit: widening is exact, narrowing rounds to nearest even once, NaN stays a
// quiet NaN, overflow gives inf.
#pragma once

#include <cstdint>
#include <cstring>

namespace tp {

// Distinct types for the two 16-bit formats, so templates tell them apart.
struct f16 {
  uint16_t bits;
};
struct bf16 {
  uint16_t bits;
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// IEEE binary16 -> float32, exact.
inline float f16_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  if (exp == 0x1F) return bits_to_float(sign | 0x7F800000u | (mant << 13));  // inf, NaN (payload kept)
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float32
    const float v = (float)mant * 5.9604644775390625e-8f;
    return bits_to_float(sign | float_to_bits(v));
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));  // rebias 15 -> 127
}

// float32 -> binary16, round to nearest even (what F16C's vcvtps2ph with imm 0 does).
inline uint16_t float_to_f16(float f) {
  const uint32_t u = float_to_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu));  // NaN, quiet
  if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);  // >= 65520 rounds to inf
  if (a < 0x38800000u) {
    // Below 2^-14 (subnormal result): adding 0.5 puts the value's 2^-24 multiples in the
    // low mantissa bits of a float in [0.5, 1), rounded to nearest even by the FPU.
    const float t = bits_to_float(a) + 0.5f;
    return (uint16_t)(sign | (float_to_bits(t) - 0x3F000000u));
  }
  const uint32_t odd = (a >> 13) & 1u;  // ties to even
  return (uint16_t)(sign | ((a + 0xC8000FFFu + odd) >> 13));  // 0xC8000000: rebias 127 -> 15
}

inline float bf16_to_float(uint16_t h) { return bits_to_float((uint32_t)h << 16); }
// float32 -> bfloat16 (its upper half), round to nearest even; NaN kept quiet.
inline uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u);
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// The compute type of a storage type, and the scalar conversions between them.
template <class S> struct Storage {
  using T = S;  // float, double: computed as stored
  static T widen(S v) { return v; }
  static S narrow(T v) { return v; }
};
template <> struct Storage<f16> {
  using T = float;
  static float widen(f16 v) { return f16_to_float(v.bits); }
  static f16 narrow(float v) { return {float_to_f16(v)}; }
};
template <> struct Storage<bf16> {
  using T = float;
  static float widen(bf16 v) { return bf16_to_float(v.bits); }
  static bf16 narrow(float v) { return {float_to_bf16(v)}; }
};
template <class S> using Compute = typename Storage<S>::T;

}  // namespace tp
