// Kernel check without Python: every op, algorithm, dtype and tail length of the C++
// core against a long double reference, and the fused cross-entropy against a double
// one, for each ISA this build can run. Used to test
// the NEON variant under qemu-aarch64 (tests/native/run_neon.sh); runs natively too.
// Bounds as in tests/conftest.py (in units of the dtype's unit roundoff u):
//   softmax (A + |x - lse|) u |ref|, log_softmax A (|ref| + 1) u, logsumexp A (|ref| + 1) u.
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "../../csrc/codes.h"
#include "../../csrc/cross_entropy.h"
#include "../../csrc/dispatch.h"
#include "../../csrc/half.h"
#include "../../csrc/softmax.h"
#include "../../csrc/softmax_backward.h"
#include "../../csrc/threads.h"

namespace {

int passed = 0, failed = 0;

template <class T> double unit_roundoff() { return std::numeric_limits<T>::epsilon() / 2; }

// Reference for one row (x[j*stride]): in double for float32 rows, in long double for
// float64 ones (on AArch64 long double is a software float128: slow under qemu).
struct Ref {
  long double max, log_sum;
  bool nan, posinf, all_neginf;
};
template <class T> Ref reference(const T* x, int64_t n, int64_t stride) {
  using W = std::conditional_t<sizeof(T) == 4, double, long double>;
  Ref r{-INFINITY, 0, false, false, true};
  for (int64_t j = 0; j < n; ++j) {
    const W v = x[j * stride];
    if (v != v) r.nan = true;
    else {
      if (v == INFINITY) r.posinf = true;
      if (v != -INFINITY) r.all_neginf = false;
      if (v > r.max) r.max = v;
    }
  }
  if (r.nan || r.posinf || r.all_neginf) return r;
  W s = 0;
  for (int64_t j = 0; j < n; ++j) s += std::exp((W)x[j * stride] - (W)r.max);
  r.log_sum = std::log(s);
  return r;
}

template <class T> bool close(tp::Op op, T y, T x, const Ref& r, double A) {
  const double u = unit_roundoff<T>(), tiny = 2 * std::numeric_limits<T>::denorm_min();
  if (op == tp::Op::kLogSumExp) {
    long double ref = r.nan ? NAN : r.posinf ? INFINITY : r.all_neginf ? -INFINITY : r.max + r.log_sum;
    if (std::isnan((double)ref)) return std::isnan(y);
    if (std::isinf((double)ref)) return (double)y == (double)ref;
    return std::fabs((double)(y - ref)) <= A * u * (std::fabs((double)ref) + 1) + tiny;
  }
  if (r.nan || r.posinf || r.all_neginf) return std::isnan(y);
  const long double ls = ((long double)x - r.max) - r.log_sum;
  if (op == tp::Op::kLogSoftmax) {
    if (std::isinf((double)ls)) return (double)y == (double)ls;
    return std::fabs((double)(y - ls)) <= A * (std::fabs((double)ls) + 1) * u + tiny;
  }
  const long double ref = std::exp(ls);
  const double cond = std::isfinite((double)ls) ? std::fabs((double)ls) : 0;
  return std::fabs((double)(y - ref)) <= (A + cond) * u * (double)ref + tiny;
}

template <class T> void check(tp::Isa isa, tp::Op op, tp::Algo algo, int64_t rows, int64_t n, int64_t inner,
                              const std::vector<T>& x, const char* what, bool stream = false, int threads = 1) {
  const bool lse = op == tp::Op::kLogSumExp;
  std::vector<T> y(lse ? rows * inner : rows * n * inner);
  tp::Problem pb{op, algo, (int)sizeof(T), x.data(), y.data(), rows, n, inner, n * inner, inner,
                 lse ? inner : n * inner, inner, tp::panel_lanes(isa, sizeof(T))};
  tp::run(pb, isa, threads, stream);
  const double A = sizeof(T) == 4 ? (op == tp::Op::kSoftmax ? 16 : 8) : (op == tp::Op::kSoftmax ? 32 : 16);
  bool ok = true;
  for (int64_t o = 0; o < rows && ok; ++o)
    for (int64_t c = 0; c < inner && ok; ++c) {
      const T* xr = x.data() + o * n * inner + c;
      const Ref r = reference(xr, n, inner);
      if (lse) {
        ok = close<T>(op, y[o * inner + c], 0, r, A);
      } else {
        for (int64_t j = 0; j < n && ok; ++j) ok = close<T>(op, y[(o * n + j) * inner + c], xr[j * inner], r, A);
      }
    }
  if (ok) ++passed;
  else {
    ++failed;
    std::printf("FAILED isa=%d op=%d algo=%d dtype=f%d rows=%lld n=%lld inner=%lld (%s)\n", (int)isa, (int)op,
                (int)algo, (int)(8 * sizeof(T)), (long long)rows, (long long)n, (long long)inner, what);
  }
}

template <class T> void run_all(tp::Isa isa) {
  std::mt19937_64 rng(42);
  std::normal_distribution<double> normal(0.0, 4.0);
  const tp::Op ops[] = {tp::Op::kSoftmax, tp::Op::kLogSoftmax, tp::Op::kLogSumExp};
  const tp::Algo algos[] = {tp::Algo::kTwoPass, tp::Algo::kThreePassReload, tp::Algo::kThreePassRecompute,
                            tp::Algo::kOnline};
  std::vector<int64_t> lengths;
  for (int64_t n = 1; n <= 34; ++n) lengths.push_back(n);
  for (int64_t n : {63, 64, 65, 1023, 1024, 1025, 4099}) lengths.push_back(n);
  for (tp::Op op : ops)
    for (tp::Algo algo : algos) {
      for (int64_t n : lengths) {  // rows: every tail
        std::vector<T> x(3 * n);
        for (auto& v : x) v = (T)normal(rng);
        check<T>(isa, op, algo, 3, n, 1, x, "random rows");
        check<T>(isa, op, algo, 3, n, 1, x, "random rows, streaming stores", true);
      }
      if (sizeof(T) == 4) {  // one long row split over two threads (float32: fast reference)
        std::vector<T> x(600003);  // > 2 x kMinPerChunk: split
        for (auto& v : x) v = (T)normal(rng);
        check<T>(isa, op, algo, 1, (int64_t)x.size(), 1, x, "long row, 2 threads", true, 2);
      }
      for (int64_t inner : {2, 5, 17, 40, 70}) {  // panels of a non-last axis
        std::vector<T> x(2 * 37 * inner);
        for (auto& v : x) v = (T)normal(rng);
        check<T>(isa, op, algo, 2, 37, inner, x, "panels");
      }
      // Hard rows: NaN, +inf, all -inf, masks, huge values, beyond the accurate domain.
      const T inf = std::numeric_limits<T>::infinity(), big = std::numeric_limits<T>::max() / 2;
      const std::vector<std::vector<T>> hard = {
          {NAN, 1, 2}, {inf, 1, 2}, {-inf, -inf, -inf}, {-inf, 1, 2}, {big, big, -big}, {5000, 4990, 1},
          {-1e30f, -1e30f, -1e30f}, {1, -1e4f, 2, -1e4f, 3, -1e4f, 4, -1e4f, 5, -1e4f, 6, -1e4f, 7, -1e4f, 8, -1e4f, 9}};
      for (const auto& row : hard) check<T>(isa, op, algo, 1, (int64_t)row.size(), 1, row, "hard row");
    }
}

// float16 / bfloat16 (S): x rounded to S runs through the half kernels, and through the
// float32 kernels widened (exactly); the half result must be the float32 one rounded to
// S within 1 ulp of S (float32's few-ulp error can move that rounding by one step). NaN
// where the float32 result is NaN; infinities equal (ulp distance 0 on the same side).
int64_t half_order(uint16_t b) { return (b & 0x8000u) ? -(int64_t)(b & 0x7FFFu) : (int64_t)b; }
template <class S> void check_half(tp::Isa isa, tp::Op op, tp::Algo algo, int64_t rows, int64_t n, int64_t inner,
                                   const std::vector<float>& xs, const char* what, bool stream = false, int threads = 1) {
  const bool lse = op == tp::Op::kLogSumExp;
  std::vector<S> x(xs.size());
  std::vector<float> xw(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) x[i] = tp::Storage<S>::narrow(xs[i]), xw[i] = tp::Storage<S>::widen(x[i]);
  const size_t ny = lse ? rows * inner : rows * n * inner;
  std::vector<S> y(ny);
  std::vector<float> yf(ny);
  tp::Problem pb{op, algo, 2, x.data(), y.data(), rows, n, inner, n * inner, inner,
                 lse ? inner : n * inner, inner, tp::panel_lanes(isa, 2)};
  pb.bf16 = std::is_same_v<S, tp::bf16>;
  tp::run(pb, isa, threads, stream);
  tp::Problem pf{op, algo, 4, xw.data(), yf.data(), rows, n, inner, n * inner, inner,
                 lse ? inner : n * inner, inner, tp::panel_lanes(isa, 4)};
  tp::run(pf, isa, threads, stream);
  bool ok = true;
  for (size_t i = 0; i < ny && ok; ++i) {
    const bool nan_h = std::isnan(tp::Storage<S>::widen(y[i])), nan_f = std::isnan(yf[i]);
    ok = (nan_h || nan_f) ? nan_h == nan_f
                          : std::llabs(half_order(y[i].bits) - half_order(tp::Storage<S>::narrow(yf[i]).bits)) <= 1;
  }
  if (ok) ++passed;
  else {
    ++failed;
    std::printf("FAILED isa=%d op=%d algo=%d dtype=%s rows=%lld n=%lld inner=%lld (%s)\n", (int)isa, (int)op, (int)algo,
                pb.bf16 ? "bf16" : "f16", (long long)rows, (long long)n, (long long)inner, what);
  }
}

template <class S> void run_half(tp::Isa isa) {
  std::mt19937_64 rng(43);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  const tp::Algo algos[] = {tp::Algo::kTwoPass, tp::Algo::kThreePassReload, tp::Algo::kThreePassRecompute,
                            tp::Algo::kOnline};
  std::vector<int64_t> lengths;
  for (int64_t n = 1; n <= 34; ++n) lengths.push_back(n);
  // (4097, 9001: beyond the reload's stack scratch row, exp kept in its per-thread float32
  // row; rows 1 and 2 start off the vector alignment, so streaming stores peel a head)
  for (int64_t n : {63, 64, 65, 127, 128, 129, 1025, 4097, 9001}) lengths.push_back(n);
  const float inf = INFINITY;
  const std::vector<std::vector<float>> hard = {
      {NAN, 1, 2}, {inf, 1, 2}, {-inf, -inf, -inf}, {-inf, 1, 2}, {60000, 60000, -60000}, {-65000, 65000, 0},
      {3e38f, 3e38f, -3e38f}, {5000, 4990, 1}, {1e-7f, -1e-7f, 6e-8f}};
  for (tp::Op op : {tp::Op::kSoftmax, tp::Op::kLogSoftmax, tp::Op::kLogSumExp})
    for (tp::Algo algo : algos) {
      for (int64_t n : lengths) {
        std::vector<float> x(3 * n);
        for (auto& v : x) v = normal(rng);
        check_half<S>(isa, op, algo, 3, n, 1, x, "random rows");
        check_half<S>(isa, op, algo, 3, n, 1, x, "random rows, streaming stores", true);
      }
      std::vector<float> lx(300001);  // one long row split over two threads
      for (auto& v : lx) v = normal(rng);
      check_half<S>(isa, op, algo, 1, (int64_t)lx.size(), 1, lx, "long row, 2 threads", true, 2);
      for (int64_t inner : {2, 5, 17, 40, 70}) {
        std::vector<float> x(2 * 37 * inner);
        for (auto& v : x) v = normal(rng);
        check_half<S>(isa, op, algo, 2, 37, inner, x, "panels");
      }
      for (const auto& row : hard) check_half<S>(isa, op, algo, 1, (int64_t)row.size(), 1, row, "hard row");
    }
}

// The fused cross-entropy (csrc/cross_entropy.cpp) against docs/cross_entropy.md in
// double: loss per row within 32 u (1 + |lse| + |x_t| + cap) max(w), gradient within
// 32 u (max |ref| of the row + its terms) (1 + cap); mean-reduction scales. Storage S:
// float16 / bfloat16 logits and gradient (computed in T = float32) add the gradient's
// one rounding to S (hu relative, half its smallest subnormal absolute).
template <class S> void check_ce(tp::Isa isa, int64_t rows, int64_t n, double eps, double zc, double cap, bool weighted,
                                 bool stream, tp::Algo algo, std::mt19937_64& rng) {
  using T = tp::Compute<S>;
  using St = tp::Storage<S>;
  constexpr bool kF16 = std::is_same_v<S, tp::f16>, kBf16 = std::is_same_v<S, tp::bf16>;
  const double hu = kF16 ? 0x1p-11 : kBf16 ? 0x1p-8 : 0.0, htiny = kF16 ? 0x1p-25 : 0.0;
  std::normal_distribution<double> normal(0.0, 4.0);
  std::uniform_real_distribution<double> unif(0.5, 2.0);
  std::vector<S> x(rows * n), g(rows * n);
  std::vector<T> w(n);
  std::vector<int64_t> t(rows);
  for (auto& v : x) v = St::narrow((T)normal(rng));
  for (auto& v : w) v = (T)unif(rng);
  for (int64_t i = 0; i < rows; ++i) t[i] = i == 1 ? -100 : (int64_t)(rng() % n);
  double W = 0, swt = 0;
  for (int64_t j = 0; j < n; ++j) W += weighted ? (double)w[j] : 1.0;
  for (int64_t i = 0; i < rows; ++i)
    if (t[i] >= 0) swt += weighted ? (double)w[t[i]] : 1.0;
  const double s_ce = 1 / swt, s_z = 1.0 / (rows - 1);
  std::vector<double> ce(rows), z(rows), lse(rows);
  tp::CrossEntropyProblem pb{(int)sizeof(T), x.data(), rows, n, n, t.data(), weighted ? w.data() : nullptr, W, -100, eps, zc,
                   cap, s_ce, s_z, g.data(), n, ce.data(), z.data(), lse.data(), algo, stream, kBf16, kF16};
  tp::cross_entropy(pb, isa, 2);
  auto gx = [&](int64_t k) { return (double)St::widen(g[k]); };
  const double u = unit_roundoff<T>();
  bool ok = true;
  for (int64_t i = 0; i < rows && ok; ++i) {
    std::vector<double> xc(n);
    double m = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      const double v = (double)St::widen(x[i * n + j]);
      xc[j] = cap > 0 ? cap * std::tanh(v / cap) : v;
      m = std::max(m, xc[j]);
    }
    double s = 0, swx = 0;
    for (int64_t j = 0; j < n; ++j) s += std::exp(xc[j] - m), swx += (weighted ? (double)w[j] : 1.0) * xc[j];
    const double L = m + std::log(s);
    const double wmax = weighted ? 2.0 : 1.0;
    if (t[i] < 0) {
      ok = ce[i] == 0 && z[i] == 0;
      for (int64_t j = 0; j < n && ok; ++j) ok = gx(i * n + j) == 0;
      continue;
    }
    const int64_t ti = t[i];
    const double wt = weighted ? (double)w[ti] : 1.0;
    const double ref_ce = (1 - eps) * wt * (L - xc[ti]) + eps / n * (W * L - swx);
    ok = std::fabs(ce[i] - ref_ce) <= 32 * u * (1 + std::fabs(L) + std::fabs(xc[ti]) + cap) * wmax * (1 + n * eps) &&
         std::fabs(lse[i] - L) <= 32 * u * (1 + std::fabs(L)) && std::fabs(z[i] - zc * L * L) <= 64 * u * (1 + zc * L * L);
    const double A = s_ce * ((1 - eps) * wt + eps / n * W) + s_z * 2 * zc * L;
    std::vector<double> ref(n);
    double rmax = 0;
    for (int64_t j = 0; j < n; ++j) {
      double d = A * std::exp(xc[j] - L) - s_ce * eps / n * (weighted ? (double)w[j] : 1.0);
      if (j == ti) d -= s_ce * (1 - eps) * wt;
      if (cap > 0) d *= 1 - (xc[j] / cap) * (xc[j] / cap);
      ref[j] = d;
      rmax = std::max(rmax, std::fabs(d));
    }
    const double terms = (s_ce * wmax + s_z * 2 * zc * std::fabs(L));
    for (int64_t j = 0; j < n && ok; ++j)
      ok = std::fabs(gx(i * n + j) - ref[j]) <=
           32 * u * (rmax + std::fabs(ref[j]) + terms) * (1 + cap) + hu * std::fabs(ref[j]) + htiny;
  }
  if (ok) ++passed;
  else {
    ++failed;
    std::printf("FAILED cross_entropy isa=%d dtype=%s rows=%lld n=%lld eps=%g zc=%g cap=%g w=%d stream=%d algo=%d\n",
                (int)isa, kF16 ? "f16" : kBf16 ? "bf16" : sizeof(T) == 4 ? "f32" : "f64", (long long)rows, (long long)n, eps, zc, cap, (int)weighted, (int)stream,
                (int)algo);
  }
}

template <class T> void run_ce(tp::Isa isa) {
  std::mt19937_64 rng(7);
  std::vector<int64_t> lengths;
  for (int64_t n = 1; n <= 34; ++n) lengths.push_back(n);
  for (int64_t n : {63, 64, 65, 1023, 1025, 4099}) lengths.push_back(n);
  for (int64_t n : lengths)
    for (int opt = 0; opt < 4; ++opt) {
      const double eps = opt & 1 ? 0.1 : 0.0, cap = opt & 2 ? 5.0 : 0.0;
      for (tp::Algo algo : {tp::Algo::kTwoPass, tp::Algo::kThreePassReload})
        check_ce<T>(isa, 4, n, eps, opt == 3 ? 1e-3 : 0.0, cap, opt >= 2, opt == 1, algo, rng);
    }
}

// The backward passes (softmax_backward.h) against the same formulas in double on the
// same rounded inputs: softmax y (g - sum g y), log_softmax g - exp(y) sum g,
// logsumexp g exp(x - lse). Error bounds: A u times the magnitudes the formula adds
// (logsumexp: times 1 + |x - lse|). inner > 1: over the middle axis of (rows, n, inner),
// the panel kernels, each column its own reduction.
template <class T>
void check_backward(tp::Isa isa, tp::Op op, int64_t rows, int64_t n, int threads, std::mt19937_64& rng,
                    int64_t inner = 1) {
  std::normal_distribution<double> nd(0.0, 3.0);
  const int64_t size = rows * n * inner, cols = rows * inner;
  std::vector<T> x(size), y(size), g(size), gx(size), lse(cols);
  // element j of column c (row block r = c / inner, lane c % inner)
  auto at = [&](int64_t c, int64_t j) { return (c / inner) * n * inner + j * inner + c % inner; };
  for (int64_t c = 0; c < cols; ++c) {
    double m = -INFINITY, s = 0;
    for (int64_t j = 0; j < n; ++j) m = std::max(m, (double)(x[at(c, j)] = (T)nd(rng)));
    for (int64_t j = 0; j < n; ++j) s += std::exp((double)x[at(c, j)] - m);
    lse[c] = (T)(m + std::log(s));
    for (int64_t j = 0; j < n; ++j) {
      const double ls = (double)x[at(c, j)] - m - std::log(s);
      y[at(c, j)] = (T)(op == tp::Op::kLogSoftmax ? ls : std::exp(ls));
      g[at(c, j)] = (T)nd(rng);
    }
  }
  const bool lse_op = op == tp::Op::kLogSumExp;
  tp::BackwardProblem pb{op, (int)sizeof(T), g.data(), lse_op ? x.data() : y.data(), lse.data(), gx.data(),
                         rows, n, n * inner, n * inner, n * inner, false, inner};
  tp::run_backward(pb, isa, threads, false);
  const double u = unit_roundoff<T>(), A = 16, tiny = 4 * std::numeric_limits<T>::denorm_min();
  bool ok = true;
  for (int64_t c = 0; c < cols && ok; ++c) {
    // The sums wider than T (long double for float64: a double sum of hundreds of terms
    // of both signs strays by more than the bound allows the kernel).
    using Wide = std::conditional_t<sizeof(T) == 4, double, long double>;
    Wide wdot = 0, wsg = 0;
    double adot = 0, asg = 0;
    for (int64_t j = 0; j < n; ++j) {
      const double gj = g[at(c, j)], yj = y[at(c, j)];
      wdot += (Wide)gj * yj, adot += std::fabs(gj * yj), wsg += gj, asg += std::fabs(gj);
    }
    const double dot = (double)wdot, sg = (double)wsg;
    for (int64_t j = 0; j < n && ok; ++j) {
      const double gj = g[at(c, j)], yj = y[at(c, j)];
      double ref, bound;
      if (op == tp::Op::kSoftmax) {
        ref = yj * (gj - dot);
        bound = std::fabs(yj) * (std::fabs(gj) + adot);
      } else if (op == tp::Op::kLogSoftmax) {
        const double e = std::exp(yj);
        ref = gj - e * sg;
        bound = std::fabs(gj) + e * asg;
      } else {
        // x - lse rounds in T: a relative error of |x - lse| u in the exp (as the forward's
        // softmax); g[c] is the row's upstream gradient
        const double d = (double)x[at(c, j)] - (double)lse[c];
        ref = (double)g[c] * std::exp(d);
        bound = std::fabs(ref) * (1 + std::fabs(d));
      }
      ok = std::fabs((double)gx[at(c, j)] - ref) <= A * u * bound + tiny;
    }
  }
  ++(ok ? passed : failed);
  if (!ok)
    std::printf("FAIL backward isa=%d T=f%d op=%d rows=%lld n=%lld inner=%lld threads=%d\n", (int)isa,
                (int)(8 * sizeof(T)), (int)op, (long long)rows, (long long)n, (long long)inner, threads);
}

template <class T> void run_backward(tp::Isa isa) {
  std::mt19937_64 rng(11);
  for (tp::Op op : {tp::Op::kSoftmax, tp::Op::kLogSoftmax, tp::Op::kLogSumExp}) {
    for (int64_t n = 1; n <= 70; ++n) check_backward<T>(isa, op, 3, n, 1, rng);
    for (int64_t n : {1023, 1025, 4099, 5000}) check_backward<T>(isa, op, 3, n, 1, rng);
    check_backward<T>(isa, op, 9, 8191, 2, rng);  // rows split over 2 threads
  }
  // panels: every lane tail up to two panels, short and long axes, blocks over 2 threads
  for (tp::Op op : {tp::Op::kSoftmax, tp::Op::kLogSoftmax}) {
    for (int64_t inner = 2; inner <= 130; ++inner) check_backward<T>(isa, op, 2, 1 + inner % 19, 1, rng, inner);
    for (int64_t n : {1, 16, 17, 300}) check_backward<T>(isa, op, 3, n, 1, rng, 97);
    check_backward<T>(isa, op, 5, 200, 2, rng, 300);
  }
}

void expect(bool ok, const std::string& what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAILED %s\n", what.c_str());
  }
}

// The worker pool (csrc/thread_pool.cpp): every index runs exactly once, with workers
// spinning or asleep, from concurrent callers, nested, and with an exception.
void check_thread_pool() {
  auto once_each = [](int n, int threads) {
    std::vector<std::atomic<int>> hits(n);
    tp::parallel_ranges(n, threads, int64_t{1} << 30, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) hits[i].fetch_add(1);
    });
    bool ok = true;
    for (auto& h : hits) ok &= h.load() == 1;
    return ok;
  };
  for (int threads : {2, 3, 8})
    for (int n : {1, 2, 5, 64, 1000}) expect(once_each(n, threads), "thread pool: every index once");
  tp::spin_microseconds = 0;  // the workers sleep between jobs: woken or not, nothing is lost
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  expect(once_each(1000, 4), "thread pool: every index once, workers asleep");
  tp::parallel_ranges(1000, 4, 1, [](int64_t, int64_t) {});  // a small job: no wake
  expect(once_each(1000, 4), "thread pool: every index once after a small job");
  tp::spin_microseconds = 200;
  std::vector<std::thread> callers;  // one job at a time: the others start threads of their own
  std::atomic<int> good{0};
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&] {
      for (int r = 0; r < 50; ++r) good += once_each(97, 2);
    });
  for (auto& t : callers) t.join();
  expect(good == 200, "thread pool: concurrent callers");
  std::atomic<int> inner{0};
  tp::parallel(3, [&](int) { tp::parallel(3, [&](int) { inner.fetch_add(1); }); });
  expect(inner == 9, "thread pool: nested calls");
  bool thrown = false;
  try {
    tp::parallel(4, [](int i) {
      if (i == 2) throw std::runtime_error("index 2");
    });
  } catch (const std::runtime_error&) {
    thrown = true;
  }
  expect(thrown && once_each(100, 4), "thread pool: an exception reaches the caller, the pool goes on");
}

// Every bfloat16 bit pattern through a map kernel that changes no value (scale by 1,
// streamed and not): each must come back as it went in, NaNs quieted (x * 1 quiets a
// signaling NaN), as tp::float_to_bf16 rounds the float32 product. The AVX2 conversion
// skips the NaN test that float_to_bf16 makes (vec_avx2.h): this shows that NaNs
// arriving from bfloat16 inputs keep their bits.
void check_bf16_round_trip(tp::Isa isa) {
  const tp::Passes<tp::bf16>& P = tp::kernels(isa).bf16s.row;
  std::vector<tp::bf16> x(1 << 16), y(x.size());
  for (uint32_t b = 0; b < x.size(); ++b) x[b].bits = (uint16_t)b;
  const float one = 1;
  for (bool stream : {false, true}) {
    P.scale(tp::Group<tp::bf16>{x.data(), y.data(), (int64_t)x.size(), 1, 1, 1}, &one, stream);
    int64_t bad = 0;
    for (uint32_t b = 0; b < x.size(); ++b)
      bad += y[b].bits != tp::float_to_bf16(tp::bf16_to_float((uint16_t)b) * one);
    expect(bad == 0, "isa " + std::to_string((int)isa) + " bf16 round trip (stream " + std::to_string(stream) +
                         "): " + std::to_string(bad) + " patterns changed");
  }
}

// The panels' per-lane check (SoftmaxKernels::check_lanes): its vectorized log(max(s, 1))
// within 1.5 ulp of the long double log over sums from 1 to 2^60 (around sqrt(2), where
// the mantissa is halved, at powers of two, just above 1), exactly 0 at s <= 1; the
// lanes it flags (NaN, inf, <= 0 sums; non-finite maxima) and 1 / s rounded to float.
void check_lanes_log(tp::Isa isa) {
  const auto& K = tp::kernels(isa).f32;
  std::mt19937_64 rng(7);
  std::vector<double> s;
  for (double v : {1.0, 1.0 + 0x1p-52, 1.0 + 0x1p-30, 1.4142135623730951, 1.4142135623730949, 1.41421356, 1.4142136,
                   1.5, 2.0, 2.0 - 0x1p-52, 3.0, 4.0, 1e3, 0x1p40, 0x1p60, 0.5, 1.0 - 0x1p-53, 129.0 / 128.0})
    s.push_back(v);
  std::uniform_real_distribution<double> unit(0, 1);
  for (int i = 0; i < 4000; ++i) s.push_back(std::exp2(unit(rng) * (i < 2000 ? 2 : 60)));
  std::vector<float> mx(64, 0.0f), inv(64);
  std::vector<double> logs(64);
  bool redo[64];
  double worst = 0, worst_s = 0;
  for (size_t b = 0; b < s.size(); b += 64) {
    const int k = (int)std::min<size_t>(64, s.size() - b);
    const int rejected = K.check_lanes(mx.data(), &s[b], k, inv.data(), logs.data(), redo);
    expect(rejected == 0, "check_lanes: no lane of finite positive sums flagged");
    for (int l = 0; l < k; ++l) {
      const long double ref = s[b + l] > 1 ? std::log((long double)s[b + l]) : 0.0L;
      const double ulp = ref > 0 ? (double)(std::nextafter((double)ref, INFINITY) - (double)ref) : 0x1p-1074;
      const double err = (double)(std::fabs((long double)logs[l] - ref) / ulp);
      if (err > worst) worst = err, worst_s = s[b + l];
      if (s[b + l] <= 1) expect(logs[l] == 0, "check_lanes: log of s <= 1 is 0");
      expect(inv[l] == (float)(1.0 / s[b + l]), "check_lanes: 1 / s");
    }
  }
  expect(worst <= 1.5, "isa " + std::to_string((int)isa) + " check_lanes log: " + std::to_string(worst) + " ulp");
  std::printf("isa %d check_lanes log: worst %.2f ulp (s = %.17g)\n", (int)isa, worst, worst_s);
  const double bad_sums[] = {NAN, INFINITY, 0.0, -1.0, 2.0, 2.0, 2.0, 2.0, 2.0};
  float bad_max[] = {0, 0, 0, 0, NAN, INFINITY, -INFINITY, 1e30f, 0};
  const int rejected = K.check_lanes(bad_max, bad_sums, 9, nullptr, nullptr, redo);
  bool flags_ok = rejected == 7;
  for (int l = 0; l < 9; ++l) flags_ok &= redo[l] == (l < 7);
  expect(flags_ok, "check_lanes: flags exactly the lanes with a NaN, inf or non-positive sum or a non-finite maximum");
}

}  // namespace

int main() {
  check_thread_pool();
  for (tp::Isa isa : {tp::Isa::kScalar, tp::Isa::kAvx2, tp::Isa::kAvx512, tp::Isa::kNeon}) {
    if (!tp::isa_compiled(isa) || !tp::isa_supported(isa)) continue;
    std::printf("isa %d\n", (int)isa);
    run_all<float>(isa);
    run_all<double>(isa);
    run_half<tp::f16>(isa);
    run_half<tp::bf16>(isa);
    check_bf16_round_trip(isa);
    check_lanes_log(isa);
    run_ce<float>(isa);
    run_ce<double>(isa);
    run_ce<tp::f16>(isa);
    run_ce<tp::bf16>(isa);
    run_backward<float>(isa);
    run_backward<double>(isa);
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
