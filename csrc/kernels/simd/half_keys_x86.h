// Included by vec_avx2.h and vec_avx512.h inside their ISA's namespace (after
// <immintrin.h>; AVX2 integer ops, which -mavx512f implies), so each ISA compiles its own.
//
// The running maximum and minimum of 16-bit floats (float16, bfloat16) without converting
// them: a pattern with the magnitude bits of negatives flipped (fold) orders as an int16
// exactly as the values do (-0 just below +0; NaNs beyond the infinities, which the sums
// that follow turn into NaN anyway), so one vpmaxsw and one vpminsw take 16 elements.
// float16's reload, in cache, Zen 4 (tools/kernel_bench.cpp, ns per element): AVX-512
// 64x4096 0.280 -> 0.261, one row of 4096 0.276 -> 0.246; AVX2 0.364 -> 0.350 and 0.374 ->
// 0.337. Batches streamed from memory: no change (4096x4096, both ISAs).
#pragma once

struct HalfKeys {
  static constexpr int N = 16;  // elements per add
  __m256i max, min;
  // minus_inf, plus_inf: the storage type's patterns (what an empty range gives back)
  HalfKeys(uint16_t minus_inf, uint16_t plus_inf)
      : max(fold(_mm256_set1_epi16((short)minus_inf))), min(fold(_mm256_set1_epi16((short)plus_inf))) {}
  static __m256i fold(__m256i h) {  // (its own inverse: the sign bit stays)
    return _mm256_xor_si256(h, _mm256_and_si256(_mm256_srai_epi16(h, 15), _mm256_set1_epi16(0x7fff)));
  }
  void add(const uint16_t* p) {
    const __m256i k = fold(_mm256_loadu_si256((const __m256i*)p));
    max = _mm256_max_epi16(max, k);
    min = _mm256_min_epi16(min, k);
  }
  // The N lane maxima and minima, as 16-bit float patterns.
  void out(uint16_t* hi, uint16_t* lo) const {
    _mm256_storeu_si256((__m256i*)hi, fold(max));
    _mm256_storeu_si256((__m256i*)lo, fold(min));
  }
};
