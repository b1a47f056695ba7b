// Python binding (nanobind), and nothing else. The Python layer checks arguments and lays
// the problem out; this only unpacks the arrays, checks the codes and releases the GIL.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <cstdint>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>

#include "c_api.h"
#include "codes.h"
#include "cross_entropy.h"
#include "dispatch.h"
#include "probes.h"
#include "softmax.h"
#include "softmax_backward.h"
#include "threads.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace nb = nanobind;

namespace tp {
void bind_torch_eager(nb::module_& m);  // torch_eager.cpp
void bind_numpy_rows(nb::module_& m);   // numpy_rows.cpp
TeamRun torch_team();                   // torch_eager.cpp: torch's OpenMP team, or null
int torch_rows(int op, int bytes, bool bf16, const void* x, void* y, int64_t rows, int64_t n, int threads);
int torch_backward(int op, int bytes, bool bf16, const void* g, const void* y, const void* lse, void* gx, int64_t rows,
                   int64_t n, int threads);  // torch_eager.cpp: twopass.torch's autograd node
}

namespace {

// Whether none of the pages holding the bytes at 1/4, 1/2 and 3/4 of [address, address +
// nbytes) is resident (mincore): memory mapped but never written since (a fresh np.empty
// of a mapping of its own; not its ends: malloc writes its header on the first page),
// whose first touch will fault each page in and zero it through the cache, where
// streaming stores only evict what the zeroing brought in (_arrays.streaming_stores).
// False where it cannot tell (not Linux, mincore fails).
bool untouched(uintptr_t address, int64_t nbytes) {
#if defined(__linux__)
  if (nbytes <= 0) return false;
  const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  const uintptr_t quarter = (uintptr_t)nbytes / 4;
  for (const uintptr_t at : {address + quarter, address + 2 * quarter, address + 3 * quarter}) {
    unsigned char resident = 0;
    if (mincore((void*)(at - at % page), 1, &resident) != 0 || (resident & 1)) return false;
  }
  return true;
#else
  (void)address, (void)nbytes;
  return false;
#endif
}

// Codes from Python (codes.h): dense, 0 .. count - 1.
bool valid_isa(int isa) { return isa >= 0 && isa < tp::kIsaCount; }
bool valid_op(int op) { return op >= 0 && op < tp::kOpCount; }
bool valid_algo(int algo) { return algo >= 0 && algo < tp::kAlgoCount; }

int dtype_bytes(const nb::dlpack::dtype& dt) {
  if (dt == nb::dtype<float>()) return 4;
  if (dt == nb::dtype<double>()) return 8;
  throw nb::type_error("twopass: kernels take float32 or float64 arrays");
}

// `dtype` (codes.h, Dtype): float16 and bfloat16 come as uint16 views of x and y; -1:
// float32 or float64, from the arrays.
void run(int op, int algo, int isa, nb::ndarray<nb::ro, nb::device::cpu> x, nb::ndarray<nb::device::cpu> y,
         int64_t outer, int64_t n, int64_t inner, int64_t xs_outer, int64_t xs_n, int64_t ys_outer, int64_t ys_n,
         int threads, bool stream, int dtype) {
  const bool half = dtype == (int)tp::Dtype::kFloat16 || dtype == (int)tp::Dtype::kBfloat16;
  if (half && !(x.dtype() == nb::dtype<uint16_t>() && y.dtype() == nb::dtype<uint16_t>()))
    throw nb::type_error("twopass: float16 and bfloat16 come as uint16 views of x and y");
  const int bytes = half ? 2 : dtype_bytes(x.dtype());
  if (!half && dtype_bytes(y.dtype()) != bytes) throw nb::type_error("twopass: x and y must have the same dtype");
  if (!valid_op(op) || !valid_algo(algo) || !valid_isa(isa) || threads < 1 || outer < 0 || n < 0 || inner < 0)
    throw std::invalid_argument("twopass: bad problem description");
  tp::Problem pb{(tp::Op)op, (tp::Algo)algo, bytes, x.data(), y.data(), outer, n, inner,
                 xs_outer, xs_n, ys_outer, ys_n, tp::panel_lanes((tp::Isa)isa, bytes)};
  pb.bf16 = dtype == (int)tp::Dtype::kBfloat16;
  nb::gil_scoped_release release;
  tp::run(pb, (tp::Isa)isa, threads, stream);
}

// The eager path of twopass.torch (src/twopass/torch/_eager.py): arrays as addresses
// (Tensor.data_ptr()) and the layout as plain integers, checked on the Python side
// against the tensor itself. Converting a tensor to an ndarray (DLPack) here costs
// more than the kernel on a row of 1024 floats; this call costs about 0.3 us.
// bytes 2: float16, or bfloat16 when `bf16`.
void run_ptr(int op, int algo, int isa, int bytes, uintptr_t x, uintptr_t y, int64_t outer, int64_t n, int64_t inner,
             int64_t xs_outer, int64_t xs_n, int64_t ys_outer, int64_t ys_n, int threads, bool stream, bool bf16) {
  if (!valid_op(op) || !valid_algo(algo) || !valid_isa(isa) || (bytes != 2 && bytes != 4 && bytes != 8) ||
      threads < 1 || outer < 0 || n < 0 || inner < 0 || !x || !y)
    throw std::invalid_argument("twopass: bad problem description");
  tp::Problem pb{(tp::Op)op, (tp::Algo)algo, bytes, (const void*)x, (void*)y, outer, n, inner,
                 xs_outer, xs_n, ys_outer, ys_n, tp::panel_lanes((tp::Isa)isa, bytes)};
  pb.bf16 = bytes == 2 && bf16;
  tp::run(pb, (tp::Isa)isa, threads, stream);
}

// The backward of the same path (softmax_backward.h): rows of a last axis, or (inner >
// 1, softmax and log_softmax) blocks of C-contiguous (n, inner) reduced over their n.
void backward_ptr(int op, int isa, int bytes, uintptr_t g, uintptr_t y, uintptr_t lse, uintptr_t gx, int64_t rows,
                  int64_t n, int64_t gs, int64_t ys, int64_t xs, int threads, bool stream, bool bf16,
                  int64_t inner = 1) {
  if (!valid_op(op) || !valid_isa(isa) || (bytes != 2 && bytes != 4 && bytes != 8) || threads < 1 || rows < 0 ||
      n < 0 || inner < 1 || !g || !y || !gx || (op == (int)tp::Op::kLogSumExp && (!lse || inner != 1)))
    throw std::invalid_argument("twopass: bad backward problem");
  tp::BackwardProblem pb{(tp::Op)op, bytes, (const void*)g, (const void*)y, (const void*)lse, (void*)gx,
                         rows, n, gs, ys, xs, bytes == 2 && bf16, inner};
  tp::run_backward(pb, (tp::Isa)isa, threads, stream);
}

// The Python entries of the two above and of tp::cross_entropy_rows (cross_entropy.h):
// the same calls with the GIL released; `torch_team` (twopass.torch's calls): on torch's
// OpenMP team where it has one (threads.h, TeamScope).
void run_ptr_py(int op, int algo, int isa, int bytes, uintptr_t x, uintptr_t y, int64_t outer, int64_t n,
                int64_t inner, int64_t xs_outer, int64_t xs_n, int64_t ys_outer, int64_t ys_n, int threads,
                bool stream, bool bf16, bool torch_team) {
  tp::TeamScope team(torch_team && threads > 1 ? tp::torch_team() : nullptr);
  nb::gil_scoped_release release;
  run_ptr(op, algo, isa, bytes, x, y, outer, n, inner, xs_outer, xs_n, ys_outer, ys_n, threads, stream, bf16);
}

void backward_ptr_py(int op, int isa, int bytes, uintptr_t g, uintptr_t y, uintptr_t lse, uintptr_t gx,
                     int64_t rows, int64_t n, int64_t gs, int64_t ys, int64_t xs, int threads, bool stream, bool bf16,
                     bool torch_team, int64_t inner) {
  tp::TeamScope team(torch_team && threads > 1 ? tp::torch_team() : nullptr);
  nb::gil_scoped_release release;
  backward_ptr(op, isa, bytes, g, y, lse, gx, rows, n, gs, ys, xs, threads, stream, bf16, inner);
}

// bytes 2: bfloat16 when `bf16`, else float16; loss and z then in that dtype.
void cross_entropy_ptr(int isa, int algo, int bytes, uintptr_t x, int64_t rows, int64_t n, int64_t xs,
                       uintptr_t target, uintptr_t weight, int64_t ignore_index, double eps, double zc, double cap,
                       int reduction, uintptr_t grad, int64_t gs, uintptr_t loss, uintptr_t zl, uintptr_t lse,
                       int threads, bool stream, bool bf16, bool torch_team) {
  tp::TeamScope team(torch_team && threads > 1 ? tp::torch_team() : nullptr);
  nb::gil_scoped_release release;
  tp::cross_entropy_rows(isa, algo, bytes, bytes == 2 ? (bf16 ? 2 : 1) : 0, x, rows, n, xs, target, weight, ignore_index,
                     eps, zc, cap, reduction, grad, gs, loss, zl, lse, threads, stream, true);
}

// The same three, and twopass.torch's autograd node's calls (torch_eager.cpp), behind the
// C table of c_api.h: exceptions become an error message.
template <class F> int c_call(char* err, size_t err_len, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    if (err_len) std::snprintf(err, err_len, "%s", e.what());
  } catch (...) {
    if (err_len) std::snprintf(err, err_len, "twopass: unknown C++ exception");
  }
  return -1;
}

const tp_c_api kCApi = {
    TP_C_API_VERSION,
    [](int op, int algo, int isa, int bytes, const void* x, void* y, int64_t outer, int64_t n, int64_t inner,
       int64_t xs_outer, int64_t xs_n, int64_t ys_outer, int64_t ys_n, int threads, int stream, int bf16, char* err,
       size_t err_len) {
      return c_call(err, err_len, [&] {
        run_ptr(op, algo, isa, bytes, (uintptr_t)x, (uintptr_t)y, outer, n, inner, xs_outer, xs_n, ys_outer, ys_n,
                threads, stream != 0, bf16 != 0);
      });
    },
    [](int op, int isa, int bytes, const void* g, const void* y, const void* lse, void* gx, int64_t rows, int64_t n,
       int64_t gs, int64_t ys, int64_t xs, int64_t inner, int threads, int stream, int bf16, char* err,
       size_t err_len) {
      return c_call(err, err_len, [&] {
        backward_ptr(op, isa, bytes, (uintptr_t)g, (uintptr_t)y, (uintptr_t)lse, (uintptr_t)gx, rows, n, gs, ys, xs,
                     threads, stream != 0, bf16 != 0, inner);
      });
    },
    [](int isa, int algo, int bytes, int half, const void* x, int64_t rows, int64_t n, int64_t xs,
       const int64_t* target, const void* weight, int64_t ignore_index, double eps, double zc, double cap,
       int reduction, void* grad, int64_t gs, void* loss, void* zl, void* lse, int threads, int stream, char* err,
       size_t err_len) {
      return c_call(err, err_len, [&] {
        tp::cross_entropy_rows(isa, algo, bytes, half, (uintptr_t)x, rows, n, xs, (uintptr_t)target, (uintptr_t)weight,
                           ignore_index, eps, zc, cap, reduction, (uintptr_t)grad, gs, (uintptr_t)loss,
                           (uintptr_t)zl, (uintptr_t)lse, threads, stream != 0, false);
      });
    },
    [](int op, int bytes, int bf16, const void* x, void* y, int64_t rows, int64_t n, int threads, char* err,
       size_t err_len) {
      int r = -1;
      return c_call(err, err_len, [&] { r = tp::torch_rows(op, bytes, bf16 != 0, x, y, rows, n, threads); }) ? -1 : r;
    },
    [](int op, int bytes, int bf16, const void* g, const void* y, const void* lse, void* gx, int64_t rows, int64_t n,
       int threads, char* err, size_t err_len) {
      int r = -1;
      return c_call(err, err_len, [&] { r = tp::torch_backward(op, bytes, bf16 != 0, g, y, lse, gx, rows, n, threads); })
                 ? -1
                 : r;
    },
};

using F32In = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F32Out = nb::ndarray<float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

float read_pass(F32In x, int isa, int threads) {
  if (threads < 1) throw std::invalid_argument("threads must be >= 1");
  nb::gil_scoped_release release;
  return tp::read_pass(x.data(), (int64_t)x.shape(0), (tp::Isa)isa, threads);
}

void copy_pass(F32In x, F32Out y, int isa, int threads, bool stream) {
  if (threads < 1 || y.shape(0) != x.shape(0)) throw std::invalid_argument("bad copy_pass arguments");
  nb::gil_scoped_release release;
  tp::copy_pass(x.data(), y.data(), (int64_t)x.shape(0), (tp::Isa)isa, threads, stream);
}

// The fused cross-entropy: per-row ce, z and lse into float64 arrays; grad (may be x)
// is written when given. Arguments are checked by src/twopass/_cross_entropy.py.
using I64In = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F64Out = nb::ndarray<double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F64In = nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

void cross_entropy(int isa, int algo, nb::ndarray<nb::ro, nb::ndim<2>, nb::device::cpu> x, I64In target,
                   std::optional<nb::ndarray<nb::ro, nb::ndim<1>, nb::c_contig, nb::device::cpu>> weight,
                   double weight_total, int64_t ignore_index, double smoothing, double z_coef, double softcap,
                   double s_ce, double s_z, std::optional<nb::ndarray<nb::ndim<2>, nb::device::cpu>> grad, F64Out ce,
                   F64Out z, F64Out lse, int threads, bool stream, bool bf16, bool f16) {
  // bfloat16 and float16 logits and gradient come as uint16 views (NumPy has no bfloat16).
  const bool half = bf16 || f16;
  if (bf16 && f16) throw std::invalid_argument("twopass.cross_entropy: bf16 or f16, not both");
  if (half && !(x.dtype() == nb::dtype<uint16_t>() && (!grad || grad->dtype() == nb::dtype<uint16_t>())))
    throw nb::type_error("twopass.cross_entropy: bf16 / f16 take uint16 views of the logits and gradient");
  const int bytes = half ? 4 : dtype_bytes(x.dtype());
  const int64_t rows = (int64_t)x.shape(0), n = (int64_t)x.shape(1);
  auto bad = [](const char* what) { throw std::invalid_argument(std::string("twopass.cross_entropy: ") + what); };
  if (rows > 0 && n > 1 && x.stride(1) != 1) bad("classes must be contiguous");
  if ((int64_t)target.shape(0) != rows || (int64_t)ce.shape(0) != rows || (int64_t)z.shape(0) != rows ||
      (int64_t)lse.shape(0) != rows)
    bad("per-row arrays must have one entry per row");
  if (weight && (dtype_bytes(weight->dtype()) != bytes || (int64_t)weight->shape(0) != n)) bad("bad weight");
  if (grad && ((!half && dtype_bytes(grad->dtype()) != bytes) || (int64_t)grad->shape(0) != rows ||
               (int64_t)grad->shape(1) != n || (rows > 0 && n > 1 && grad->stride(1) != 1)))
    bad("bad grad");
  if (threads < 1 || !valid_algo(algo) || !valid_isa(isa)) bad("bad arguments");
  tp::CrossEntropyProblem pb{bytes, x.data(), rows, n, rows > 1 ? (int64_t)x.stride(0) : n, target.data(),
                   weight ? weight->data() : nullptr, weight_total, ignore_index, smoothing, z_coef, softcap,
                   s_ce, s_z, grad ? grad->data() : nullptr, grad && rows > 1 ? (int64_t)grad->stride(0) : n,
                   ce.data(), z.data(), lse.data(), (tp::Algo)algo, stream, bf16, f16};
  nb::gil_scoped_release release;
  tp::cross_entropy(pb, (tp::Isa)isa, threads);
}

// The local gradient of vocabulary-parallel rows (src/twopass/torch/distributed.py).
void cross_entropy_grad(int isa, nb::ndarray<nb::ro, nb::ndim<2>, nb::device::cpu> x, F64In lse, F64In a, F64In c,
                        F64In b, I64In target,
                        std::optional<nb::ndarray<nb::ro, nb::ndim<1>, nb::c_contig, nb::device::cpu>> weight,
                        nb::ndarray<nb::ndim<2>, nb::device::cpu> grad, int threads, bool stream,
                        bool torch_team) {
  const int bytes = dtype_bytes(x.dtype());
  const int64_t rows = (int64_t)x.shape(0), n = (int64_t)x.shape(1);
  auto bad = [](const char* what) { throw std::invalid_argument(std::string("twopass cross_entropy_grad: ") + what); };
  if (rows > 0 && n > 1 && (x.stride(1) != 1 || grad.stride(1) != 1)) bad("classes must be contiguous");
  for (size_t k : {lse.shape(0), a.shape(0), c.shape(0), b.shape(0), target.shape(0), grad.shape(0)})
    if ((int64_t)k != rows) bad("per-row arrays must have one entry per row");
  if (dtype_bytes(grad.dtype()) != bytes || (int64_t)grad.shape(1) != n) bad("bad grad");
  if (weight && (dtype_bytes(weight->dtype()) != bytes || (int64_t)weight->shape(0) != n)) bad("bad weight");
  if (threads < 1 || !valid_isa(isa)) bad("bad arguments");
  tp::CrossEntropyGradProblem pb{bytes, x.data(), rows, n, rows > 1 ? (int64_t)x.stride(0) : n, lse.data(), a.data(), c.data(),
                       b.data(), target.data(), weight ? weight->data() : nullptr, grad.data(),
                       rows > 1 ? (int64_t)grad.stride(0) : n, stream};
  tp::TeamScope team(torch_team && threads > 1 ? tp::torch_team() : nullptr);
  nb::gil_scoped_release release;
  tp::cross_entropy_grad(pb, (tp::Isa)isa, threads);
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "twopass C++ kernels (private: use the functions of the twopass package)";
  m.def("run", &run, nb::arg("op"), nb::arg("algo"), nb::arg("isa"), nb::arg("x"), nb::arg("y"), nb::arg("outer"),
        nb::arg("n"), nb::arg("inner"), nb::arg("xs_outer"), nb::arg("xs_n"), nb::arg("ys_outer"), nb::arg("ys_n"),
        nb::arg("threads"), nb::arg("stream"), nb::arg("dtype") = -1);
  // Positional only: no keyword matching on the per-call path.
  m.def("run_ptr", &run_ptr_py);
  m.def("backward_ptr", &backward_ptr_py);
  m.def("cross_entropy_ptr", &cross_entropy_ptr);
  tp::bind_torch_eager(m);  // eager_init, eager_rows
  tp::bind_numpy_rows(m);   // numpy_init, numpy_rows, numpy_lse
  // The address of the C table (c_api.h), for twopass.jax's FFI handlers.
  m.def("c_api", [] { return (uintptr_t)&kCApi; });
  m.def("read_pass", &read_pass, nb::arg("x"), nb::arg("isa"), nb::arg("threads"),
        "Memory-bandwidth probe: one read of a float32 array (returns its maximum).");
  m.def("copy_pass", &copy_pass, nb::arg("x"), nb::arg("y"), nb::arg("isa"), nb::arg("threads"), nb::arg("stream"),
        "Memory-bandwidth probe: y = x, with or without streaming stores.");
  m.def("cross_entropy", &cross_entropy, nb::arg("isa"), nb::arg("algo"), nb::arg("x"), nb::arg("target"),
        nb::arg("weight").none(), nb::arg("weight_total"), nb::arg("ignore_index"), nb::arg("smoothing"),
        nb::arg("z_coef"), nb::arg("softcap"), nb::arg("s_ce"), nb::arg("s_z"), nb::arg("grad").none(),
        nb::arg("ce"), nb::arg("z"), nb::arg("lse"), nb::arg("threads"), nb::arg("stream"), nb::arg("bf16") = false,
        nb::arg("f16") = false);
  m.def("cross_entropy_grad", &cross_entropy_grad, nb::arg("isa"), nb::arg("x"), nb::arg("lse"), nb::arg("a"),
        nb::arg("c"), nb::arg("b"), nb::arg("target"), nb::arg("weight").none(), nb::arg("grad"), nb::arg("threads"),
        nb::arg("stream"), nb::arg("torch_team") = false);
  m.def("set_prefetch_bytes", [](int bytes) {
    if (bytes < 0 || bytes > (1 << 20)) throw std::invalid_argument("twopass: prefetch distance out of [0, 1 MiB]");
    tp::prefetch_bytes = bytes;
  });
  m.def("prefetch_bytes", [] { return tp::prefetch_bytes; });
  m.def("set_spin_us", [](int us) {
    if (us < 0 || us > 1000000) throw std::invalid_argument("twopass: spin time out of [0, 1 s]");
    tp::spin_microseconds = us;
  });
  m.def("spin_us", [] { return tp::spin_microseconds.load(); });
  m.def("avx512_bf16_supported", &tp::avx512_bf16_supported);
  m.def("set_avx512_bf16", [](bool on) {
    if (on && !tp::avx512_bf16_supported()) throw std::invalid_argument("twopass: AVX512-BF16 not available");
    tp::use_avx512_bf16 = on;
  });
  m.def("avx512_bf16", [] { return tp::use_avx512_bf16; });
  m.def("isa_supported", [](int isa) { return tp::isa_supported((tp::Isa)isa); });
  m.def("isa_compiled", [](int isa) { return tp::isa_compiled((tp::Isa)isa); });
  m.def("untouched", &untouched, nb::arg("address"), nb::arg("nbytes"));
  // Panels of a non-last axis, for auto (_softmax.py): columns per panel, and the longest
  // axis a softmax panel keeps in its scratch panel.
  m.def("panel_lanes", [](int isa, int bytes) { return tp::panel_lanes((tp::Isa)isa, bytes); });
  m.def("panel_scratch_steps", &tp::panel_scratch_steps);

  // The codes of codes.h, as {name: code} dicts (ISAs worst to best).
  nb::dict codes;
#define TP_ADD_CODE(name, Enumerator, code) codes[#name] = code;
  codes = nb::dict();
  TP_ISA_LIST(TP_ADD_CODE)
  m.attr("ISA_CODES") = codes;
  codes = nb::dict();
  TP_OP_LIST(TP_ADD_CODE)
  m.attr("OP_CODES") = codes;
  codes = nb::dict();
  TP_ALGO_LIST(TP_ADD_CODE)
  m.attr("ALGO_CODES") = codes;
  codes = nb::dict();
  TP_DTYPE_LIST(TP_ADD_CODE)
  m.attr("DTYPE_CODES") = codes;
#undef TP_ADD_CODE
  // Elements per thread of a batch and per chunk of a row split along its axis (threads.h),
  // which the "auto" rule in _softmax.py must agree with.
  m.attr("MIN_PER_THREAD") = tp::kMinPerThread;
  m.attr("MIN_PER_CHUNK") = tp::kMinPerChunk;
  m.attr("RELOAD_SCRATCH_BYTES") = tp::kReloadScratchBytes;
  m.attr("RELOAD_WIDE_ROW_ELEMENTS") = tp::kWideRowElements;
}
