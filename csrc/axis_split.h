// Splitting one group along its axis over threads (for few, long rows), with the
// merge of each pass's per-chunk results. ISA-independent, header-only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernel_api.h"
#include "scaled_sum.h"
#include "threads.h"

namespace tp {

// Runs the passes over one group, either whole or split along the axis into `chunks`
// chunks on as many threads. Maps run chunk by chunk (each); reductions give per-chunk
// partial results, merged lane by lane: maxima by max, two-pass sums exactly
// (ScaledSum), plain sums of exp(x - max) by addition (every chunk used the same max),
// online sums by rescaling to the larger maximum.
template <class S> struct AxisSplit {
  using T = Compute<S>;  // S: storage type of x and y; T: of everything else
  const Passes<S>& P;
  Group<S> g;
  int chunks;  // 1 = run inline

  Group<S> chunk(int c) const {
    const int64_t len = (g.n + chunks - 1) / chunks;
    const int64_t lo = std::min(g.n, c * len), hi = std::min(g.n, lo + len);
    Group<S> s = g;
    s.x += lo * g.sx;
    s.y += lo * g.sy;
    s.n = hi - lo;
    return s;
  }
  // One parallel region over the chunks; small rows do not wake sleeping workers.
  template <class F> void on_chunks(F&& f) const { parallel(chunks, f, g.n * g.lanes >= kWakeElements); }
  template <class F> void each(F&& f) const {
    if (chunks == 1)
      f(g);
    else
      on_chunks([&](int c) { f(chunk(c)); });
  }
  // Reductions: per-chunk partial results in `parts`, merged lane by lane.
  void two_pass_sum(const T* shift, ScaledSum* out, T* mx) const {
    if (chunks == 1) return P.two_pass_sum(g, shift, out, mx);
    std::vector<ScaledSum> parts((size_t)chunks * kMaxLanes);
    std::vector<T> maxes((size_t)chunks * kMaxLanes);
    on_chunks([&](int c) {
      P.two_pass_sum(chunk(c), shift, &parts[(size_t)c * kMaxLanes], &maxes[(size_t)c * kMaxLanes]);
    });
    for (int l = 0; l < g.lanes; ++l) {
      out[l] = kEmptyScaledSum;
      mx[l] = -std::numeric_limits<T>::infinity();
      for (int c = 0; c < chunks; ++c) {
        const ScaledSum& p = parts[(size_t)c * kMaxLanes + l];
        scaled_sum_merge(out[l], p.value(), p.E);
        mx[l] = std::max(mx[l], maxes[(size_t)c * kMaxLanes + l]);
      }
    }
  }
  void max(T* out) const {
    if (chunks == 1) return P.max(g, out);
    std::vector<T> parts((size_t)chunks * kMaxLanes);
    on_chunks([&](int c) { P.max(chunk(c), &parts[(size_t)c * kMaxLanes]); });
    for (int l = 0; l < g.lanes; ++l) {
      out[l] = -std::numeric_limits<T>::infinity();
      for (int c = 0; c < chunks; ++c) {
        const T v = parts[(size_t)c * kMaxLanes + l];
        out[l] = (v > out[l] || v != v) ? v : out[l];
      }
    }
  }
  // Sums of exp: f(chunk, out) fills one double per lane.
  template <class F> void sum(F&& f, double* out) const {
    if (chunks == 1) return f(g, out);
    std::vector<double> parts((size_t)chunks * kMaxLanes);
    on_chunks([&](int c) { f(chunk(c), &parts[(size_t)c * kMaxLanes]); });
    for (int l = 0; l < g.lanes; ++l) {
      out[l] = 0;
      for (int c = 0; c < chunks; ++c) out[l] += parts[(size_t)c * kMaxLanes + l];
    }
  }
  void online(double* m, double* s) const {
    if (chunks == 1) return P.online(g, m, s);
    std::vector<double> pm((size_t)chunks * kMaxLanes), ps((size_t)chunks * kMaxLanes);
    on_chunks([&](int c) { P.online(chunk(c), &pm[(size_t)c * kMaxLanes], &ps[(size_t)c * kMaxLanes]); });
    for (int l = 0; l < g.lanes; ++l) {
      m[l] = -INFINITY, s[l] = 0;
      for (int c = 0; c < chunks; ++c) online_merge(m[l], s[l], pm[(size_t)c * kMaxLanes + l], ps[(size_t)c * kMaxLanes + l]);
    }
  }
};

}  // namespace tp
