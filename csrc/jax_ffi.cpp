// XLA FFI handlers of twopass.jax: they unpack XLA's buffers and call the kernels of
// twopass._core through its C table (c_api.h); no kernel code is here. Not part of the
// extension's build: src/twopass/jax/_build.py compiles this file on first use against
// the installed jaxlib's headers (jax.ffi.include_dir()), so jaxlib is never a build
// requirement of twopass, and ties the table to it with tp_jax_init.
//
// Buffers are row-major (ffi_call's default layouts). The softmax family reduces the
// axis `axis` (negative: counted from the end, so that the leading batch dimensions
// vmap adds leave it in place), seen as (outer, n, inner) as the NumPy path does; the
// backward kernels and the cross-entropy take rows of a last axis. Everything the
// Python side decided at trace time (op, algorithm, ISA, threads) comes as attributes.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <sys/mman.h>

#include "c_api.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

const tp_c_api* g_api = nullptr;

struct Elem {
  int bytes = 0;
  int half = 0;  // 1 float16, 2 bfloat16 (c_api.h's cross_entropy)
};

bool elem_of(ffi::DataType t, Elem* e) {
  switch (t) {
    case ffi::DataType::F32: *e = {4, 0}; return true;
    case ffi::DataType::F64: *e = {8, 0}; return true;
    case ffi::DataType::F16: *e = {2, 1}; return true;
    case ffi::DataType::BF16: *e = {2, 2}; return true;
    default: return false;
  }
}

ffi::Error fail(const std::string& what) { return ffi::Error::InvalidArgument("twopass.jax: " + what); }

ffi::Error result_of(int rc, const char* err) {
  return rc == 0 ? ffi::Error::Success() : ffi::Error::InvalidArgument(err);
}

// XLA maps a large output afresh on every call, on 4 KiB pages: the kernel's first
// touch of each page faults (4096x4096 float32: 16384 faults, most of a softmax's time).
// As src/twopass/_alloc.py does for the NumPy outputs, an output of at least `huge`
// bytes (0: off; set where THP is in madvise mode) gets its 2 MiB-aligned interior
// marked MADV_HUGEPAGE before it is written, and normal stores: the faults' zeroing has
// just brought the lines into cache (src/twopass/torch/_eager.py, _FRESH_STORES). Every
// output here is such fresh memory, so none takes streaming stores
// (src/twopass/_arrays.py, streaming_stores).
void huge_pages(void* p, size_t bytes, int64_t huge) {
  if (huge <= 0 || (int64_t)bytes < huge) return;
#ifdef MADV_HUGEPAGE
  const uintptr_t page = 2u << 20, a = ((uintptr_t)p + page - 1) & ~(page - 1),
                  b = ((uintptr_t)p + bytes) & ~(page - 1);
  if (b > a) madvise((void*)a, b - a, MADV_HUGEPAGE);
#endif
}

int64_t prod(ffi::AnyBuffer::Dimensions d, size_t from, size_t to) {
  int64_t p = 1;
  for (size_t i = from; i < to; ++i) p *= d[i];
  return p;
}

// softmax, log_softmax (y the shape of x) and logsumexp (y without the axis).
ffi::Error softmax_impl(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y, int64_t op, int64_t lse_op, int64_t algo,
                        int64_t isa, int64_t axis, int64_t threads, int64_t huge) {
  if (!g_api) return fail("the handlers were not initialised (tp_jax_init)");
  Elem e;
  if (!elem_of(x.element_type(), &e) || y->element_type() != x.element_type()) return fail("unsupported dtype");
  const auto d = x.dimensions();
  const int64_t rank = (int64_t)d.size(), ax = axis + rank;
  if (axis >= 0 || ax < 0) return fail("bad axis");
  const int64_t outer = prod(d, 0, ax), n = d[ax], inner = prod(d, ax + 1, rank);
  if (outer * inner == 0) return ffi::Error::Success();
  if (n == 0) return fail("empty axis (handled in Python)");
  const bool lse = op == lse_op;
  if (!lse) huge_pages(y->untyped_data(), y->size_bytes(), huge);
  char err[512] = "";
  const int rc = g_api->run((int)op, (int)algo, (int)isa, e.bytes, x.untyped_data(), y->untyped_data(), outer, n,
                            inner, n * inner, inner, lse ? inner : n * inner, lse ? 0 : inner, (int)threads, false,
                            e.half == 2, err, sizeof err);
  return result_of(rc, err);
}

// softmax / log_softmax backward over `axis` (counted from the end): gx from g and y;
// rows of the last axis, panels of another.
ffi::Error softmax_backward_impl(ffi::AnyBuffer g, ffi::AnyBuffer y, ffi::Result<ffi::AnyBuffer> gx, int64_t op,
                                 int64_t isa, int64_t axis, int64_t threads, int64_t huge) {
  if (!g_api) return fail("the handlers were not initialised (tp_jax_init)");
  Elem e;
  if (!elem_of(y.element_type(), &e) || g.element_type() != y.element_type() ||
      g.element_count() != y.element_count())
    return fail("backward: g and y of one dtype and shape");
  const auto d = y.dimensions();
  const int64_t rank = (int64_t)d.size(), ax = axis + rank;
  if (rank == 0 || axis >= 0 || ax < 0) return fail("backward: bad axis");
  const int64_t outer = prod(d, 0, ax), n = d[ax], inner = prod(d, ax + 1, rank);
  if (outer * n * inner == 0) return ffi::Error::Success();
  huge_pages(gx->untyped_data(), gx->size_bytes(), huge);
  char err[512] = "";
  const int rc = g_api->backward((int)op, (int)isa, e.bytes, g.untyped_data(), y.untyped_data(), nullptr,
                                 gx->untyped_data(), outer, n, n * inner, n * inner, n * inner, inner, (int)threads,
                                 false, e.half == 2, err, sizeof err);
  return result_of(rc, err);
}

// logsumexp backward over rows of the last axis: gx = g * exp(x - lse), g and lse per row.
ffi::Error logsumexp_backward_impl(ffi::AnyBuffer g, ffi::AnyBuffer x, ffi::AnyBuffer lse,
                                   ffi::Result<ffi::AnyBuffer> gx, int64_t op, int64_t isa, int64_t threads,
                                   int64_t huge) {
  if (!g_api) return fail("the handlers were not initialised (tp_jax_init)");
  Elem e;
  const auto d = x.dimensions();
  const int64_t n = d.size() == 0 ? 1 : d[d.size() - 1], rows = n ? (int64_t)x.element_count() / n : 0;
  if (!elem_of(x.element_type(), &e) || g.element_type() != x.element_type() ||
      lse.element_type() != x.element_type() || (int64_t)g.element_count() != rows ||
      (int64_t)lse.element_count() != rows)
    return fail("logsumexp backward: g, x and lse of one dtype, g and lse one per row");
  if (rows == 0) return ffi::Error::Success();
  huge_pages(gx->untyped_data(), gx->size_bytes(), huge);
  char err[512] = "";
  const int rc = g_api->backward((int)op, (int)isa, e.bytes, g.untyped_data(), x.untyped_data(), lse.untyped_data(),
                                 gx->untyped_data(), rows, n, 0, n, n, 1, (int)threads, false, e.half == 2, err,
                                 sizeof err);
  return result_of(rc, err);
}

// The cross-entropy of logits (..., N, C) against targets (..., N) (int32 or int64),
// with class weights (..., C) when has_weight; the leading dimensions (vmap's) are
// independent problems, each reduced on its own. loss: (...) or (..., N) for
// reduction 2 ("none"), of the logits' dtype (float32 for the halves); grad, when
// given, the logits' shape and dtype.
ffi::Error cross_entropy_impl(ffi::AnyBuffer x, ffi::AnyBuffer target, ffi::AnyBuffer weight, ffi::AnyBuffer* grad,
                              ffi::AnyBuffer* loss, int64_t isa, int64_t algo, int64_t ignore_index, double eps,
                              double zc, double cap, int64_t reduction, int64_t has_weight, int64_t threads,
                              int64_t huge) {
  if (!g_api) return fail("the handlers were not initialised (tp_jax_init)");
  Elem e;
  if (!elem_of(x.element_type(), &e)) return fail("cross_entropy: unsupported dtype");
  const auto d = x.dimensions();
  if (d.size() < 2) return fail("cross_entropy: logits of rank >= 2");
  const int64_t rows = d[d.size() - 2], n = d[d.size() - 1], batch = prod(d, 0, d.size() - 2);
  const auto tt = target.element_type();
  if ((tt != ffi::DataType::S32 && tt != ffi::DataType::S64) || (int64_t)target.element_count() != batch * rows)
    return fail("cross_entropy: int32 or int64 targets, one per row");
  const int64_t wstride = has_weight && weight.dimensions().size() > 1 ? n : 0;
  if (has_weight && (int64_t)weight.element_count() != (wstride ? batch * n : n))
    return fail("cross_entropy: weight of one entry per class");
  const int64_t lsize = e.half ? 4 : e.bytes, per_loss = reduction == 2 ? rows : 1;
  if (grad) huge_pages(grad->untyped_data(), grad->size_bytes(), huge);
  std::vector<int64_t> t64(tt == ffi::DataType::S32 ? rows : 0);
  char err[512] = "";
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t* t = (const int64_t*)target.untyped_data() + b * rows;
    if (!t64.empty()) {
      const int32_t* t32 = (const int32_t*)target.untyped_data() + b * rows;
      for (int64_t r = 0; r < rows; ++r) t64[r] = t32[r];
      t = t64.data();
    }
    const char* xb = (const char*)x.untyped_data() + b * rows * n * e.bytes;
    const void* wb = has_weight ? (const char*)weight.untyped_data() + b * wstride * lsize : nullptr;
    void* gb = grad ? (char*)grad->untyped_data() + b * rows * n * e.bytes : nullptr;
    void* lb = (char*)loss->untyped_data() + b * per_loss * lsize;
    const int rc = g_api->cross_entropy((int)isa, (int)algo, e.bytes, e.half, xb, rows, n, n, t, wb, ignore_index, eps,
                                        zc, cap, (int)reduction, gb, n, lb, nullptr, nullptr, (int)threads, false,
                                        err, sizeof err);
    if (rc) return result_of(rc, err);
  }
  return ffi::Error::Success();
}

ffi::Error cross_entropy_loss(ffi::AnyBuffer x, ffi::AnyBuffer target, ffi::AnyBuffer weight,
                              ffi::Result<ffi::AnyBuffer> loss, int64_t isa, int64_t algo, int64_t ignore_index,
                              double eps, double zc, double cap, int64_t reduction, int64_t has_weight,
                              int64_t threads, int64_t huge) {
  return cross_entropy_impl(x, target, weight, nullptr, &*loss, isa, algo, ignore_index, eps, zc, cap, reduction,
                            has_weight, threads, huge);
}

ffi::Error cross_entropy_with_grad(ffi::AnyBuffer x, ffi::AnyBuffer target, ffi::AnyBuffer weight,
                                   ffi::Result<ffi::AnyBuffer> loss, ffi::Result<ffi::AnyBuffer> grad, int64_t isa,
                                   int64_t algo, int64_t ignore_index, double eps, double zc, double cap,
                                   int64_t reduction, int64_t has_weight, int64_t threads,
                                   int64_t huge) {
  return cross_entropy_impl(x, target, weight, &*grad, &*loss, isa, algo, ignore_index, eps, zc, cap, reduction,
                            has_weight, threads, huge);
}

}  // namespace

extern "C" {

// Ties the handlers to twopass._core's table (its address from _core.c_api()); 0 when
// the table is of this file's version.
__attribute__((visibility("default"))) int tp_jax_init(const void* api) {
  const tp_c_api* a = (const tp_c_api*)api;
  if (!a || a->version != TP_C_API_VERSION) return -1;
  g_api = a;
  return 0;
}

}  // extern "C"

XLA_FFI_DEFINE_HANDLER_SYMBOL(tp_jax_softmax, softmax_impl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("op")
                                  .Attr<int64_t>("lse_op")
                                  .Attr<int64_t>("algo")
                                  .Attr<int64_t>("isa")
                                  .Attr<int64_t>("axis")
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("huge"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(tp_jax_softmax_backward, softmax_backward_impl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("op")
                                  .Attr<int64_t>("isa")
                                  .Attr<int64_t>("axis")
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("huge"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(tp_jax_logsumexp_backward, logsumexp_backward_impl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("op")
                                  .Attr<int64_t>("isa")
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("huge"));

#define TP_CE_ATTRS                   \
  .Attr<int64_t>("isa")               \
      .Attr<int64_t>("algo")          \
      .Attr<int64_t>("ignore_index")  \
      .Attr<double>("eps")            \
      .Attr<double>("zc")             \
      .Attr<double>("cap")            \
      .Attr<int64_t>("reduction")     \
      .Attr<int64_t>("has_weight")    \
      .Attr<int64_t>("threads")       \
      .Attr<int64_t>("huge")

XLA_FFI_DEFINE_HANDLER_SYMBOL(tp_jax_cross_entropy, cross_entropy_loss,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() TP_CE_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(tp_jax_cross_entropy_grad, cross_entropy_with_grad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() TP_CE_ATTRS);
