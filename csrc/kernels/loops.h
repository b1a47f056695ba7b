// The loops every pass runs on: along a contiguous row, or across the lanes of a panel
// (kernel_api.h, Group). Per ISA (namespace TP_NS).
//
// A pass is a "visitor" (what to do with one vector of elements) run by one of them.
// A reduction visitor holds vector state per unrolled register u, consumes vectors with
// step(u, x), and folds its state into per-lane double results with fold_row (all lanes
// into result 0) or fold_panel (lane l of register u into result u*W + l); init_out(k)
// clears k results, reset() the vector state before each block. A map visitor returns
// the output vector with apply(u, x). Both name kFill (what missing lanes of a tail
// read as: it must keep their arithmetic finite and out of the result) and kPrefetch
// (whether the loop prefetches ahead, see prefetch_ahead).
// Parameters are per register u (PerRegister): a broadcast scalar for rows, W lanes for
// panels.
// The loops are generic over the storage type S of x and y (float, double, tp::f16,
// tp::bf16); visitors see vectors of the compute type T = tp::Compute<S> (float for the
// halves), loaded and stored through Io<S> (simd/io.h), which converts in registers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../kernel_api.h"
#include "simd/io.h"
#include "simd/vec.h"

namespace TP_NS {

using tp::Group;

// Registers per loop step: kUnroll independent accumulators, whose loop-carried
// chains (a max, an fma) interleave.
constexpr int kUnroll = 4;

// A per-lane parameter (a maximum, a scale) as the kUnroll registers a step uses.
template <class T> struct PerRegister {
  using V = Vec<T>;
  typename V::R v[kUnroll];
  // Row: one value for every register.
  void broadcast(const T* a) {
    for (auto& r : v) r = V::set1(a[0]);
  }
  // Panel: lanes u*W.. of the array (missing lanes read as `fill`, which keeps their
  // arithmetic finite).
  void load_lanes(const T* a, int lanes, T fill) {
    for (int u = 0; u < kUnroll; ++u) v[u] = V::load_partial(a + u * V::W, std::clamp(lanes - u * V::W, 0, V::W), fill);
  }
  // Either, by the group's shape.
  template <class S> void load(const T* a, const Group<S>& g, bool panel) {
    if (panel)
      load_lanes(a, g.lanes, 0);
    else
      broadcast(a);
  }
};

// A panel's registers into lanes 0..lanes of a buffer of kUnroll * W elements (only the
// registers that hold lanes), for a fold over lanes in one loop.
template <class T, class R> void store_lanes(T* buf, const R (&regs)[kUnroll], int lanes) {
  for (int u = 0; u * Vec<T>::W < lanes; ++u) Vec<T>::store(buf + u * Vec<T>::W, regs[u]);
}

// Steps per fold (Vis::kFoldSteps along a row): a register lane sums at most 16 terms
// (32 in pass 1) in T before the partial sum moves to double, so a row's sum is
// accurate to ~1 ulp however long the row. A panel lane is a whole row (its largest
// term lands in the same lane as all the others), so it folds after 8 steps.
template <class T, class Vis> constexpr int64_t kRowBlock = Vis::kFoldSteps * kUnroll * Vec<T>::W;
constexpr int64_t kPanelBlock = 8;  // steps along the axis per fold, in panel mode

// A row visitor may take the unrolled registers together (step_row); by default each
// register feeds its own accumulator.
template <class Vis, class R> auto step_row(Vis& vis, const R (&v)[kUnroll]) -> decltype(vis.step_row(v)) {
  return vis.step_row(v);
}
template <class Vis, class R, class... Ignored> void step_row(Vis& vis, const R (&v)[kUnroll], Ignored...) {
  for (int u = 0; u < kUnroll; ++u) vis.step(u, v[u]);
}

// Software prefetch, tp::prefetch_bytes ahead of a row's loads (kernel_api.h; default and
// measurements in src/twopass/_dispatch.py), for the visitors that compute an exp per
// element (Vis::kPrefetch). Their loops are slow enough that the hardware prefetchers
// alone leave DRAM latency exposed: out of cache, pass 1 ran ~15% slower than in cache
// (two_pass_sum over 2^24 floats, AVX2, one thread: 7.1 ms without, 6.2 ms with). The
// cheap visitors (max, scale, log_softmax_write) run at memory speed on the hardware
// prefetchers alone; prefetching slowed the max pass from 4.1 to 5.1 ms (Zen 3, L1 only).
// With both levels below, prefetching in the cheap passes too measured no gain on the Xeon
// VM (cold, medians of 4 alternating rounds, 1 thread: time with / without 0.96-1.05 over
// seven cases; 2 threads 0.85-1.12), so they stay on the hardware prefetchers. Prefetches
// never fault, so reading past a row's end is harmless.
template <class S> inline void prefetch_ahead(const S* p) {
  constexpr int kBytes = kUnroll * Vec<tp::Compute<S>>::W * (int)sizeof(S);  // one unrolled step
  // Two levels: into the L2 at the full distance (prefetcht1), into the L1 at half of it
  // (prefetcht0). A core has few L1 fill buffers (16 on Intel's server cores) and each
  // L1 prefetch holds one for a whole DRAM latency; L2 prefetches queue in the L2's
  // larger miss queue, so more lines are in flight. Xeon VM (AVX-512, 2 MiB L2, 504 MiB
  // mesh L3), cold, one thread, L1 only at 8 KiB -> both levels: logsumexp of 2^26
  // floats 25.7 -> 13.3 ms, softmax two_pass 56.0 -> 44.1 ms. Flat from 4 to 24 KiB;
  // the L1 level alone or the L2 level alone (at 2-32 KiB) took 17-26 ms.
  const char* ahead = (const char*)p + tp::prefetch_bytes;
  const char* near = (const char*)p + tp::prefetch_bytes / 2;
  for (int b = 0; b < kBytes; b += 64) __builtin_prefetch(near + b), __builtin_prefetch(ahead + b, 0, 2);
}

// The next row of a batch, prefetched a few lines per step of the passes over the
// current row, so memory stays busy while those passes compute in cache. Spread, not
// issued at once: a core has a few dozen misses in flight, so a whole row requested in
// one short pass would queue behind them rather than overlap. kLines per step, over the
// (up to) three passes of a reload, covers a row by about two thirds of the way through.
template <class S> struct RowPrefetch {
  static constexpr int kStepBytes = kUnroll * Vec<tp::Compute<S>>::W * (int)sizeof(S);
  static constexpr int kLines = (kStepBytes / 64 + 1) / 2 > 0 ? (kStepBytes / 64 + 1) / 2 : 1;
  const char* p;
  const char* end;
  RowPrefetch(const S* row, int64_t n) : p((const char*)row), end(row ? (const char*)(row + n) : nullptr) {}
  inline void step() {
    for (int k = 0; k < kLines && p < end; ++k, p += 64) __builtin_prefetch(p, 0, 2);  // into the L2
  }
};

// Reduce a contiguous row (lanes = 1).
template <class S, class Vis> void reduce_row(const S* x, int64_t n, Vis& vis) {
  using T = tp::Compute<S>;
  using IO = Io<S>;
  using V = Vec<T>;
  constexpr int W = V::W;
  vis.init_out(1);
  for (int64_t b = 0; b < n; b += kRowBlock<T, Vis>) {
    const int64_t end = std::min(n, b + kRowBlock<T, Vis>);
    vis.reset();
    int64_t i = b;
    typename V::R v[kUnroll];
    for (; i + kUnroll * W <= end; i += kUnroll * W) {
      if (Vis::kPrefetch) prefetch_ahead(x + i);
      IO::template load_unordered<kUnroll>(x + i, v);  // (a row's lanes all fold into one result)
      step_row(vis, v);
    }
    if (i < end) {  // tail: masked loads; missing lanes (and whole registers) = kFill
      for (int u = 0; u < kUnroll; ++u)
        v[u] = IO::load_partial(x + i + u * W, (int)std::clamp<int64_t>(end - i - u * W, 0, W), Vis::kFill);
      step_row(vis, v);
    }
    vis.fold_row();
  }
}

// A panel's passes prefetch the step kPanelAhead steps ahead, into the L2 (for writing
// where they store it). Its steps lie a whole row of the array apart, each a few lines:
// the hardware prefetchers, which follow streams within a page, track too few of them
// (64 steps, 64 pages) and serve a long axis late. Xeon VM (2 MiB L2, 260 MiB L3),
// one thread, in the L3, ns per element (tools/ab_builds.py), none / 8 steps ahead
// into the L2 / into the L1 at 4, 8, 16 steps: float32 softmax over axis 0 of
// 4096x4096 2.80 / 1.59 / 1.50, 1.51, 1.63; logsumexp 1.50 / 0.93 / 1.09, 0.96, 0.94;
// bfloat16 softmax 2.22 / 1.16 / 1.32, 1.26, 1.17; axis 1 of (8, 64, 8192), float32
// softmax 1.06 / 0.98 / 1.00, 0.96, 0.98. Short axes (4, 16 steps) unchanged.
// Scratch panels (steps 256 bytes apart) and other close steps are prefetched too:
// without it, float32 softmax over axis 0 of 4096x256 took 1.24 ns per element against
// 1.05, bfloat16 over 4096x64 0.64 against 0.62 (steps closer than 1 KiB not prefetched).
constexpr int64_t kPanelAhead = 8;
template <bool Write, class S> inline void prefetch_panel_step(const S* p, int lanes) {
  const char* c = (const char*)p;
  for (int b = 0; b < lanes * (int)sizeof(S); b += 64) __builtin_prefetch(c + b, Write ? 1 : 0, 2);
}

// Reduce a panel: lanes contiguous, step sx along the axis.
template <class S, class Vis> void reduce_panel(const Group<S>& g, Vis& vis) {
  using IO = Io<S>;
  using V = Vec<tp::Compute<S>>;
  constexpr int W = V::W;
  vis.init_out(g.lanes);
  const int nvec = (g.lanes + W - 1) / W;
  for (int64_t b = 0; b < g.n; b += kPanelBlock) {
    const int64_t end = std::min(g.n, b + kPanelBlock);
    vis.reset();
    for (int64_t j = b; j < end; ++j) {
      const S* xj = g.x + j * g.sx;
      if (j + kPanelAhead < g.n) prefetch_panel_step<false>(xj + kPanelAhead * g.sx, g.lanes);
      if (nvec == kUnroll && g.lanes == kUnroll * W) {
        for (int u = 0; u < kUnroll; ++u) vis.step(u, IO::load(xj + u * W));
      } else {
        for (int u = 0; u < nvec; ++u) vis.step(u, IO::load_partial(xj + u * W, std::min(W, g.lanes - u * W), Vis::kFill));
      }
    }
    vis.fold_panel(g.lanes);
  }
}

// Whether stores to y fall just ahead of loads from x modulo 4 KiB (y - x in 1..256
// bytes, mod 4096): a load whose address matches a pending store's in its low 12 bits
// waits for it (4 KiB aliasing), and streaming stores stay pending long. write_row then
// takes normal stores. Zen 1 VM, two_pass softmax of 16 MiB (one thread), ns per element:
// streamed, float64 7.4 (y - x = 0 or beyond 256 bytes) against 13-14.7 (8-64 bytes)
// with each step's stores after its loads; float32 2.14 against 2.7-3.1 even with the
// loads a step ahead of the stores; normal stores 7.25 and 2.15 at every distance.
// log_softmax's pass 2 (no exp) likewise: float64 32x128256, 15.4 ms against 24.5.
inline bool stores_just_ahead(const void* y, const void* x) {
  const uintptr_t d = ((uintptr_t)y - (uintptr_t)x) & 4095;
  return d != 0 && d <= 256;
}

// The rows (up to three; null for none) that a write_row's f reads: streaming stores
// just ahead of one of them modulo 4 KiB (stores_just_ahead) become normal stores.
struct Reads {
  const void* rows[3] = {};
  bool aliased_by(const void* y) const {
    for (const void* r : rows)
      if (r && stores_just_ahead(y, r)) return true;
    return false;
  }
};

// Write a contiguous row y[0..n) from f(i, k, u): the vector of elements i..i+k (k <= W
// lanes; u the unrolled register it stands for); f reads the rows `reads`, and
// `prefetch` (may be null) is the one to prefetch ahead. `stream`: streaming stores,
// which the caller decides by tp::use_streaming_stores (streaming_stores.h). They need
// vector-aligned addresses, so a partial head is peeled first (f's vectors then start
// anywhere in the row: scale_blocks handles one across two of its blocks), and an sfence
// orders them before whatever the caller stores next (another thread may read y once
// the pass returns). Normal stores peel nothing: where an element falls in f's vectors
// stays independent of y's address, so in place and out of place give the same bits
// even where the compiler contracts f's multiply and add into an FMA in one loop and
// not in another (the cross-entropy's gradient).
template <class S, class P, class F> void write_row(S* y, int64_t n, bool stream, Reads reads, const P* prefetch, F&& f) {
  using V = Vec<tp::Compute<S>>;
  using IO = Io<S>;
  constexpr int W = V::W;
  int64_t i = 0;
  stream = stream && W > 1 && ((uintptr_t)y % sizeof(S)) == 0 && !reads.aliased_by(y);
  if (stream) {  // aligned to W * sizeof(S) bytes: one vector's stored width
    const int64_t mis = (int64_t)(((uintptr_t)y / sizeof(S)) % W);
    if (mis) {
      const int h = (int)std::min<int64_t>(n, W - mis);
      IO::store_partial(y, f(0, h, 0), h);
      i = h;
    }
    for (; i + kUnroll * W <= n; i += kUnroll * W) {
      if (prefetch) prefetch_ahead(prefetch + i);
      IO::template stream_n<kUnroll>(y + i, [&](int u) { return f(i + u * W, W, u); });
    }
  } else {
    for (; i + kUnroll * W <= n; i += kUnroll * W) {
      if (prefetch) prefetch_ahead(prefetch + i);
      IO::template store_n<kUnroll>(y + i, [&](int u) { return f(i + u * W, W, u); });
    }
  }
  // The whole vectors after the unrolled loop stream too: a normal store to a line not in
  // the cache waits on its read-for-ownership, and the stores behind it queue (rows of
  // 4096 floats 16 bytes past a line, after the peel, end in 3 whole vectors: two_pass
  // softmax of 4096x4096 into such an output 7.5 -> 6.5 ms, one thread, cold, Zen 4; see
  // the README, "Aligned rows").
  for (; i + W <= n; i += W) stream ? IO::stream(y + i, f(i, W, 0)) : IO::store(y + i, f(i, W, 0));
  if (i < n) IO::store_partial(y + i, f(i, (int)(n - i), 0), (int)(n - i));
  if (stream) V::sfence();
}

// A float32 row of the calling thread's own, for a half row widened once: the reload's
// exp beyond its stack scratch row (softmax_passes.cpp), float16 g and y in the backward
// (softmax_backward.cpp). One per thread (the pool's workers live on), grown to the
// longest row it has served, at most 2 * kWideRowElements (kernel_api.h).
inline float* wide_row(int64_t n) {
  thread_local std::vector<float> row;
  if ((int64_t)row.size() < n) row.resize((size_t)n);
  return row.data();
}

// Full or partial (missing lanes = fill) load of k <= W elements.
template <class S> inline typename Vec<tp::Compute<S>>::R load_k(const S* p, int k, tp::Compute<S> fill) {
  return k == Vec<tp::Compute<S>>::W ? Io<S>::load(p) : Io<S>::load_partial(p, k, fill);
}

// Whether a map visitor's apply(u, x) is elementwise and the same for every register u
// along a row (Vis::kElementwise): then an element may pass through any lane.
template <class Vis, class = void> struct Elementwise : std::false_type {};
template <class Vis> struct Elementwise<Vis, std::void_t<decltype(Vis::kElementwise)>>
    : std::bool_constant<Vis::kElementwise> {};

// A map over a contiguous row; x and y may differ in storage type when they share the
// compute type (a half row mapped into a float32 scratch row). An elementwise map of one
// storage type with normal stores takes whole steps through Io's unordered loads and
// stores (bfloat16: a pair of vectors per wide load and store, no widening or narrowing
// shuffle; in cache, one thread, Zen 4: bfloat16 softmax two_pass of 256K 0.440 -> 0.420 ns
// per element, log_softmax of 16x4096 0.351 -> 0.330);
// streaming stores keep write_row's aligned path.
template <class SX, class SY, class Vis> void map_row(const SX* x, SY* y, int64_t n, Vis& vis, bool stream) {
  static_assert(std::is_same_v<tp::Compute<SX>, tp::Compute<SY>>);
  using V = Vec<tp::Compute<SY>>;
  constexpr int W = V::W;
  int64_t i = 0;
  if constexpr (std::is_same_v<SX, SY> && !std::is_same_v<SY, tp::Compute<SY>> && Elementwise<Vis>::value) {
    if (!stream) {
      for (; i + kUnroll * W <= n; i += kUnroll * W) {
        if (Vis::kPrefetch) prefetch_ahead(x + i);
        typename V::R v[kUnroll];
        Io<SX>::template load_unordered<kUnroll>(x + i, v);
        for (int u = 0; u < kUnroll; ++u) v[u] = vis.apply(u, v[u]);
        Io<SY>::template store_unordered<kUnroll>(y + i, v);
      }
    }
  }
  write_row(y + i, n - i, stream, Reads{{x + i}}, Vis::kPrefetch ? x + i : nullptr,
            [&](int64_t j, int k, int u) { return vis.apply(u, load_k(x + i + j, k, Vis::kFill)); });
}

// A map over a panel of n steps and `lanes` lanes: step j of x at x + j * sx, of y at
// y + j * sy. As in map_row, x and y may differ in storage type when they share the
// compute type (a half panel into a float32 scratch panel and back). Normal stores
// only: streaming stores exist for contiguous rows (write_row), and a panel ignores
// `stream`.
template <class SX, class SY, class Vis>
void map_panel(const SX* x, int64_t sx, SY* y, int64_t sy, int64_t n, int lanes, Vis& vis) {
  static_assert(std::is_same_v<tp::Compute<SX>, tp::Compute<SY>>);
  constexpr int W = Vec<tp::Compute<SY>>::W;
  const int nvec = (lanes + W - 1) / W;
  const bool full = nvec == kUnroll && lanes == kUnroll * W;
  for (int64_t j = 0; j < n; ++j) {
    const SX* xj = x + j * sx;
    SY* yj = y + j * sy;
    if (j + kPanelAhead < n) {
      prefetch_panel_step<false>(xj + kPanelAhead * sx, lanes);
      prefetch_panel_step<true>(yj + kPanelAhead * sy, lanes);
    }
    if (full) {
      Io<SY>::template store_n<kUnroll>(yj, [&](int u) { return vis.apply(u, Io<SX>::load(xj + u * W)); });
    } else {
      for (int u = 0; u < nvec; ++u) {
        const int k = std::min(W, lanes - u * W);
        Io<SY>::store_partial(yj + u * W, vis.apply(u, Io<SX>::load_partial(xj + u * W, k, Vis::kFill)), k);
      }
    }
  }
}
template <class S, class Vis> void map_panel(const Group<S>& g, Vis& vis) {
  map_panel(g.x, g.sx, g.y, g.sy, g.n, g.lanes, vis);
}

// The loop for a group's shape.
template <bool Panel, class S, class Vis> void reduce(const Group<S>& g, Vis& vis) {
  if (Panel)
    reduce_panel(g, vis);
  else
    reduce_row(g.x, g.n, vis);
}
template <bool Panel, class S, class Vis> void map(const Group<S>& g, Vis& vis, bool stream) {
  if (Panel)
    map_panel(g, vis);
  else
    map_row(g.x, g.y, g.n, vis, stream);
}

}  // namespace TP_NS
