// The interface between the per-ISA kernels (csrc/kernels/, compiled once per ISA) and
// the ISA-independent code (the algorithms in softmax.cpp, cross_entropy.cpp).
//
// Kernels see only groups of rows. A group is `lanes` independent rows of `n` elements;
// element j of lane l is x[l + j*sx] (and y[l + j*sy]). Two shapes occur:
//   - a contiguous row: lanes = 1, sx = sy = 1, vectorised along the row;
//   - a panel of a non-last axis: lanes <= kMaxLanes contiguous lanes, vectorised across
//     lanes, stepping sx / sy elements along the softmax axis.
// Every pass is one pass over memory; per-lane parameters and results are arrays of
// `lanes` entries. Sums come back in double (the two-pass one as a ScaledSum): the
// partial sums are folded into double every few thousand elements, so the normaliser
// of a long row is accurate to about one float32 ulp however long the row.
// Element types: x and y are of a storage type S (float, double, f16, bf16; half.h);
// everything else (per-lane parameters, maxima, results of reductions) is of its compute
// type T = Compute<S> (float for the halves, which are converted in registers).
#pragma once

#include <cstdint>

#include "half.h"
#include "scaled_sum.h"

namespace tp {

constexpr int kMaxLanes = 64;  // 4 vectors of 16 floats: one panel call

// How far ahead of its loads an exp-heavy pass prefetches its row (loops.h,
// prefetch_ahead), in bytes. Set once, before any kernel runs (the Python layer, from
// TWOPASS_PREFETCH_BYTES or its default; dispatch.cpp): the best distance follows the
// memory latency and one core's bandwidth, which differ from machine to machine.
extern int prefetch_bytes;

template <class T> struct Group {
  const T* x;
  T* y;
  int64_t n;
  int64_t sx, sy;
  int lanes;
};

// The passes over one group, for one loop shape (rows or panels); S the storage type.
template <class S> struct Passes {
  using T = Compute<S>;
  // Pass 1 of the two-pass algorithm: sum of exp(x - shift) as a ScaledSum, per lane,
  // and the maximum of x - shift (one vector max per vector: free while pass 1 waits on
  // memory; the driver measures the sum relative to it, see softmax.cpp). x below
  // shift - Numerics<T>::kAccurate is treated as that bound. shift null: 0.
  void (*two_pass_sum)(const Group<S>& g, const T* shift, ScaledSum* out, T* max);
  // Pass 2: y = p(x - shift) * scale * 2^(e(x - shift) - E), exp(x - shift) = p * 2^e.
  void (*two_pass_write)(const Group<S>& g, const T* shift, const T* scale, const T* E, bool stream);
  // Maximum per lane (NaN may or may not propagate: later passes detect it).
  void (*max)(const Group<S>& g, T* m);
  // Sum of exp(x - m) per lane.
  void (*sumexp)(const Group<S>& g, const T* m, double* s);
  // Online pass: running maximum m and sum s of exp(x - m) per lane.
  void (*online)(const Group<S>& g, double* m, double* s);
  // y = exp(x - m), returning the sum of y per lane (three-pass reload, pass 2).
  void (*exp_store_sum)(const Group<S>& g, const T* m, double* s, bool stream);
  // y = exp(x - m) * c (three-pass recompute and online, last pass).
  void (*exp_scale)(const Group<S>& g, const T* m, const T* c, bool stream);
  // y = x * c (three-pass reload, pass 3; x is the y of pass 2).
  void (*scale)(const Group<S>& g, const T* c, bool stream);
  // y = (x - hi) - lo: log_softmax's last pass, no exp. hi + lo is the lse split into
  // two T (hi the maximum or the lse rounded to T, lo the rest).
  void (*log_softmax_write)(const Group<S>& g, const T* hi, const T* lo, bool stream);
  // Rows only (null in the panel table): the three-pass reload over `rows` contiguous
  // rows of n elements (row r at x + r*xs, y + r*ys) in one call, softmax (log false;
  // lse[r] = the row's logsumexp when lse is not null) or log_softmax (log true). The
  // arithmetic of max, exp_store_sum and scale (or max, sumexp and log_softmax_write)
  // row by row (the per-block double sums compensated), without a call and the
  // driver's bookkeeping per row: for rows of 64 floats those
  // cost as much as the work. A row whose maximum or sum is not finite (NaN, +inf, all
  // -inf) gets redo[r] = 1 and an unspecified output, for the driver to redo, or 2
  // where that output has overwritten x (in place, y == x): softmax NaN throughout, the
  // kind of special value lost with x; otherwise redo[r] = 0. y null (with log false):
  // logsumexp, lse[r] alone from passes 1 and 2.
  // Pass 2 keeps exp(x - max) in a scratch row of kReloadScratchBytes (not in y: written
  // once, by pass 3, y needs no read-for-ownership; a 16-bit y would also round it
  // twice). Longer rows fuse passes 1 and 2 block by block and store exp in y (float,
  // double) or in a float32 row per thread (halves, up to kWideRowElements; beyond,
  // they recompute exp in pass 3). Either way the values a float32 reload would give.
  void (*rows_reload)(const S* x, S* y, int64_t rows, int64_t n, int64_t xs, int64_t ys, bool log, bool stream, S* lse,
                      uint8_t* redo);
  // Rows only (null in the panel table): exp_store_sum of one contiguous row into y of
  // the compute type, *s = the sum (the cross-entropy's softmax scratch row: for halves
  // float32, so exp is rounded once, by the gradient's write). `next` (may be null): a
  // row of n elements to prefetch into the L2 over this pass (loops.h, RowPrefetch).
  void (*exp_store_sum_wide)(const S* x, T* y, int64_t n, T m, double* s, bool stream, const S* next);
  // Rows only, and only where y can hold exp in the compute type (float, double; null
  // elsewhere): the reload's passes on a contiguous part of a row, for a row split along
  // its axis over threads (softmax.cpp, Algorithms::reload_split). reload_part fuses
  // passes 1 and 2 block by block as rows_reload does on a long row: y = exp(x - ref_k)
  // over block k, ref_k the part's running maximum there (refs[k]; -inf before the first
  // finite element), *m = the part's maximum, *s = sum of exp(x - *m). refs holds at
  // least reload_blocks(n) entries. reload_part_scale is pass 3: y *= f[k] over block
  // k, f[k] = exp(refs[k] - m) / s (m, s: the whole row's), refs overwritten by f.
  void (*reload_part)(const S* x, S* y, int64_t n, T* refs, T* m, double* s);
  void (*reload_part_scale)(S* y, int64_t n, T* refs, T m, double s);
  // Panels only (null in the row table): a short axis through a scratch panel of the
  // compute type (step j of lane l at scratch[j * kMaxLanes + l]; softmax.cpp,
  // Algorithms::scratch_panel). max_to_scratch is pass 1, m = the maximum per lane, with
  // x copied into the scratch panel; pass 2 runs on the scratch panel (SoftmaxKernels::
  // scratch_passes); the last pass writes y from it: y = scratch * c (softmax, the
  // scratch holding exp(x - m)) or y = (scratch - hi) - lo (log_softmax, the scratch x).
  void (*max_to_scratch)(const Group<S>& g, T* m, T* scratch);
  void (*scale_scratch)(const Group<S>& g, const T* scratch, const T* c);
  void (*log_softmax_write_scratch)(const Group<S>& g, const T* scratch, const T* hi, const T* lo);
};

// Entries reload_part's refs needs for n elements: its blocks are at least
// kReloadMinBlock elements (kUnroll vectors of 16 steps; 64 on the scalar build).
constexpr int64_t kReloadMinBlock = 64;
constexpr int64_t reload_blocks(int64_t n) { return n / kReloadMinBlock + 1; }

// exp(a - b) in double, the rounding of a - b corrected (TwoSum): exact for float
// anyway; for double, an error of |a - b| ulp otherwise (the reload's block and chunk
// factors). Defined once, outside the per-ISA builds (kernel_shared.cpp).
double exp_of_difference(double a, double b);

// The softmax-family kernels of one storage type.
template <class S> struct SoftmaxKernels {
  using T = Compute<S>;
  Passes<S> row, panel;
  // The panel passes of the compute type: pass 2 on a scratch panel (max_to_scratch).
  Passes<T> scratch_passes;
  // exp(x) = m * 2^e, the (m, e) of one element exactly as two_pass_sum's loop
  // computes it (same instructions, lane 0 of a broadcast vector).
  void (*extexp)(T x, T* m, T* e);
  // The max-first algorithms' check of a group's lanes (softmax.cpp, max_first), in the
  // ISA's vectors (a panel's per-lane scalar work outweighed a short axis's passes):
  // the number of lanes whose maximum or sum is not finite, or whose sum is not > 0
  // (sum null: whose maximum is not finite); where there are any, redo[l] says which.
  // For every lane, where not null (and then sum is not null either): inv_sum[l]
  // = 1 / sum[l] rounded to T; log_sum[l] = log(max(sum[l], 1)) in double, within 1.5 ulp
  // (the lanes to redo: unspecified).
  int (*check_lanes)(const T* max, const double* sum, int lanes, T* inv_sum, double* log_sum, bool* redo);
};

// Row helpers of the fused cross-entropy (cross_entropy.cpp; docs/cross_entropy.md).
// Logits x and gradient y of the storage type S; weights w, the softmax p, the
// soft-capped logits xc and the scalars of its compute type T (float for the halves).
template <class S> struct CrossEntropyRowKernels {
  using T = Compute<S>;
  // y = cap * tanh(x / cap): the soft-capped logits.
  void (*softcap)(const S* x, T* y, int64_t n, T cap);
  // y = x, widened (the rows the generic softmax driver takes over, in T).
  void (*widen)(const S* x, T* y, int64_t n);
  // sum_j x_j * w_j, or sum_j x_j when w is null (the label-smoothing term).
  double (*dot)(const S* x, const T* w, int64_t n);
  // y_j = (a * p_j - c * w_j) * (1 - (xc_j * inv_cap)^2): the gradient from the softmax
  // p, rounded once to S; w null means w_j = 1, xc null means no soft-cap; `stream`:
  // non-temporal stores; `next` (may be null): a row of n elements to prefetch into the
  // L2 over this pass.
  void (*gradient)(const T* p, S* y, const T* xc, const T* w, int64_t n, T a, T c, T inv_cap, bool stream,
                   const S* next);
};

// The backward passes of the softmax family over contiguous rows (kernels/softmax_backward.cpp):
// row r of g, y (or x) and gx starts at r * gs, r * ys (xs), r * xs (gxs). Every array
// of storage type S (halves computed in float32, as the forward).
template <class S> struct SoftmaxBackwardKernels {
  // softmax: gx = y * (g - sum(g * y)); log (log_softmax, y its output): gx = g - exp(y) * sum(g).
  void (*softmax)(const S* g, const S* y, S* gx, int64_t rows, int64_t n, int64_t gs, int64_t ys, int64_t xs, bool log,
                  bool stream);
  // logsumexp: gx = g[r] * exp(x - lse[r]), g and lse dense per row.
  void (*logsumexp)(const S* g, const S* x, const S* lse, S* gx, int64_t rows, int64_t n, int64_t xs, int64_t gxs,
                    bool stream);
  // softmax or log_softmax (log) over a panel: `lanes` (at most the table's lanes_f32 or
  // lanes_f64) contiguous columns of n steps, step j at offset j * step in g, y and gx.
  void (*softmax_panel)(const S* g, const S* y, S* gx, int64_t n, int lanes, int64_t step, bool log);
};

// Everything one ISA's build provides (kernels/table.cpp).
// rows_reload's scratch row (on the stack): with x's row, in the L1.
constexpr int64_t kReloadScratchBytes = 16 << 10;
// Longer float16/bfloat16 rows keep exp in a float32 row per thread up to this many
// elements (4 MiB: a row the caches can still hold; longer ones recompute exp).
constexpr int64_t kWideRowElements = int64_t{1} << 20;

struct KernelTable {
  const char* isa;
  int lanes_f32, lanes_f64;  // lanes of one panel call
  SoftmaxKernels<float> f32;
  SoftmaxKernels<double> f64;
  SoftmaxKernels<f16> f16s;  // float16 and bfloat16 storage, float32 compute
  SoftmaxKernels<bf16> bf16s;
  CrossEntropyRowKernels<float> ce_f32;
  CrossEntropyRowKernels<double> ce_f64;
  CrossEntropyRowKernels<f16> ce_f16;
  CrossEntropyRowKernels<bf16> ce_bf16;
  SoftmaxBackwardKernels<float> bwd_f32;
  SoftmaxBackwardKernels<double> bwd_f64;
  SoftmaxBackwardKernels<f16> bwd_f16;
  SoftmaxBackwardKernels<bf16> bwd_bf16;
};

// Domain of the extended-exponent kernels, per element type. Inside it the range
// reduction x - e*ln2 is exact enough for ~1 ulp; rows whose maximum lies outside are
// redone by the driver after subtracting the maximum.
template <class T> struct Numerics;
template <> struct Numerics<float> {
  static constexpr float kAccurate = 4096.0f;  // |e| < 2^13: e * ln2 parts exact
  static constexpr float kMargin = 128.0f;     // exp(-128) < float's smallest subnormal / 2
  static constexpr float kExpMin = -104.0f;    // exp(x) rounds to 0 below this (2^-150: -103.97)
  static constexpr float kNormalMin = -87.0f;  // exp(x) is normal (>= 2^-126) above this
};
template <> struct Numerics<double> {
  static constexpr double kAccurate = 524288.0;  // |e| < 2^20
  static constexpr double kMargin = 1024.0;
  static constexpr double kExpMin = -746.0;  // (2^-1075: -745.13)
  static constexpr double kNormalMin = -708.0;
};

}  // namespace tp

// One table per ISA build (the namespace is TP_NS of kernels/simd/vec.h).
namespace tp_scalar { const tp::KernelTable& table(); }
namespace tp_avx2 { const tp::KernelTable& table(); }
namespace tp_avx512 { const tp::KernelTable& table(); }
namespace tp_avx512bf16 { const tp::KernelTable& table(); }  // built where the compiler has -mavx512bf16
namespace tp_neon { const tp::KernelTable& table(); }
