// The ISA-independent half of the core: the four algorithms written over the kernel
// primitives, special values, the choice of ISA, and threads.
#include "driver.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace tp {
namespace {


// Per-lane special values: what a row holds decides its result (DESIGN.md, Semantics).
enum class Special { kNone, kNaN, kPosInf, kAllNegInf };

template <class T> struct Scan {
  Special kind;
  T max;
};
// Scalar scan of one lane; only rows whose fast path failed come here.
template <class T> Scan<T> scan_lane(const T* x, int64_t n, int64_t sx) {
  bool nan = false, posinf = false;
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    const T v = x[j * sx];
    if (v != v)
      nan = true;
    else if (v > m)
      m = v;
  }
  posinf = m == std::numeric_limits<T>::infinity();
  if (nan) return {Special::kNaN, m};
  if (posinf) return {Special::kPosInf, m};
  if (m == -std::numeric_limits<T>::infinity()) return {Special::kAllNegInf, m};
  return {Special::kNone, m};
}

// hi + lo = base + logs in twice T's precision (a two-sum, then hi rounded to T), for
// log_softmax's (x - hi) - lo: no loss when |lse| is large. hi >= base, as rounding is
// monotonic and base is a T; where logs is below half an ulp of base, hi = base and
// lo = logs >= 0, so the result stays <= 0 (and exactly 0 when logs is).
template <class T> inline void split_sum(double base, double logs, T& hi, T& lo) {
  const double s = base + logs, bb = s - base;
  const double err = (base - (s - bb)) + (logs - bb);
  hi = (T)s;
  lo = (T)((s - (double)hi) + err);
}
// log(s) for a sum s >= 1 up to its rounding (the max-first paths: exp(0) = 1 is in it).
inline double log_at_least_1(double s) { return s > 1 ? std::log(s) : 0.0; }
// log(sum_i exp(x_i - M)) >= 0 for a row whose pass 1 gave the pair p (the sum of
// m_i * 2^e_i) and the maximum M, (mM, eM) being M's own pair as the kernel computed
// it; the row's lse is M + this. The other terms are counted relative to M's own,
// r = p / (mM * 2^eM) - 1, so M's term is exactly 1 whatever the polynomial's error on
// it: a row that M dominates (every other term below half an ulp of it) gives r = 0,
// log_softmax exactly 0 at its maximum and logsumexp exactly M. Sums of terms >= 0
// round monotonically, so r >= 0 up to the last bits of the compensated sum; clamping
// keeps log_softmax <= 0 and logsumexp >= max without exception. r is then rescaled by
// mM / exp(M - eM ln2) (exp in double): the others' terms relative to exp(M) itself,
// so the polynomial's error on the one term M does not enter the result (it would
// otherwise stand alone, where the others' errors average out).
inline double log_sum_rel_max(const Pair& p, double M, double mM, double eM) {
  const double r = std::ldexp(p.value(), (int)(p.E - eM)) / mM - 1;
  if (!(r > 0)) return 0.0;
  constexpr double kLn2Hi = 0x1.62e42fefa39efp-1;  // ln2 rounded to double
  constexpr double kLn2Lo = 0x1.abc9e3b39803fp-56;  // ln2 - kLn2Hi
  const double a = eM * kLn2Hi;                     // |eM| < 2^21: M - eM ln2 to ~2^-100
  const double t = ((M - a) - std::fma(eM, kLn2Hi, -a)) - eM * kLn2Lo;
  return std::log1p(r * (mM / std::exp(t)));
}

// ---------------------------------------------------------------------------------
// Exec: runs the primitives over one group, either whole or split along the axis into
// chunks on several threads, merging the per-chunk reductions.
// ---------------------------------------------------------------------------------
template <class T> struct Exec {
  const Prims<T>& P;
  Group<T> g;
  int chunks;  // 1 = run inline

  Group<T> chunk(int c) const {
    const int64_t len = (g.n + chunks - 1) / chunks;
    const int64_t lo = std::min(g.n, c * len), hi = std::min(g.n, lo + len);
    Group<T> s = g;
    s.x += lo * g.sx;
    s.y += lo * g.sy;
    s.n = hi - lo;
    return s;
  }
  template <class F> void each(F&& f) const {
    if (chunks == 1)
      f(g);
    else
      parallel(chunks, [&](int c) { f(chunk(c)); });
  }
  // Reductions: per-chunk partial results in `parts`, merged lane by lane.
  void pair_sum(const T* shift, Pair* out, T* mx) const {
    if (chunks == 1) return P.pair_sum(g, shift, out, mx);
    std::vector<Pair> parts((size_t)chunks * kMaxLanes);
    std::vector<T> maxes((size_t)chunks * kMaxLanes);
    parallel(chunks, [&](int c) {
      P.pair_sum(chunk(c), shift, &parts[(size_t)c * kMaxLanes], &maxes[(size_t)c * kMaxLanes]);
    });
    for (int l = 0; l < g.lanes; ++l) {
      out[l] = Pair{0.0, -1e300, 0.0};
      mx[l] = -std::numeric_limits<T>::infinity();
      for (int c = 0; c < chunks; ++c) {
        const Pair& p = parts[(size_t)c * kMaxLanes + l];
        pair_merge(out[l], p.value(), p.E);
        mx[l] = std::max(mx[l], maxes[(size_t)c * kMaxLanes + l]);
      }
    }
  }
  void max(T* out) const {
    if (chunks == 1) return P.max(g, out);
    std::vector<T> parts((size_t)chunks * kMaxLanes);
    parallel(chunks, [&](int c) { P.max(chunk(c), &parts[(size_t)c * kMaxLanes]); });
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
    parallel(chunks, [&](int c) { f(chunk(c), &parts[(size_t)c * kMaxLanes]); });
    for (int l = 0; l < g.lanes; ++l) {
      out[l] = 0;
      for (int c = 0; c < chunks; ++c) out[l] += parts[(size_t)c * kMaxLanes + l];
    }
  }
  void online(double* m, double* s) const {
    if (chunks == 1) return P.online(g, m, s);
    std::vector<double> pm((size_t)chunks * kMaxLanes), ps((size_t)chunks * kMaxLanes);
    parallel(chunks, [&](int c) { P.online(chunk(c), &pm[(size_t)c * kMaxLanes], &ps[(size_t)c * kMaxLanes]); });
    for (int l = 0; l < g.lanes; ++l) {
      m[l] = -INFINITY, s[l] = 0;
      for (int c = 0; c < chunks; ++c) online_merge(m[l], s[l], pm[(size_t)c * kMaxLanes + l], ps[(size_t)c * kMaxLanes + l]);
    }
  }
};

// Parameters for one group, one entry per lane.
template <class T> struct LaneArrays {
  T a[kMaxLanes], b[kMaxLanes], c[kMaxLanes];
  double d[kMaxLanes], e[kMaxLanes];
  Pair p[kMaxLanes];
  bool fix[kMaxLanes];
};

template <class T> constexpr T kNaN = std::numeric_limits<T>::quiet_NaN();

// Result of a special row: NaN for softmax/log_softmax, per DESIGN.md for logsumexp.
template <class T> T special_lse(Special s) {
  switch (s) {
    case Special::kNaN: return kNaN<T>;
    case Special::kPosInf: return std::numeric_limits<T>::infinity();
    default: return -std::numeric_limits<T>::infinity();
  }
}

template <class T> void fill_lane(const Group<T>& g, int lane, T v) {
  for (int64_t j = 0; j < g.n; ++j) g.y[lane + j * g.sy] = v;
}

// One lane of a group, as a group of its own (a strided row): for the rare fix-ups.
template <class T> Group<T> lane_of(const Group<T>& g, int l) {
  Group<T> s = g;
  s.x += l;
  s.y += l;
  s.lanes = 1;
  return s;
}

struct Job {
  Op op;
  Algo algo;
};

template <class T> struct Runner {
  const PrimPair<T>& prims;
  Job job;
  bool stream;
  int chunks = 1;

  const Prims<T>& pick(const Group<T>& g) const { return (g.lanes == 1 && g.sx == 1 && g.sy == 1) ? prims.row : prims.panel; }
  Exec<T> exec(const Group<T>& g) const { return Exec<T>{pick(g), g, chunks}; }

  void run(const Group<T>& g, T* lse) const {
    switch (job.algo) {
      case Algo::kTwoPass: return two_pass(g, lse, nullptr);
      default: return max_based(g, lse);
    }
  }

  // Two-pass (extended exponent). `shift` (one per lane, or null for 0) is the row
  // maximum on a redo of a row outside the accurate domain.
  void two_pass(const Group<T>& g, T* lse, const T* shift) const {
    const Exec<T> ex = exec(g);
    LaneArrays<T> A;
    T mx[kMaxLanes];         // per lane, the maximum of x - shift
    ex.pair_sum(shift, A.p, mx);  // shift == nullptr: the common, unshifted kernel
    // Accept a lane when its sum is finite and its largest exponent lies where the
    // reduction is exact and clamped elements are negligible (twopass.h, Numerics).
    constexpr double kLog2e = 1.4426950408889634;
    const double e_hi = std::floor(Numerics<T>::kAccurate * kLog2e) - 2;
    const double e_lo = std::ceil((-Numerics<T>::kAccurate + Numerics<T>::kMargin) * kLog2e);
    bool any_fix = false;
    for (int l = 0; l < g.lanes; ++l) {
      const Pair p{A.p[l].value(), A.p[l].E, 0.0};
      A.fix[l] = !(std::isfinite(p.S) && p.S > 0 && p.E <= e_hi && p.E >= e_lo);
      any_fix |= A.fix[l];
      if (A.fix[l]) {
        A.a[l] = A.b[l] = A.c[l] = 0;
        continue;
      }
      // The row's lse = base + logs: base its maximum, logs = log(sum exp(x - base)) >= 0.
      double logs = 0;
      if (job.op != Op::kSoftmax || lse) {
        T mM, eM;
        prims.extexp(mx[l], &mM, &eM);
        logs = log_sum_rel_max(p, mx[l], mM, eM);
      }
      const double base = (shift ? (double)shift[l] : 0.0) + (double)mx[l];  // exact: mx[l] = 0 after a shift
      if (job.op == Op::kSoftmax) {
        // y = m * (1/S) * 2^(e - E) with S normalised to [0.5, 1): m/S stays in about
        // [0.7, 2.9], which Scale::out needs to round into subnormals exactly once.
        int ex2;
        const double fr = std::frexp(p.S, &ex2);
        A.b[l] = (T)(1.0 / fr);
        A.c[l] = (T)(p.E + ex2);
        if (lse) lse[l] = (T)(base + logs);  // asked for alongside softmax (cross-entropy)
      } else if (job.op == Op::kLogSumExp) {
        lse[l] = (T)(base + logs);  // >= the maximum: logs >= 0 and rounding is monotone
      } else {  // log_softmax: y = (x - hi) - lo <= 0 with hi + lo = base + logs; no exp
        split_sum(base, logs, A.a[l], A.b[l]);
      }
    }
    if (job.op == Op::kSoftmax)
      ex.each([&](const Group<T>& c) { pick(c).pair_write(c, shift, A.b, A.c, stream); });
    else if (job.op == Op::kLogSoftmax)
      ex.each([&](const Group<T>& c) { pick(c).sub2(c, A.a, A.b, stream); });
    if (!any_fix) return;
    for (int l = 0; l < g.lanes; ++l) {
      if (!A.fix[l]) continue;
      const Group<T> one = lane_of(g, l);
      const Scan<T> s = scan_lane(one.x, one.n, one.sx);
      T* lse1 = lse ? lse + l : nullptr;
      if (s.kind != Special::kNone) {
        special(one, lse1, s.kind);
      } else if (!shift) {
        const T m = s.max;  // outside the accurate domain: redo relative to the maximum
        two_pass(one, lse1, &m);
      } else {
        throw std::logic_error("twopass: row still outside the accurate domain after shifting");
      }
    }
  }

  void special(const Group<T>& one, T* lse, Special kind) const {
    if (lse) *lse = special_lse<T>(kind);
    if (job.op != Op::kLogSumExp) fill_lane(one, 0, kNaN<T>);  // NaN, +inf, or all -inf: the whole row is NaN
  }

  // The max-first algorithms: three-pass reload, three-pass recompute, online.
  // A NaN or infinite maximum makes the sum NaN, which sends the lane to the scan.
  void max_based(const Group<T>& g, T* lse) const {
    const Exec<T> ex = exec(g);
    LaneArrays<T> A;  // a: maximum, d: sum of exp(x - maximum)
    bool stored = false;  // three-pass reload, softmax: pass 2 already wrote exp(x - max)
    if (job.algo == Algo::kOnline) {
      ex.online(A.d, A.e);
      for (int l = 0; l < g.lanes; ++l) A.a[l] = (T)A.d[l], A.d[l] = A.e[l];
    } else {
      ex.max(A.a);
      if (job.algo == Algo::kThreePassReload && job.op == Op::kSoftmax) {
        // Normal stores in both passes: pass 3 reads y back (whatever part of it is still
        // in cache is then free) and rewrites it in place, where a streaming store saves
        // no read-for-ownership. Measured on a 64 MB row: streaming pass 2 and 3, 1.35x
        // slower; streaming pass 3 only, 1.1x slower.
        ex.sum([&](const Group<T>& c, double* out) { pick(c).exp_store_sum(c, A.a, out, false); }, A.d);
        stored = true;
      } else {
        ex.sum([&](const Group<T>& c, double* out) { pick(c).sumexp(c, A.a, out); }, A.d);
      }
    }
    bool any_fix = false;
    for (int l = 0; l < g.lanes; ++l) {
      const double s = A.d[l];
      A.fix[l] = !(std::isfinite(s) && s > 0 && std::isfinite(A.a[l]));
      any_fix |= A.fix[l];
      if (A.fix[l]) {
        A.a[l] = A.b[l] = A.c[l] = 0;
        continue;
      }
      switch (job.op) {
        // s >= 1 (the maximum's own term is exp(0) = 1; the online rescaling may round
        // it just below): log_at_least_1 keeps log_softmax <= 0 and lse >= the maximum.
        case Op::kSoftmax:
          A.b[l] = (T)(1.0 / s);
          if (lse) lse[l] = (T)((double)A.a[l] + log_at_least_1(s));
          break;
        case Op::kLogSoftmax: A.b[l] = (T)log_at_least_1(s); break;
        case Op::kLogSumExp: lse[l] = (T)((double)A.a[l] + log_at_least_1(s)); break;
      }
    }
    if (job.op == Op::kSoftmax && stored) {
      ex.each([&](const Group<T>& c) {
        Group<T> cy = c;  // pass 3 reads what pass 2 wrote
        cy.x = c.y;
        cy.sx = c.sy;
        pick(c).scale(cy, A.b, false);
      });
    } else if (job.op == Op::kSoftmax) {
      ex.each([&](const Group<T>& c) { pick(c).exp_scale(c, A.a, A.b, stream); });
    } else if (job.op == Op::kLogSoftmax) {
      ex.each([&](const Group<T>& c) { pick(c).sub2(c, A.a, A.b, stream); });
    }
    if (!any_fix) return;
    for (int l = 0; l < g.lanes; ++l) {
      if (!A.fix[l]) continue;
      const Group<T> one = lane_of(g, l);
      const Scan<T> s = scan_lane(one.x, one.n, one.sx);
      if (s.kind == Special::kNone) throw std::logic_error("twopass: finite row with a non-finite sum");
      special(one, lse ? lse + l : nullptr, s.kind);
    }
  }
};

template <class T> void run_typed(const PrimPair<T>& prims, const Problem& pb, int threads, bool stream) {
  const T* x = static_cast<const T*>(pb.x);
  T* y = static_cast<T*>(pb.y);
  Runner<T> r{prims, Job{pb.op, pb.algo}, stream};
  // Groups: rows (inner == 1) or panels of up to `lanes` columns of a non-last axis.
  const int max_lanes = pb.inner == 1 ? 1 : pb.panel_lanes;
  const int64_t per_outer = (pb.inner + max_lanes - 1) / max_lanes;
  const int64_t groups = pb.outer * per_outer;
  if (groups == 0) return;
  const bool lse = pb.op == Op::kLogSumExp;
  auto make = [&](int64_t gi) {
    const int64_t o = gi / per_outer, c0 = (gi % per_outer) * max_lanes;
    Group<T> g;
    g.x = x + o * pb.xs_outer + c0;
    g.y = lse ? nullptr : y + o * pb.ys_outer + c0;
    g.n = pb.n;
    g.sx = pb.xs_n;
    g.sy = lse ? 1 : pb.ys_n;
    g.lanes = (int)std::min<int64_t>(max_lanes, pb.inner - c0);
    T* lse_out = lse ? y + o * pb.ys_outer + c0 : pb.lse ? static_cast<T*>(pb.lse) + o * pb.inner + c0 : nullptr;
    return std::make_pair(g, lse_out);
  };
  if (pb.n == 0) {  // empty axis: logsumexp is -inf (the empty sum), softmax writes nothing
    if (lse || pb.lse)
      for (int64_t gi = 0; gi < groups; ++gi) {
        auto [g, out] = make(gi);
        for (int l = 0; l < g.lanes; ++l) out[l] = -std::numeric_limits<T>::infinity();
      }
    return;
  }
  const int64_t total = pb.outer * pb.n * pb.inner;
  threads = (int)std::max<int64_t>(1, std::min<int64_t>(threads, total / kMinPerThread));
  if (threads > 1 && groups < threads) {
    // Few long groups: split each along the axis; partial sums merge exactly.
    r.chunks = (int)std::max<int64_t>(1, std::min<int64_t>(threads, pb.n * std::min<int64_t>(pb.inner, max_lanes) / kMinPerChunk));
    for (int64_t gi = 0; gi < groups; ++gi) {
      auto [g, out] = make(gi);
      r.run(g, out);
    }
    return;
  }
  // Contiguous rows by the three-pass reload (what algorithm="auto" takes for short
  // rows): blocks of rows per kernel call (Prims::rows_reload), which saves a call and
  // the per-row bookkeeping of Runner (65536x64 float32 softmax, one thread: 6.7 -> 3.3 ms).
  // Rows it flags (special values) take the general path.
  const bool row_blocks = pb.inner == 1 && pb.xs_n == 1 && pb.ys_n == 1 && !lse &&
                          pb.algo == Algo::kThreePassReload && prims.row.rows_reload;
  parallel(threads, [&](int t) {
    const int64_t lo = groups * t / threads, hi = groups * (t + 1) / threads;
    if (!row_blocks) {
      for (int64_t gi = lo; gi < hi; ++gi) {
        auto [g, out] = make(gi);
        r.run(g, out);
      }
      return;
    }
    constexpr int64_t kBlock = 256;
    uint8_t redo[kBlock];
    for (int64_t b = lo; b < hi; b += kBlock) {
      const int64_t k = std::min(kBlock, hi - b);
      T* lse_out = pb.lse ? static_cast<T*>(pb.lse) + b : nullptr;
      prims.row.rows_reload(x + b * pb.xs_outer, y + b * pb.ys_outer, k, pb.n, pb.xs_outer, pb.ys_outer,
                            pb.op == Op::kLogSoftmax, stream, lse_out, redo);
      for (int64_t i = 0; i < k; ++i) {
        if (!redo[i]) continue;
        auto [g, out] = make(b + i);
        r.run(g, out);
      }
    }
  });
}

const KernelTable* table_for(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return &tp_scalar::table();
#if TP_HAVE_X86
    case Isa::kAvx2: return &tp_avx2::table();
    case Isa::kAvx512: return &tp_avx512::table();
#endif
#if TP_HAVE_ARM64
    case Isa::kNeon: return &tp_neon::table();
#endif
    default: return nullptr;
  }
}

}  // namespace

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return true;
#if TP_HAVE_X86
    // libgcc's checks include the OS's support for the wider registers (XGETBV).
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#if defined(TP_AVX512_EMULATE)  // tests/native: AVX-512 intrinsics emulated in C++
    case Isa::kAvx512: return true;
#else
    case Isa::kAvx512: return __builtin_cpu_supports("avx512f");
#endif
#endif
#if TP_HAVE_ARM64
    case Isa::kNeon: return true;  // Advanced SIMD is part of every AArch64 CPU
#endif
    default: return false;
  }
}

bool isa_compiled(Isa isa) { return table_for(isa) != nullptr; }

int panel_lanes(Isa isa, int dtype_bytes) {
  const KernelTable* t = table_for(isa);
  return t ? (dtype_bytes == 4 ? t->lanes_f32 : t->lanes_f64) : 1;
}

const KernelTable& kernels(Isa isa) {
  const KernelTable* t = table_for(isa);
  if (!t || !isa_supported(isa)) throw std::invalid_argument("twopass: instruction set not available on this CPU");
  return *t;
}

void run(const Problem& pb, Isa isa, int threads, bool stream) {
  const KernelTable& t = kernels(isa);
  if (pb.dtype_bytes == 4)
    run_typed<float>(t.f32, pb, threads, stream);
  else
    run_typed<double>(t.f64, pb, threads, stream);
}

namespace {
Group<float> slice(const float* x, float* y, int64_t n, int part, int parts) {
  const int64_t lo = n * part / parts, hi = n * (part + 1) / parts;
  return Group<float>{x + lo, y ? y + lo : nullptr, hi - lo, 1, 1, 1};
}
}  // namespace

float read_pass(const float* x, int64_t n, Isa isa, int threads) {
  const Prims<float>& P = kernels(isa).f32.row;
  std::vector<float> parts(threads);
  parallel(threads, [&](int t) { P.max(slice(x, nullptr, n, t, threads), &parts[t]); });
  float m = -INFINITY;
  for (float v : parts) m = std::max(m, v);
  return m;
}

void copy_pass(const float* x, float* y, int64_t n, Isa isa, int threads, bool stream) {
  const Prims<float>& P = kernels(isa).f32.row;
  const float one = 1.0f;
  parallel(threads, [&](int t) { P.scale(slice(x, y, n, t, threads), &one, stream); });
}

}  // namespace tp
