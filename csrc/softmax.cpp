// The softmax family (softmax, log_softmax, logsumexp) by its four algorithms, written
// over the per-ISA passes (kernel_api.h): the passes each algorithm makes, the lse
// from their sums, the rows they hand to the special-value scan, and how a problem is
// cut into groups and spread over threads. ISA-independent.
//
// Two-pass: pass 1 sums exp(x) as m * 2^e pairs with their own exponent (no maximum
// needed first), pass 2 writes. Max-first: the maximum, then the sum of exp(x - max)
// (three-pass reload: also storing exp(x - max), rescaled in pass 3; recompute: pass 3
// recomputes it), or both at once (online).
#include "softmax.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "axis_split.h"
#include "dispatch.h"
#include "kernel_api.h"
#include "lse.h"
#include "special_values.h"
#include "streaming_stores.h"
#include "threads.h"

namespace tp {

namespace {

template <class S> void fill_lane(const Group<S>& g, int lane, Compute<S> v) {
  for (int64_t j = 0; j < g.n; ++j) g.y[lane + j * g.sy] = Storage<S>::narrow(v);
}

// A per-lane result (an lse) into x's storage type, rounded once more for the halves.
// logsumexp's rows up to this many bytes of the compute type take rows_reload's blocks
// (run_typed). Xeon VM, one thread, 4M elements in rows of n, ns per element, two-pass /
// blocks: float32 n = 16 11.1 / 1.7, 64 2.7 / 0.55, 256 0.90 / 0.35, 1024 0.42-0.48 /
// 0.29-0.38, 4096 0.30-0.32 / 0.31-0.36; float64 64 2.9 / 1.0-1.6, 512 1.1 / 0.9-1.1,
// 2048 0.67-0.93 / 1.1-1.2; bfloat16 64 2.5 / 0.75, 1024 0.44 / 0.38-0.41, 2048 0.36 / 0.44.
constexpr int64_t kLseBlockRowBytes = 4096;

template <class S> void put(S* p, double v) { *p = Storage<S>::narrow((Compute<S>)v); }

// Steps of a panel that Algorithms::scratch_panel keeps on the stack in the compute type
// T: 16 KiB (64 float32 steps, 32 double). Longer float32 axes, up to 1 MiB (half the
// L2 of the smaller cores), take a scratch panel of the calling thread's own (the pool's
// workers live on), grown to the longest served.
template <class T> constexpr int64_t kPanelScratchSteps = 16384 / (kMaxLanes * sizeof(T));
template <class T> constexpr int64_t kPanelScratchMaxSteps = std::is_same_v<T, float> ? 4096 : kPanelScratchSteps<T>;
inline float* thread_scratch_panel(int64_t steps) {
  thread_local std::vector<float> panel;
  const size_t size = (size_t)(steps * kMaxLanes) + 16;
  if (panel.size() < size) panel.resize(size);
  // 64-byte aligned as the stack's: whole lines per step.
  return panel.data() + (-(uintptr_t)panel.data() / sizeof(float)) % 16;
}

// One lane of a group, as a group of its own (a strided row): for the rare fix-ups.
template <class T> Group<T> lane_of(const Group<T>& g, int l) {
  Group<T> s = g;
  s.x += l;
  s.y += l;
  s.lanes = 1;
  return s;
}

// y is x (an in-place call: Python refuses any other overlap). Rows that fail the fast
// path are then scanned, and kept where they are redone, before a pass writes y.
template <class T> bool in_place(const Group<T>& g) { return (const void*)g.x == (const void*)g.y; }

// Per-lane values of the two-pass algorithm, between its passes.
template <class T> struct TwoPassLanes {
  ScaledSum sum[kMaxLanes];  // pass 1: sum of exp(x - shift)
  T max[kMaxLanes];          // pass 1: maximum of x - shift
  // softmax, pass 2: y = m * scale * 2^(e - exp2) for exp(x - shift) = m * 2^e
  T scale[kMaxLanes], exp2[kMaxLanes];
  // log_softmax, pass 2: y = (x - hi) - lo, hi + lo = the lse
  T hi[kMaxLanes], lo[kMaxLanes];
  bool redo[kMaxLanes];  // not accepted: special values or outside the accurate domain
};

// Per-lane values of the max-first algorithms (three-pass reload and recompute, online).
template <class T> struct MaxFirstLanes {
  T max[kMaxLanes];              // the maximum (online: the running maximum, rounded to T)
  double online_max[kMaxLanes];  // online: the running maximum as the pass returned it
  double sum[kMaxLanes];         // sum of exp(x - max)
  T inv_sum[kMaxLanes];          // softmax, last pass: y = exp(x - max) * inv_sum
  T log_sum[kMaxLanes];          // log_softmax, last pass: y = (x - max) - log_sum
  bool redo[kMaxLanes];          // special values: redone by a scalar scan
};

// One op by one algorithm over groups (kernel_api.h, Group). `chunks` > 1 splits each
// group along its axis over that many threads (AxisSplit). S: the storage type of x, y
// and the lse; T: the compute type of everything else.
template <class S> struct Algorithms {
  using T = Compute<S>;
  // The three-pass reload stores exp(x - max) in y for its last pass to scale. In a
  // 16-bit y it would be rounded twice (there, then after scaling), so the halves
  // recompute it from x in the last pass instead (as three_pass_recompute does): the
  // values a float32 reload gives, at the same traffic, with no float32 temporary.
  // (Blocks of short contiguous rows, Passes::rows_reload, keep it in a float32 row.)
  static constexpr bool kReloadStores = std::is_same_v<S, T>;
  const SoftmaxKernels<S>& kernels;
  Op op;
  Algo algo;
  bool stream;  // asked for by the caller; streaming_stores.h decides per pass
  int chunks = 1;

  const Passes<S>& passes_for(const Group<S>& g) const {
    return (g.lanes == 1 && g.sx == 1 && g.sy == 1) ? kernels.row : kernels.panel;
  }
  AxisSplit<S> split(const Group<S>& g) const { return AxisSplit<S>{passes_for(g), g, chunks}; }
  bool stream_final() const { return use_streaming_stores(stream, Reuse::kFinalOutput); }

  void run(const Group<S>& g, S* lse) const {
    switch (algo) {
      case Algo::kTwoPass: return two_pass(g, lse, nullptr);
      default: return max_first(g, lse);
    }
  }

  // Two-pass (extended exponent). `shift` (one per lane, or null for 0) is the row
  // maximum on a redo of a row outside the accurate domain.
  void two_pass(const Group<S>& g, S* lse, const T* shift) const {
    const AxisSplit<S> axis = split(g);
    TwoPassLanes<T> lane;
    axis.two_pass_sum(shift, lane.sum, lane.max);  // shift == nullptr: the common, unshifted kernel
    // Accept a lane when its sum is finite and its largest exponent lies where the
    // reduction is exact and clamped elements are negligible (kernel_api.h, Numerics).
    constexpr double kLog2e = 1.4426950408889634;
    const double e_hi = std::floor(Numerics<T>::kAccurate * kLog2e) - 2;
    const double e_lo = std::ceil((-Numerics<T>::kAccurate + Numerics<T>::kMargin) * kLog2e);
    int redone = 0;
    for (int l = 0; l < g.lanes; ++l) {
      const ScaledSum p{lane.sum[l].value(), lane.sum[l].E, 0.0};
      lane.redo[l] = !(std::isfinite(p.S) && p.S > 0 && p.E <= e_hi && p.E >= e_lo);
      redone += lane.redo[l];
      if (lane.redo[l]) {
        lane.scale[l] = lane.exp2[l] = lane.hi[l] = lane.lo[l] = 0;
        continue;
      }
      // The row's lse = base + logs: base its maximum, logs = log(sum exp(x - base)) >= 0.
      double logs = 0;
      if (op != Op::kSoftmax || lse) {
        T mM, eM;
        kernels.extexp(lane.max[l], &mM, &eM);
        logs = log_sum_rel_max(p, lane.max[l], mM, eM);
      }
      const double base = (shift ? (double)shift[l] : 0.0) + (double)lane.max[l];  // exact: max = 0 after a shift
      if (op == Op::kSoftmax) {
        // y = m * (1/S) * 2^(e - E) with S normalised to [0.5, 1): m/S stays in about
        // [0.7, 2.9], which Pow2Scale::out needs to round into subnormals exactly once.
        int ex2;
        const double fr = std::frexp(p.S, &ex2);
        lane.scale[l] = (T)(1.0 / fr);
        lane.exp2[l] = (T)(p.E + ex2);
        if (lse) put(lse + l, base + logs);  // asked for alongside softmax (cross-entropy)
      } else if (op == Op::kLogSumExp) {
        put(lse + l, base + logs);  // >= the maximum: logs >= 0 and rounding is monotone
      } else {  // log_softmax: y = (x - hi) - lo <= 0 with hi + lo = base + logs; no exp
        split_sum(base, logs, lane.hi[l], lane.lo[l]);
      }
    }
    // Lanes not accepted are scanned before pass 2 writes y, which may be x (in place);
    // those to redo relative to their maximum are kept aside then if pass 2 still runs.
    LaneScan<T> scans[kMaxLanes];
    std::vector<S> kept;  // in place: x of the lanes redone after pass 2, n apiece
    const bool write = op != Op::kLogSumExp && redone < g.lanes;
    for (int l = 0; l < g.lanes && redone; ++l) {
      if (!lane.redo[l]) continue;
      const Group<S> one = lane_of(g, l);
      scans[l] = scan_lane(one.x, one.n, one.sx);
      if (scans[l].kind == Special::kNone && shift)
        throw std::logic_error("twopass: row still outside the accurate domain after shifting");
      if (scans[l].kind == Special::kNone && write && in_place(g))
        for (int64_t j = 0; j < g.n; ++j) kept.push_back(one.x[j * one.sx]);
    }
    if (write && op == Op::kSoftmax)
      axis.each([&](const Group<S>& c) {
        passes_for(c).two_pass_write(c, shift, lane.scale, lane.exp2, stream_final());
      });
    else if (write)
      axis.each([&](const Group<S>& c) { passes_for(c).log_softmax_write(c, lane.hi, lane.lo, stream_final()); });
    const S* next_kept = kept.data();
    for (int l = 0; l < g.lanes && redone; ++l) {
      if (!lane.redo[l]) continue;
      Group<S> one = lane_of(g, l);
      S* lse1 = lse ? lse + l : nullptr;
      if (scans[l].kind != Special::kNone) {
        write_special(one, lse1, scans[l].kind);
        continue;
      }
      if (!kept.empty()) {
        one.x = next_kept, one.sx = 1;
        next_kept += g.n;
      }
      const T m = scans[l].max;  // outside the accurate domain: redo relative to the maximum
      two_pass(one, lse1, &m);
    }
  }

  void write_special(const Group<S>& one, S* lse, Special kind) const {
    if (lse) *lse = Storage<S>::narrow(special_lse<T>(kind));
    if (op != Op::kLogSumExp) fill_lane(one, 0, kNaN<T>);  // NaN, +inf, or all -inf: the whole row is NaN
  }

  // The three-pass reload's softmax on one contiguous row split along its axis over
  // threads: passes 1 and 2 fused on each chunk (Passes::reload_part: the chunk's
  // running maximum found block by block as its exps are stored), then one pass that
  // scales each block by its factor. Two parallel regions rather than three, and x read
  // once while the exps compute rather than once more by a max pass that overlaps
  // nothing (Zen 4 VM, AVX-512, 2 threads, float64 rows of 64K..2M: see
  // _softmax.auto_algorithm).
  // (In place, a special row's kind is lost with x, which only its lse would need.)
  bool reload_split_ok(const Group<S>& g, const S* lse) const {
    return chunks > 1 && algo == Algo::kThreePassReload && op == Op::kSoftmax && g.lanes == 1 && g.sx == 1 &&
           g.sy == 1 && kernels.row.reload_part && !(lse && in_place(g));
  }
  void reload_split(const Group<S>& g, S* lse) const {
    const AxisSplit<S> axis = split(g);
    const int64_t per = reload_blocks(axis.chunk(0).n);  // the first chunk is the longest
    std::vector<T> refs((size_t)(chunks * per)), m((size_t)chunks);
    std::vector<double> s((size_t)chunks);
    axis.on_chunks([&](int c) {
      const Group<S> p = axis.chunk(c);
      kernels.row.reload_part(p.x, p.y, p.n, &refs[(size_t)(c * per)], &m[(size_t)c], &s[(size_t)c]);
    });
    // The row's maximum and sum: each chunk's sum rescaled to it (an all -inf chunk has
    // s = 0; NaN or +inf make the sum NaN).
    T mx = -std::numeric_limits<T>::infinity();
    for (int c = 0; c < chunks; ++c) mx = (m[(size_t)c] > mx || m[(size_t)c] != m[(size_t)c]) ? m[(size_t)c] : mx;
    double sum = 0;
    for (int c = 0; c < chunks; ++c)
      if (s[(size_t)c] != 0) sum += s[(size_t)c] * exp_of_difference(m[(size_t)c], mx);
    if (!(std::isfinite(sum) && sum > 0 && std::isfinite(mx))) {
      // In place, pass 2 has overwritten x; the softmax of every special row is NaN.
      if (in_place(g)) return write_special(g, lse, Special::kNaN);
      const LaneScan<T> scan = scan_lane(g.x, g.n, g.sx);
      if (scan.kind == Special::kNone) throw std::logic_error("twopass: finite row with a non-finite sum");
      return write_special(g, lse, scan.kind);
    }
    axis.on_chunks([&](int c) {
      const Group<S> p = axis.chunk(c);
      kernels.row.reload_part_scale(p.y, p.n, &refs[(size_t)(c * per)], mx, sum);
    });
    if (lse) put(lse, (double)mx + log_at_least_1(sum));
  }

  // A panel (not split over threads) of an axis of at most kPanelScratchMaxSteps goes
  // through a scratch panel of the compute type (Passes::max_to_scratch): pass 1 reads
  // x, the others read the scratch panel from the L1 or the L2, whatever x's layout (a
  // panel's steps lie a whole row of the array apart; strides of a power of two bytes
  // put them in the same few sets, of the L1 and, with huge pages, of the L2). The
  // softmax keeps exp(x - m) there, computed once, and writes y once: before, float32
  // stored exp in y for pass 3 to read back, the recompute and the halves computed exp
  // again in pass 3. log_softmax gains only on bfloat16 (float32 and float16 read x as
  // fast as the scratch panel, and float16's pass 1 compares 16-bit keys without
  // widening); float64 only on axes of at most 32 steps (beyond, a double scratch panel
  // measured slower: softmax of (64, 65536) over axis 0, 2.9 -> 3.8 ns per element).
  // Xeon VM, one thread, ns per element, before / after (tools/ab_builds.py): softmax
  // reload float32 over axis 0 of (16, 16384) 0.93 / 0.85, (64, 65536) 1.01 / 0.87,
  // (1024, 4096) 1.62 / 1.08, (4096, 4096) 2.92 / 2.18, axis 1 of (2, 64, 2048) 0.95 /
  // 0.89; recompute 1.03 / 0.85 and 3.31 / 2.22 over the first and the last; float64
  // over axis 1 of (4, 4, 16384), reload 1.75 / 1.60, recompute 2.90 / 2.10; bfloat16
  // reload (16, 16384) 0.85 / 0.71, (4096, 4096) 2.36 / 1.74; float16 0.80 / 0.65, 2.07 /
  // 1.38; bfloat16 log_softmax 0.94 / 0.78, 2.33 / 1.59.
  bool scratch_panel(const Group<S>& g, const AxisSplit<S>& axis) const {
    const bool op_gains = op == Op::kSoftmax || (op == Op::kLogSoftmax && std::is_same_v<S, bf16>);
    return op_gains && algo != Algo::kOnline && axis.chunks == 1 && g.n <= kPanelScratchMaxSteps<T> &&
           passes_for(g).max_to_scratch;
  }

  // The max-first algorithms: three-pass reload, three-pass recompute, online.
  // A NaN or infinite maximum makes the sum NaN, which sends the lane to the scan.
  void max_first(const Group<S>& g, S* lse) const {
    if (reload_split_ok(g, lse)) return reload_split(g, lse);
    const AxisSplit<S> axis = split(g);
    MaxFirstLanes<T> lane;
    // Lanes that fail are scanned before a pass writes y, which may be x (in place).
    LaneScan<T> scans[kMaxLanes];
    uint64_t scanned = 0;  // by lane (kMaxLanes <= 64): a bit mask, nothing to clear per call
    static_assert(kMaxLanes <= 64, "scanned: one bit per lane");
    bool stored = false;  // three-pass reload, softmax: pass 2 already wrote exp(x - max)
    const bool in_scratch = scratch_panel(g, axis);  // passes 2 and 3 read the scratch panel
    alignas(64) T stack_scratch[kPanelScratchSteps<T> * kMaxLanes];
    T* scratch = stack_scratch;
    if constexpr (std::is_same_v<T, float>)
      if (in_scratch && g.n > kPanelScratchSteps<T>) scratch = thread_scratch_panel(g.n);
    if (in_scratch) {
      passes_for(g).max_to_scratch(g, lane.max, scratch);
      const Group<T> s{scratch, scratch, g.n, kMaxLanes, kMaxLanes, g.lanes};
      if (op == Op::kSoftmax)
        kernels.scratch_passes.exp_store_sum(s, lane.max, lane.sum, false);
      else
        kernels.scratch_passes.sumexp(s, lane.max, lane.sum);
    } else if (algo == Algo::kOnline) {
      axis.online(lane.online_max, lane.sum);
      for (int l = 0; l < g.lanes; ++l) lane.max[l] = (T)lane.online_max[l];
    } else {
      axis.max(lane.max);
      if (algo == Algo::kThreePassReload && op == Op::kSoftmax && kReloadStores) {
        // (With a finite maximum, only a NaN fails the sum below, and exp keeps it in y.)
        if (kernels.check_lanes(lane.max, nullptr, g.lanes, nullptr, nullptr, lane.redo))
          for (int l = 0; l < g.lanes; ++l)
            if (lane.redo[l]) {
              const Group<S> one = lane_of(g, l);
              scans[l] = scan_lane(one.x, one.n, one.sx);
              scanned |= uint64_t{1} << l;
            }
        // Pass 2 stores exp(x - max) for pass 3 to read back (streaming_stores.h).
        const bool stream2 = use_streaming_stores(stream, Reuse::kReadAgain);
        axis.sum([&](const Group<S>& c, double* out) { passes_for(c).exp_store_sum(c, lane.max, out, stream2); },
                 lane.sum);
        stored = true;
      } else {
        axis.sum([&](const Group<S>& c, double* out) { passes_for(c).sumexp(c, lane.max, out); }, lane.sum);
      }
    }
    // (Vectorized, in the kernels: a short axis's panels spend more on per-lane work than
    // on their passes otherwise.)
    double logs[kMaxLanes];
    const bool need_log = op == Op::kLogSoftmax || lse;
    const bool any_redo = kernels.check_lanes(lane.max, lane.sum, g.lanes, op == Op::kSoftmax ? lane.inv_sum : nullptr,
                                              need_log ? logs : nullptr, lane.redo) > 0;
    // s >= 1 (the maximum's own term is exp(0) = 1; the online rescaling may round it
    // just below): log(max(s, 1)) keeps log_softmax <= 0 and lse >= the maximum. A lane
    // to redo gets values it overwrites later.
    if (op == Op::kLogSoftmax)
      for (int l = 0; l < g.lanes; ++l) lane.log_sum[l] = (T)logs[l];
    if (lse && !any_redo)
      for (int l = 0; l < g.lanes; ++l) put(lse + l, (double)lane.max[l] + logs[l]);
    for (int l = 0; l < g.lanes && any_redo; ++l) {
      if (lane.redo[l])  // (finite values for the last pass, whose output the redo replaces)
        lane.max[l] = lane.inv_sum[l] = lane.log_sum[l] = 0;
      else if (lse)
        put(lse + l, (double)lane.max[l] + logs[l]);
    }
    for (int l = 0; l < g.lanes && any_redo; ++l)
      if (lane.redo[l] && !(scanned >> l & 1)) {
        const Group<S> one = lane_of(g, l);
        scans[l] = scan_lane(one.x, one.n, one.sx);
      }
    if (op == Op::kSoftmax && stored) {
      axis.each([&](const Group<S>& c) {
        Group<S> cy = c;  // pass 3 reads what pass 2 wrote
        cy.x = c.y;
        cy.sx = c.sy;
        passes_for(c).scale(cy, lane.inv_sum, use_streaming_stores(stream, Reuse::kInPlace));
      });
    } else if (op == Op::kSoftmax && in_scratch) {
      passes_for(g).scale_scratch(g, scratch, lane.inv_sum);
    } else if (op == Op::kLogSoftmax && in_scratch) {
      passes_for(g).log_softmax_write_scratch(g, scratch, lane.max, lane.log_sum);
    } else if (op == Op::kSoftmax) {
      axis.each([&](const Group<S>& c) { passes_for(c).exp_scale(c, lane.max, lane.inv_sum, stream_final()); });
    } else if (op == Op::kLogSoftmax) {
      axis.each([&](const Group<S>& c) { passes_for(c).log_softmax_write(c, lane.max, lane.log_sum, stream_final()); });
    }
    if (!any_redo) return;
    for (int l = 0; l < g.lanes; ++l) {
      if (!lane.redo[l]) continue;
      if (scans[l].kind == Special::kNone) throw std::logic_error("twopass: finite row with a non-finite sum");
      write_special(lane_of(g, l), lse ? lse + l : nullptr, scans[l].kind);
    }
  }
};

template <class S> void run_typed(const SoftmaxKernels<S>& kernels, const Problem& pb, int threads, bool stream) {
  const S* x = static_cast<const S*>(pb.x);
  S* y = static_cast<S*>(pb.y);
  // Groups: rows (inner == 1) or panels of up to `lanes` columns of a non-last axis.
  const int max_lanes = pb.inner == 1 ? 1 : pb.panel_lanes;
  // logsumexp over a non-last axis takes the max-first passes 1 and 2 on its panels: the
  // two-pass's panel kernel and its per-lane finish ran 1.4-9x slower at every length
  // measured (Xeon VM, one thread, logsumexp over axis 0 of (n, 2^22 / n), ns per element,
  // two-pass / max-first: float32 n = 4 22.0 / 2.4, 64 2.4 / 0.87, 512 5.6 / 0.90, 8192
  // 1.7 / 1.2, 32768 1.39 / 0.96; float64 64 8.9 / 1.5, 2048 5.0 / 4.2, 32768 2.2 / 2.2).
  const Algo algo = pb.op == Op::kLogSumExp && pb.inner > 1 ? Algo::kThreePassReload : pb.algo;
  Algorithms<S> alg{kernels, pb.op, algo, stream};
  const int64_t per_outer = (pb.inner + max_lanes - 1) / max_lanes;
  const int64_t groups = pb.outer * per_outer;
  if (groups == 0) return;
  const bool lse = pb.op == Op::kLogSumExp;
  auto group_at = [&](int64_t gi) {
    const int64_t o = gi / per_outer, c0 = (gi % per_outer) * max_lanes;
    Group<S> g;
    g.x = x + o * pb.xs_outer + c0;
    g.y = lse ? nullptr : y + o * pb.ys_outer + c0;
    g.n = pb.n;
    g.sx = pb.xs_n;
    g.sy = lse ? 1 : pb.ys_n;
    g.lanes = (int)std::min<int64_t>(max_lanes, pb.inner - c0);
    S* lse_out = lse ? y + o * pb.ys_outer + c0 : pb.lse ? static_cast<S*>(pb.lse) + o * pb.inner + c0 : nullptr;
    return std::make_pair(g, lse_out);
  };
  if (pb.n == 0) {  // empty axis: logsumexp is -inf (the empty sum), softmax writes nothing
    if (lse || pb.lse)
      for (int64_t gi = 0; gi < groups; ++gi) {
        auto [g, out] = group_at(gi);
        for (int l = 0; l < g.lanes; ++l) put(out + l, -std::numeric_limits<double>::infinity());
      }
    return;
  }
  const int64_t total = pb.outer * pb.n * pb.inner;
  threads = (int)std::max<int64_t>(1, std::min<int64_t>(threads, total / kMinPerThread));
  if (threads > 1 && groups < threads) {
    // Few long groups: split each along the axis; partial sums merge exactly.
    const int chunks = (int)std::min<int64_t>(threads, pb.n * std::min<int64_t>(pb.inner, max_lanes) / kMinPerChunk);
    if (chunks > 1) {
      alg.chunks = chunks;
      for (int64_t gi = 0; gi < groups; ++gi) {
        auto [g, out] = group_at(gi);
        alg.run(g, out);
      }
      return;
    }
    // Too short to split: one thread per group, on the same row paths as one thread (a
    // float32 row of 128K on 2 threads took the generic reload, 1.25x slower cold).
    threads = (int)groups;
  }
  // Contiguous rows by the three-pass reload (what algorithm="auto" takes for short
  // rows): blocks of rows per kernel call (Passes::rows_reload), which saves a call and
  // the per-row bookkeeping of Algorithms (65536x64 float32 softmax, one thread: 6.7 -> 3.3 ms).
  // Rows it flags (special values) take the general path, or are NaN where it has
  // overwritten them in place (then an lse, which needs the kind, is not asked of it).
  // logsumexp of short contiguous rows takes those blocks too, whatever its algorithm:
  // the max-first lse (rows_reload's passes 1 and 2, the second reading x from the L1
  // that the first brought it to: one read from memory, as the two-pass's), since the
  // two-pass's accurate finish per row (extexp, ldexp, exp and log1p in double) costs
  // more than a short row's whole work.
  const bool lse_blocks = lse && pb.inner == 1 && pb.xs_n == 1 && pb.ys_outer == 1 &&
                          pb.n * (int64_t)sizeof(Compute<S>) <= kLseBlockRowBytes && kernels.row.rows_reload;
  const bool row_blocks = (pb.inner == 1 && pb.xs_n == 1 && pb.ys_n == 1 && !lse &&
                           pb.algo == Algo::kThreePassReload && kernels.row.rows_reload && !(pb.lse && pb.x == pb.y)) ||
                          lse_blocks;
  parallel_ranges(groups, threads, total, [&](int64_t lo, int64_t hi) {
    if (!row_blocks) {
      for (int64_t gi = lo; gi < hi; ++gi) {
        auto [g, out] = group_at(gi);
        alg.run(g, out);
      }
      return;
    }
    constexpr int64_t kBlock = 256;
    uint8_t redo[kBlock];
    for (int64_t b = lo; b < hi; b += kBlock) {
      const int64_t k = std::min(kBlock, hi - b);
      S* lse_out = lse ? y + b : pb.lse ? static_cast<S*>(pb.lse) + b : nullptr;
      kernels.row.rows_reload(x + b * pb.xs_outer, lse ? nullptr : y + b * pb.ys_outer, k, pb.n, pb.xs_outer,
                              pb.ys_outer, pb.op == Op::kLogSoftmax, stream, lse_out, redo);
      for (int64_t i = 0; i < k; ++i) {
        if (!redo[i]) continue;
        auto [g, out] = group_at(b + i);
        if (redo[i] == 2)
          alg.write_special(g, out, Special::kNaN);
        else
          alg.run(g, out);
      }
    }
  });
}

}  // namespace

int64_t panel_scratch_steps(int dtype_bytes) {
  return dtype_bytes == 8 ? kPanelScratchMaxSteps<double> : kPanelScratchMaxSteps<float>;  // halves: float32
}

void run(const Problem& pb, Isa isa, int threads, bool stream) {
  const KernelTable& t = kernels(isa);
  switch (pb.dtype_bytes) {
    case 4: return run_typed<float>(t.f32, pb, threads, stream);
    case 8: return run_typed<double>(t.f64, pb, threads, stream);
    case 2: return pb.bf16 ? run_typed<bf16>(t.bf16s, pb, threads, stream) : run_typed<f16>(t.f16s, pb, threads, stream);
    default: throw std::invalid_argument("twopass: unsupported element size");
  }
}

}  // namespace tp
