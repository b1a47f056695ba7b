// The fused cross-entropy (docs/cross_entropy.md) over the softmax kernels.
//
// Each thread takes whole rows. Per row: the soft-capped copy (when asked), the target
// logit and the label-smoothing sum, then either logsumexp (loss only: one pass) or the
// softmax with its lse into a scratch row (one pass over memory, the rest from cache),
// and the gradient from that scratch row into the output (streaming stores when asked
// and it is not the logits themselves: streaming_stores.h). A row of the
// large-vocabulary losses this is for (32K-256K classes) fits in L2 or L3, so the
// logits are read from memory once.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cross_entropy.h"

#include "dispatch.h"
#include "kernel_api.h"
#include "lse.h"
#include "softmax.h"
#include "streaming_stores.h"
#include "threads.h"

namespace tp {
namespace {

// x as a double, whatever its storage type.
template <class S> double wide(S v) { return (double)Storage<S>::widen(v); }

// The loss of a row whose target logit is large (|x_t| >= 1024, e.g. logits near
// FLT_MAX): lse - x_t would cancel in the rounded lse, so it is summed relative to the
// row maximum m instead, in double (a slow path for absurd logits; it runs before an
// in-place gradient overwrites the row). When |x_t| is small, a large lse makes
// lse - x_t large and its rounding relatively small, so the fast formula is kept.
template <class L, class T>
double huge_row_ce(const L* x, const T* w, int64_t n, int64_t t, double eps, double W, double wt) {
  double m = -INFINITY;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, wide(x[j]));
  double s = 0, swd = 0;
  for (int64_t j = 0; j < n; ++j) {
    s += std::exp(wide(x[j]) - m);
    if (eps > 0) swd += (w ? (double)w[j] : 1.0) * (m - wide(x[j]));
  }
  const double rel = std::log(s);  // lse = m + rel
  double ce = (1 - eps) * wt * (rel + (m - wide(x[t])));
  if (eps > 0) ce += eps / n * (W * rel + swd);
  return ce;
}

// Scratch row `slot` (0 or 1) of at least n elements of T, not cleared. Rows of up to
// kKeptElements stay with the thread for its next call: a std::vector per call zeroed
// them, and glibc gave two freed rows of a 1M-class row back to the kernel, so that
// every call faulted their pages in again (bfloat16 1x1M, loss and gradient, Zen 4:
// 5.4 ns per element against 0.5). Longer rows are the caller's, freed after the call.
template <class T> class ScratchRow {
 public:
  static constexpr int64_t kKeptElements = int64_t{1} << 20;
  ScratchRow(int slot, int64_t n) {
    if (n <= 0) return;
    if (n > kKeptElements) {
      own_.reset(new T[(size_t)n]);
      data_ = own_.get();
      return;
    }
    thread_local std::vector<T> kept[2];  // (as loops.h's wide_row: zeroed only as it grows)
    if ((int64_t)kept[slot].size() < n) kept[slot].resize((size_t)n);
    data_ = kept[slot].data();
  }
  T* data() const { return data_; }

 private:
  std::unique_ptr<T[]> own_;
  T* data_ = nullptr;
};

// The kernels of a storage type.
template <class S> const SoftmaxKernels<S>& softmax_kernels(const KernelTable& K);
template <> const SoftmaxKernels<float>& softmax_kernels(const KernelTable& K) { return K.f32; }
template <> const SoftmaxKernels<double>& softmax_kernels(const KernelTable& K) { return K.f64; }
template <> const SoftmaxKernels<f16>& softmax_kernels(const KernelTable& K) { return K.f16s; }
template <> const SoftmaxKernels<bf16>& softmax_kernels(const KernelTable& K) { return K.bf16s; }
template <class S> const CrossEntropyRowKernels<S>& ce_kernels(const KernelTable& K);
template <> const CrossEntropyRowKernels<float>& ce_kernels(const KernelTable& K) { return K.ce_f32; }
template <> const CrossEntropyRowKernels<double>& ce_kernels(const KernelTable& K) { return K.ce_f64; }
template <> const CrossEntropyRowKernels<f16>& ce_kernels(const KernelTable& K) { return K.ce_f16; }
template <> const CrossEntropyRowKernels<bf16>& ce_kernels(const KernelTable& K) { return K.ce_bf16; }

// Rows of logits and gradient of storage type S (float16 and bfloat16 read and written by
// the kernels, converted in registers), computed in T: scratch rows, weights and the
// soft-capped logits are of T.
template <class S> void ce_rows(const CrossEntropyProblem& pb, const KernelTable& K, Isa isa, int64_t lo, int64_t hi) {
  using T = Compute<S>;
  const CrossEntropyRowKernels<S>& ce = ce_kernels<S>(K);
  const S* x = static_cast<const S*>(pb.x);
  S* grad = static_cast<S*>(pb.grad);
  const T* w = static_cast<const T*>(pb.weight);
  const int64_t n = pb.n;
  const bool capped = pb.softcap > 0;
  const ScratchRow<T> capbuf(0, capped ? n : 0);  // this thread's soft-capped row
  const ScratchRow<T> pbuf(1, grad ? n : 0);      // and its softmax (stays in cache)
  const double eps = pb.smoothing, nan = std::numeric_limits<double>::quiet_NaN();

  // The next row's logits, prefetched into the L2 while the exp and gradient passes
  // compute on this row in cache, so that its first pass (the maximum, at the L1's pace)
  // does not wait on memory with nothing to overlap: where this row, its scratch row and
  // the next fit in kNextRowBytes (a conservative L2). In place, 2048x32000, one thread,
  // Zen 4 VM (1 MiB L2): see the README, "Cross-entropy".
  constexpr int64_t kNextRowBytes = 512 << 10;
  const bool prefetch_rows = grad && pb.algo == Algo::kThreePassReload &&
                             n * (2 * (int64_t)sizeof(S) + (int64_t)sizeof(T)) <= kNextRowBytes;

  // One row, its logits src of type L: S, or T when soft-capped into capbuf; known_lse:
  // the row's lse computed beforehand (or null).
  auto row = [&](int64_t i, const auto* src, const T* known_lse) {
    using L = std::remove_cv_t<std::remove_pointer_t<decltype(src)>>;
    const Passes<L>& passes = softmax_kernels<L>(K).row;
    S* gr = grad ? grad + i * pb.gs : nullptr;
    const S* next = prefetch_rows && i + 1 < hi ? x + (i + 1) * pb.xs : nullptr;
    const int64_t t = pb.target[i];
    const bool ignored = t == pb.ignore_index;
    const bool valid = !ignored && t >= 0 && t < n;
    // Read before the softmax may overwrite the row (in-place gradient).
    const double xt = valid ? wide(src[t]) : 0.0;
    const double wx = valid && eps > 0 ? ce_kernels<L>(K).dot(src, w, n) : 0.0;
    // |x_t| >= 1024: lse - x_t may cancel in the rounded lse; see huge_row_ce.
    const bool huge = valid && !(std::fabs(xt) < 1024);
    const double ce_huge = huge ? huge_row_ce(src, w, n, t, eps, pb.weight_total, w ? (double)w[t] : 1.0) : 0.0;

    // p = exp(x - lse) * inv_s: either from the reload's two passes (inv_s = 1 / the
    // exponentials' sum, folded into the gradient's scale: one pass fewer), or from the
    // generic driver in T, which also handles rows of special values.
    T* p = pbuf.data();
    double lse = 0, inv_s = 1;
    bool done = false;
    if (known_lse) {
      lse = (double)*known_lse;
      done = true;
    } else if (!gr && !std::is_same_v<L, T>) {
      // The loss alone on a long half row: its maximum and sum of exps read from the row
      // as it is (two reads) rather than widened into a float32 row of fresh pages, which
      // cost more (one row of 2^24, float16, one thread, Xeon VM: 40-45 ms, torch 34-38).
      T m;
      double s;
      passes.max(Group<L>{src, nullptr, n, 1, 1, 1}, &m);
      passes.sumexp(Group<L>{src, nullptr, n, 1, 1, 1}, &m, &s);
      if ((done = std::isfinite(s) && s > 0 && std::isfinite(m))) lse = (double)m + log_at_least_1(s);
    } else if (gr && pb.algo == Algo::kThreePassReload) {
      T m;
      double s;
      passes.max(Group<L>{src, nullptr, n, 1, 1, 1}, &m);
      const bool stream_p = use_streaming_stores(pb.stream, Reuse::kReadAgain);  // p is read again
      const L* next_l = nullptr;  // (a soft-capped row: src is the capped copy, not x)
      if constexpr (std::is_same_v<L, S>) next_l = next;
      passes.exp_store_sum_wide(src, p, n, m, &s, stream_p, next_l);
      if ((done = std::isfinite(s) && s > 0 && std::isfinite(m))) lse = (double)m + std::log(s), inv_s = 1 / s;
    }
    if (!done) {
      const T* xw = reinterpret_cast<const T*>(src);
      ScratchRow<T> widened(0, std::is_same_v<L, T> ? 0 : n);  // (not capped: slot 0 is free)
      if constexpr (!std::is_same_v<L, T>) {  // a half row: the driver runs in T
        ce.widen(src, widened.data(), n);
        xw = widened.data();
      }
      T lse_t;
      Problem sp{gr ? Op::kSoftmax : Op::kLogSumExp, pb.algo, (int)sizeof(T), xw, gr ? (void*)p : (void*)&lse_t,
                 1, n, 1, n, 1, n, 1, 1};
      if (gr) sp.lse = &lse_t;
      run(sp, isa, 1, use_streaming_stores(pb.stream, Reuse::kReadAgain));  // p is read again
      lse = (double)lse_t;
    }
    pb.lse[i] = lse;

    if (ignored) {
      pb.ce[i] = pb.z[i] = 0;
      if (gr) std::memset((void*)gr, 0, sizeof(S) * n);
      return;
    }
    if (!valid) {  // the Python layer rejects these; stay safe without it
      pb.ce[i] = pb.z[i] = nan;
      if (gr) std::fill(gr, gr + n, Storage<S>::narrow((T)nan));
      return;
    }
    const double wt = w ? (double)w[t] : 1.0;
    double ce_i;
    if (huge) {
      ce_i = ce_huge;
    } else {
      ce_i = (1 - eps) * wt * (lse - xt);
      if (eps > 0) ce_i += eps / n * (pb.weight_total * lse - wx);
    }
    if (lse == INFINITY) ce_i = nan;  // a +inf logit: the softmax is NaN, as in torch
    pb.ce[i] = ce_i;
    pb.z[i] = pb.z_coef > 0 ? pb.z_coef * lse * lse : 0.0;
    if (!gr) return;

    // dx'_j = A p_j - c w_j - [j == t] b, times the soft-cap's derivative.
    const double A = pb.s_ce * ((1 - eps) * wt + eps / n * pb.weight_total) + pb.s_z * 2 * pb.z_coef * lse;
    const double c = pb.s_ce * eps / n, b = pb.s_ce * (1 - eps) * wt;
    const double pt = (double)p[t] * inv_s;
    const double inv_cap = capped ? 1.0 / pb.softcap : 0.0;
    // grad == x: the gradient overwrites the logits just read.
    const bool stream = use_streaming_stores(pb.stream, pb.grad == pb.x ? Reuse::kInPlace : Reuse::kFinalOutput);
    ce.gradient(p, gr, capped ? capbuf.data() : nullptr, w, n, (T)(A * inv_s), (T)c, (T)inv_cap, stream, next);
    const double dt = capped ? 1 - (xt * inv_cap) * (xt * inv_cap) : 1.0;
    gr[t] = Storage<S>::narrow((T)(((A * pt - c * wt) - b) * dt));
  };

  // The forward alone: the rows' lse first, one driver call per block of rows
  // (softmax.cpp's row blocks for short rows), not one per row, whose bookkeeping
  // outweighs a short row's work (65536x64, one thread, Xeon VM, twopass.torch against
  // torch: float32 14.7 against 5.3 ms, bfloat16 13.0 against 4.2). Half rows are widened
  // into a float32 block first (their lse is kept in T), up to kLseElements a block.
  constexpr int64_t kLseRows = 256, kLseElements = 1 << 14;
  constexpr bool kHalf = !std::is_same_v<S, T>;
  const bool lse_first = !grad && !capped && (!kHalf || n <= kLseElements);  // (longer half rows: see row)
  const int64_t block = kHalf ? std::clamp<int64_t>(kLseElements / std::max<int64_t>(n, 1), 1, kLseRows) : kLseRows;
  const ScratchRow<T> widened_rows(0, lse_first && kHalf ? block * n : 0);  // (slot 0: capbuf's, unused here)
  T lse_rows[kLseRows];
  for (int64_t b = lo; b < hi; b += block) {
    const int64_t k = std::min(block, hi - b);
    if (lse_first) {
      const void* xb = x + b * pb.xs;
      int64_t xs = pb.xs;
      if constexpr (kHalf) {
        if (pb.xs == n)  // contiguous rows: one call for the block
          ce.widen(x + b * pb.xs, widened_rows.data(), k * n);
        else
          for (int64_t j = 0; j < k; ++j) ce.widen(x + (b + j) * pb.xs, widened_rows.data() + j * n, n);
        xb = widened_rows.data(), xs = n;
      }
      const Problem sp{Op::kLogSumExp, pb.algo, (int)sizeof(T), xb, lse_rows, k, n, 1, xs, 1, 1, 1, 1};
      run(sp, isa, 1, false);
    }
    for (int64_t i = b; i < b + k; ++i) {
      const S* xr = x + i * pb.xs;
      if (capped) {
        ce.softcap(xr, capbuf.data(), n, (T)pb.softcap);
        row(i, (const T*)capbuf.data(), nullptr);
      } else {
        row(i, xr, lse_first ? lse_rows + (i - b) : nullptr);
      }
    }
  }
}

// The local gradient of a sharded row (twopass.torch.distributed): the lse is the whole
// row's, known after the collective, so one pass: p = exp(x - lse) into a scratch row in
// cache, then the gradient from it (streamed), then the owned target's term.
template <class T>
void ce_grad_rows(const CrossEntropyGradProblem& pb, const Passes<T>& passes, const CrossEntropyRowKernels<T>& ce,
                  int64_t lo, int64_t hi) {
  const T* x = static_cast<const T*>(pb.x);
  T* grad = static_cast<T*>(pb.grad);
  const T* w = static_cast<const T*>(pb.weight);
  const int64_t n = pb.n;
  const ScratchRow<T> p(1, n);
  const T one = 1;
  for (int64_t i = lo; i < hi; ++i) {
    T* gr = grad + i * pb.gs;
    const int64_t t = pb.target[i];
    if (t == -2) {  // ignored row: exactly 0, whatever its logits hold
      std::memset(gr, 0, sizeof(T) * n);
      continue;
    }
    const T m = (T)pb.lse[i];
    const bool stream_p = use_streaming_stores(pb.stream, Reuse::kReadAgain);
    passes.exp_scale(Group<T>{x + i * pb.xs, p.data(), n, 1, 1, 1}, &m, &one, stream_p);
    const bool stream_grad = use_streaming_stores(pb.stream, Reuse::kFinalOutput);
    ce.gradient(p.data(), gr, nullptr, w, n, (T)pb.a[i], (T)pb.c[i], 0, stream_grad, nullptr);
    if (t >= 0) gr[t] = (T)((double)gr[t] - pb.b[i]);
  }
}

}  // namespace

void cross_entropy_grad(const CrossEntropyGradProblem& pb, Isa isa, int threads) {
  const KernelTable& K = kernels(isa);
  if (pb.rows == 0 || pb.n == 0) return;
  threads = (int)std::max<int64_t>(1, std::min<int64_t>({(int64_t)threads, pb.rows, pb.rows * pb.n / kMinPerThread}));
  parallel_ranges(pb.rows, threads, pb.rows * pb.n, [&](int64_t lo, int64_t hi) {
    if (pb.dtype_bytes == 4)
      ce_grad_rows<float>(pb, K.f32.row, K.ce_f32, lo, hi);
    else
      ce_grad_rows<double>(pb, K.f64.row, K.ce_f64, lo, hi);
  });
}

void cross_entropy(const CrossEntropyProblem& pb, Isa isa, int threads) {
  const KernelTable& K = kernels(isa);
  if (pb.rows == 0) return;
  threads = (int)std::max<int64_t>(1, std::min<int64_t>({(int64_t)threads, pb.rows, pb.rows * pb.n / kMinPerThread}));
  parallel_ranges(pb.rows, threads, pb.rows * pb.n, [&](int64_t lo, int64_t hi) {
    if (pb.bf16)
      ce_rows<bf16>(pb, K, isa, lo, hi);
    else if (pb.f16)
      ce_rows<f16>(pb, K, isa, lo, hi);
    else if (pb.dtype_bytes == 4)
      ce_rows<float>(pb, K, isa, lo, hi);
    else
      ce_rows<double>(pb, K, isa, lo, hi);
  });
}

namespace {

// A float64 value in S, rounded once.
template <class S> S round_once(double v) {
  if constexpr (std::is_same_v<S, Compute<S>>) {
    return (S)v;
  } else {
    // To float32 rounded to odd, then to S: one rounding of v, as NumPy's float64 ->
    // float16 / bfloat16 (float32 keeps more than 2 bits beyond S's).
    float f = (float)v;
    if (std::isfinite(v) && (double)f != v) {
      if (std::fabs((double)f) > std::fabs(v)) f = std::nextafter(f, 0.0f);
      f = bits_to_float(float_to_bits(f) | 1u);
    }
    return Storage<S>::narrow(f);
  }
}
template <class S> void to_rows(const std::vector<double>& v, uintptr_t out) {
  S* o = (S*)out;
  for (size_t i = 0; i < v.size(); ++i) o[i] = round_once<S>(v[i]);
}

}  // namespace

void cross_entropy_rows(int isa, int algo, int bytes, int half, uintptr_t x, int64_t rows, int64_t n, int64_t xs,
                        uintptr_t target, uintptr_t weight, int64_t ignore_index, double eps, double zc, double cap,
                        int reduction, uintptr_t grad, int64_t gs, uintptr_t loss, uintptr_t zl, uintptr_t lse,
                        int threads, bool stream, bool half_loss) {
  if (isa < 0 || isa >= kIsaCount || algo < 0 || algo >= kAlgoCount ||
      (half ? bytes != 2 || half > 2 : bytes != 4 && bytes != 8) || threads < 1 || rows < 0 || n < 0 || reduction < 0 || reduction > 2 || (rows > 0 && (!x || !target)) ||
      ((reduction != 2 || rows > 0) && !loss))
    throw std::invalid_argument("twopass.cross_entropy: bad arguments");
  const int compute = half ? 4 : bytes;  // the compute type's size: weight, lse (and loss, z but with half_loss)
  const int64_t* t = (const int64_t*)target;
  auto w_at = [&](int64_t j) { return compute == 4 ? (double)((const float*)weight)[j] : ((const double*)weight)[j]; };
  double n_valid = 0, wt_sum = 0, weight_total = (double)n;
  if (weight) {
    weight_total = 0;
    for (int64_t j = 0; j < n; ++j) weight_total += w_at(j);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t v = t[r];
    if (v == ignore_index) continue;
    if (v < 0 || v >= n)
      throw std::invalid_argument("twopass.cross_entropy: target[" + std::to_string(r) + "] = " + std::to_string(v) +
                                  " is outside [0, " + std::to_string(n) + ") and is not ignore_index");
    n_valid += 1;
    wt_sum += !weight ? 1.0 : w_at(v);
  }
  const double s_ce = reduction == 0 ? 1.0 / wt_sum : 1.0, s_z = reduction == 0 ? 1.0 / n_valid : 1.0;
  std::vector<double> ce(rows), z(rows), ls(rows);
  CrossEntropyProblem pb{compute, (const void*)x, rows, n, rows > 1 ? xs : n, t, (const void*)weight,
                             weight_total, ignore_index, eps, zc, cap, s_ce, s_z, (void*)grad, rows > 1 ? gs : n,
                             ce.data(), z.data(), ls.data(), (Algo)algo, stream, half == 2, half == 1};
  if (rows > 0) cross_entropy(pb, (Isa)isa, threads);
  if (lse) compute == 4 ? to_rows<float>(ls, lse) : to_rows<double>(ls, lse);
  double sc = 0, sz = 0;
  for (int64_t r = 0; r < rows; ++r) sc += ce[r], sz += z[r];
  if (reduction == 2) {
    for (int64_t r = 0; r < rows; ++r) ce[r] += z[r];
  } else {
    ce.assign(1, reduction == 1 ? sc + sz : sc / wt_sum + sz / n_valid);
    z.assign(1, reduction == 1 ? sz : sz / n_valid);
  }
  auto put = [&](const std::vector<double>& v, uintptr_t out) {
    if (half && half_loss)
      half == 2 ? to_rows<bf16>(v, out) : to_rows<f16>(v, out);
    else
      compute == 4 ? to_rows<float>(v, out) : to_rows<double>(v, out);
  };
  put(ce, loss);
  if (zl) put(z, zl);
}


}  // namespace tp
