// The first n < W 16-bit elements at p into a vector of W (8 or 16), the other lanes
// `fill`, for HalfVec::load_partial on x86 (AVX2 and AVX-512: 16-bit masked loads need
// AVX512-BW, which the AVX-512F build does not assume). Not through a buffer: n 16-bit
// stores and then one wide load of them cannot be forwarded from the store buffer, and
// a panel narrower than a vector pays that every step (bfloat16 softmax over axis 0 of
// (262144, 8), Xeon VM, one thread: 11.1 ns per element). Whole pairs come by a masked
// 32-bit load (masked-off lanes never fault), an odd last element by a broadcast of it,
// merged by byte blends. Included by vec_avx2.h and vec_avx512.h inside their ISA's
// namespace (after <immintrin.h>).
#pragma once

inline __m128i load_u16x8_partial(const uint16_t* p, int n, uint16_t fill) {
  const __m128i lane = _mm_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7);
  const __m128i pairs = _mm_maskload_epi32((const int*)p, _mm_cmpgt_epi32(_mm_set1_epi32(n / 2), _mm_setr_epi32(0, 1, 2, 3)));
  __m128i h = _mm_blendv_epi8(_mm_set1_epi16((short)fill), pairs, _mm_cmpgt_epi16(_mm_set1_epi16((short)(n & ~1)), lane));
  if (n & 1) h = _mm_blendv_epi8(h, _mm_set1_epi16((short)p[n - 1]), _mm_cmpeq_epi16(_mm_set1_epi16((short)(n - 1)), lane));
  return h;
}

inline __m256i load_u16x16_partial(const uint16_t* p, int n, uint16_t fill) {
  const __m256i lane = _mm256_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m256i pairs =
      _mm256_maskload_epi32((const int*)p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n / 2), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  __m256i h = _mm256_blendv_epi8(_mm256_set1_epi16((short)fill), pairs, _mm256_cmpgt_epi16(_mm256_set1_epi16((short)(n & ~1)), lane));
  if (n & 1)
    h = _mm256_blendv_epi8(h, _mm256_set1_epi16((short)p[n - 1]), _mm256_cmpeq_epi16(_mm256_set1_epi16((short)(n - 1)), lane));
  return h;
}
