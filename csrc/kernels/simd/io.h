// Loads and stores of a storage type S as vectors of its compute type (Io<S>): float and
// double as they are (Vec<S>), float16 and bfloat16 converted in registers to and from
// float32 (the ISA's HalfVec, vec_<isa>.h). The loops (loops.h) read and write through
// this and nothing else, so one kernel source serves every storage type.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../../half.h"
#include "vec.h"

namespace TP_NS {

template <class S> struct Io {  // float, double
  using T = S;
  using V = Vec<T>;
  using R = typename V::R;
  static R load(const S* p) { return V::load(p); }
  static R load_partial(const S* p, int n, T fill) { return V::load_partial(p, n, fill); }
  static void store(S* p, R v) { V::store(p, v); }
  static void store_partial(S* p, R v, int n) { V::store_partial(p, v, n); }
  static void stream(S* p, R v) { V::stream(p, v); }
  // N whole vectors' elements from p for a reduction, which lets them land in any lane
  // (see HalfIo's). Here in order.
  template <int N> static void load_unordered(const S* p, R (&v)[N]) {
    for (int u = 0; u < N; ++u) v[u] = load(p + u * V::W);
  }
  // The inverse of load_unordered: N vectors laid out as it reads them, stored at p.
  template <int N> static void store_unordered(S* p, const R (&v)[N]) {
    for (int u = 0; u < N; ++u) store(p + u * V::W, v[u]);
  }
  // N whole vectors g(0), g(1), ... at p, p + W, ...: one call, so a conversion can test
  // them together. Here each is stored as it is made (computing all N first made the
  // reload's float32 scale pass ~9% slower, 256K hot, Zen 4).
  template <int N, class G> static void store_n(S* p, G&& g) {
    for (int u = 0; u < N; ++u) store(p + u * V::W, g(u));
  }
  template <int N, class G> static void stream_n(S* p, G&& g) {
    for (int u = 0; u < N; ++u) stream(p + u * V::W, g(u));
  }
};

// Whether HalfVec H widens bfloat16 two vectors at a time (widen_bf16_pair).
template <class H, class = void> struct HasBf16Pair : std::false_type {};
template <class H> struct HasBf16Pair<H, std::void_t<decltype((void)&H::widen_bf16_pair)>> : std::true_type {};

// Whether HalfVec H has Keys (half_keys_x86.h): a float16 maximum without conversions.
template <class H, class = void> struct HasHalfKeys : std::false_type {};
template <class H> struct HasHalfKeys<H, std::void_t<typename H::Keys>> : std::true_type {};

// Whether HalfVec H loads a tail of 16-bit lanes itself (half_tail_x86.h).
template <class H, class = void> struct HasPartialLoad : std::false_type {};
template <class H>
struct HasPartialLoad<H, std::void_t<decltype((void)H::load_partial((const uint16_t*)nullptr, 0, uint16_t{}))>>
    : std::true_type {};

// W lanes of 16 bits per vector of W floats. Tails load through HalfVec::load_partial
// where the ISA has one, else (and stores always) through a small buffer.
template <class S, bool kBf16> struct HalfIo {
  using T = float;
  using V = Vec<float>;
  using R = typename V::R;
  using H = typename HalfVec::H;
  static constexpr int W = V::W;
  static const uint16_t* u16(const S* p) { return reinterpret_cast<const uint16_t*>(p); }
  static uint16_t* u16(S* p) { return reinterpret_cast<uint16_t*>(p); }
  static R widen(H h) { return kBf16 ? HalfVec::widen_bf16(h) : HalfVec::widen_f16(h); }
  static H narrow(R v) { return kBf16 ? HalfVec::narrow_bf16(v) : HalfVec::narrow_f16(v); }
  static R load(const S* p) { return widen(HalfVec::load(u16(p))); }
  template <class HV = HalfVec> TP_ALWAYS_INLINE static R load_partial(const S* p, int n, float fill) {
    if (n == W) return load(p);  // (a panel's whole vectors come this way)
    const uint16_t f = tp::Storage<S>::narrow(fill).bits;  // fills are 0 or +-inf: exact
    if constexpr (HasPartialLoad<HV>::value) return widen(HV::load_partial(u16(p), n, f));  // (HV: as below)
    uint16_t b[W];
    for (int i = 0; i < W; ++i) b[i] = i < n ? u16(p)[i] : f;
    return widen(HalfVec::load(b));
  }
  static void store(S* p, R v) { HalfVec::store(u16(p), narrow(v)); }
  // (Through the buffer even for a whole vector: storing it directly measured slower,
  // bfloat16 log_softmax over axis 0 of 4096x4096 1.70 against 1.34 ns per element.)
  static void store_partial(S* p, R v, int n) {
    uint16_t b[W];
    HalfVec::store(b, narrow(v));
    for (int i = 0; i < n; ++i) u16(p)[i] = b[i];
  }
  static void stream(S* p, R v) { HalfVec::stream(u16(p), narrow(v)); }
  // bfloat16 in pairs of vectors where the ISA has HalfVec::widen_bf16_pair (even and
  // odd elements apart): one shift or mask per vector instead of a zero extension and a
  // shift; stored back in order by HalfVec::store_bf16_pair (no narrowing shuffle).
  template <int N, class HV = HalfVec> static void load_unordered(const S* p, R (&v)[N]) {
    if constexpr (kBf16 && N % 2 == 0 && HasBf16Pair<HV>::value) {  // (HV: dependent, so discarded when false)
      for (int u = 0; u < N; u += 2) HV::widen_bf16_pair(u16(p + u * W), v[u], v[u + 1]);
    } else {
      for (int u = 0; u < N; ++u) v[u] = load(p + u * W);
    }
  }
  template <int N, class HV = HalfVec> static void store_unordered(S* p, const R (&v)[N]) {
    if constexpr (kBf16 && N % 2 == 0 && HasBf16Pair<HV>::value) {
      for (int u = 0; u < N; u += 2) HV::store_bf16_pair(u16(p + u * W), v[u], v[u + 1]);
    } else {
      store_n<N>(p, [&](int u) { return v[u]; });
    }
  }
  template <int N, class G> static void store_n(S* p, G&& g) {
    H h[N];
    narrow_n<N>(g, h);
    for (int u = 0; u < N; ++u) HalfVec::store(u16(p + u * W), h[u]);
  }
  template <int N, class G> static void stream_n(S* p, G&& g) {
    H h[N];
    narrow_n<N>(g, h);
    for (int u = 0; u < N; ++u) HalfVec::stream(u16(p + u * W), h[u]);
  }
  // With AVX512-BF16, one subnormal test for N vectors instead of one each (~6% of a
  // bfloat16 softmax in cache; the rare step holding a subnormal takes the exact form).
  template <int N, class G> static void narrow_n(G& g, H (&h)[N]) {
    R v[N];
    for (int u = 0; u < N; ++u) v[u] = g(u);
#if defined(TP_AVX512_BF16)
    if constexpr (kBf16) {
      if (__builtin_expect(!HalfVec::any_subnormal(v, N), 1)) {
        for (int u = 0; u < N; ++u) h[u] = HalfVec::narrow_bf16_native(v[u]);
      } else {
        for (int u = 0; u < N; ++u) h[u] = HalfVec::narrow_bf16_exact(v[u]);
      }
      return;
    }
#endif
    for (int u = 0; u < N; ++u) h[u] = narrow(v[u]);
  }
};
template <> struct Io<tp::f16> : HalfIo<tp::f16, false> {};
template <> struct Io<tp::bf16> : HalfIo<tp::bf16, true> {};

}  // namespace TP_NS
