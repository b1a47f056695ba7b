// twopass.softmax / log_softmax of a small NumPy array over its last axis in one C++
// call (src/twopass/_softmax.py, `_numpy_rows`): what compute()'s fast path (`_fast`)
// does for a C-contiguous float32, float64, float16 or bfloat16 array of at most
// _SMALL_SOFTMAX_BYTES, into a fresh output or a fitting `out=`, without its Python: a
// 1K-element float32 softmax took 2.7 us that way against torch.softmax's 1.65, most of
// it Python around a kernel of ~0.4 us; now 0.85 us, 0.55 with `out=` (4K: 3.6 -> 1.8
// and 1.5; Zen 4, 1 thread). The arrays are read through the buffer protocol (NumPy is
// not a build dependency; bfloat16 without a format, or through a uint16 view);
// the output is np.empty_like(x), as _alloc.empty gives below its huge-page threshold.
// Same kernel, algorithm, ISA and threads as `_fast`, so the same bits; anything else
// returns None and takes the Python path (and its errors).
#include <nanobind/nanobind.h>

#include <cstdint>

#include "codes.h"
#include "dispatch.h"
#include "half.h"
#include "small_calls.h"
#include "softmax.h"
#include "threads.h"

namespace nb = nanobind;

namespace tp {
namespace {

constexpr int kItemOf[] = {4, 8, 2, 2};  // by Dtype
constexpr int kMaxDims = 64;             // NumPy 2's limit

struct Numpy {
  PyObject* ndarray = nullptr;  // numpy.ndarray; nullptr until numpy_init
  PyObject* dtypes[4] = {};     // by Dtype, compared by identity; bfloat16 from numpy_bfloat16
  PyObject* uint16 = nullptr;   // np.dtype("uint16"): bfloat16's view
  PyObject* empty_like = nullptr;
  PyObject* empty = nullptr;              // np.empty, for logsumexp's reduced shape
  PyObject* scalar_types[4] = {};         // dtype.type by Dtype: logsumexp's scalar of one row
  PyObject* dispatch = nullptr;  // twopass._dispatch, whose default_threads() is looked up per call (the
                                 // benchmark swaps it)
  PyObject* s_default_threads = nullptr;
  PyObject* s_dtype = nullptr;
  PyObject* s_view = nullptr;
  int isa = 0;
  int64_t max_bytes = 0;        // _softmax._SMALL_SOFTMAX_BYTES
  SmallCallRule rule;  // what algorithm="auto" needs (small_calls.h)
} N;

// A buffer view of an array, released on scope exit. Without PyBUF_FORMAT NumPy 2 also
// exports bfloat16 (which has no buffer format); where it does not, its uint16 view
// (+0.45 us a call with the output's: 1K bfloat16 softmax 1.07 against 0.57 us for float16).
struct View {
  Py_buffer b{};
  bool held = false;
  PyObject* u16 = nullptr;  // the uint16 view, for bfloat16
  bool get(PyObject* o, int flags, bool bf16) {
    held = PyObject_GetBuffer(o, &b, flags) == 0;
    if (!held) PyErr_Clear();
    if (held || !bf16) return held;
    u16 = PyObject_CallMethodOneArg(o, N.s_view, N.uint16);
    if (!u16) throw nb::python_error();
    held = PyObject_GetBuffer(u16, &b, flags) == 0;
    if (!held) PyErr_Clear();
    return held;
  }
  ~View() {
    if (held) PyBuffer_Release(&b);
    Py_XDECREF(u16);
  }
};

// A dtype's scalar type (dtype.type), a new reference.
PyObject* scalar_type(nb::handle dtype) {
  PyObject* t = PyObject_GetAttrString(dtype.ptr(), "type");
  if (!t) throw nb::python_error();
  return t;
}

void numpy_init(nb::handle ndarray, nb::tuple dtypes, nb::handle uint16, nb::handle empty_like, nb::handle empty,
                nb::handle dispatch, int isa, int64_t max_bytes, int64_t short_row_bytes,
                int64_t half_reload_bytes) {
  if (isa < 0 || isa >= kIsaCount) throw std::invalid_argument("twopass numpy_init: bad isa");
  if (dtypes.size() != 3) throw std::invalid_argument("twopass numpy_init: float32, float64, float16");
  for (nb::handle h : {ndarray, uint16, empty_like, empty, dispatch}) Py_INCREF(h.ptr());  // the module's life
  for (int i = 0; i < 3; ++i) {
    N.dtypes[i] = nb::handle(dtypes[i]).inc_ref().ptr();
    N.scalar_types[i] = scalar_type(dtypes[i]);
  }
  N.uint16 = uint16.ptr();
  N.empty_like = empty_like.ptr();
  N.empty = empty.ptr();
  N.dispatch = dispatch.ptr();
  N.s_default_threads = PyUnicode_InternFromString("default_threads");
  N.s_dtype = PyUnicode_InternFromString("dtype");
  N.s_view = PyUnicode_InternFromString("view");
  N.isa = isa;
  N.max_bytes = max_bytes;
  N.rule = {short_row_bytes, half_reload_bytes};
  N.ndarray = ndarray.ptr();  // last: set means ready
}

// ml_dtypes' bfloat16, once the Python path has met it (importing ml_dtypes at import
// of twopass would cost every user).
void numpy_bfloat16(nb::handle dtype) {
  if (N.dtypes[(int)Dtype::kBfloat16]) return;
  N.scalar_types[(int)Dtype::kBfloat16] = scalar_type(dtype);
  N.dtypes[(int)Dtype::kBfloat16] = dtype.inc_ref().ptr();
}

// The C-contiguous test of NumPy's flags: strides of dims of size 1 do not count.
bool c_contiguous(const Py_buffer& b) {
  Py_ssize_t step = b.itemsize;
  for (Py_ssize_t i = b.ndim - 1; i >= 0; --i) {
    if (b.shape[i] != 1 && b.strides[i] != step) return false;
    step *= b.shape[i];
  }
  return true;
}

// a's dtype as a Dtype code, -1 for anything else.
int dtype_of(PyObject* a) {
  PyObject* dt = PyObject_GetAttr(a, N.s_dtype);
  if (!dt) throw nb::python_error();
  int code = -1;
  for (int i = 0; i < 4; ++i)
    if (dt == N.dtypes[i]) code = i;
  Py_DECREF(dt);
  return code;
}

// An algorithm's name as given to the public function ("auto" is not one).
bool algorithm_named(PyObject* name, Algo& algo) {
#define TP_MATCH(py_name, Enumerator, code)                      \
  if (PyUnicode_CompareWithASCIIString(name, #py_name) == 0) { \
    algo = Algo::Enumerator;                                     \
    return true;                                                 \
  }
  TP_ALGO_LIST(TP_MATCH)
#undef TP_MATCH
  return false;
}

// The parts of a call both functions below take: x (a C-contiguous array of a known
// dtype, non-empty, at most max_bytes) over its last axis, and `threads`.
struct Call {
  PyObject* x = nullptr;
  View xv;
  int dt = -1, item = 0;
  bool bf16 = false;
  int64_t n = 0, size = 0;
  int nt = 0;  // 0: the default, read by threads()

  bool read(PyObject* x_, nb::handle axis_h, nb::handle threads) {
    x = x_;
    if (!N.ndarray || (PyObject*)Py_TYPE(x) != N.ndarray || !PyLong_CheckExact(axis_h.ptr()) ||
        !(threads.is_none() || PyLong_CheckExact(threads.ptr())))
      return false;
    if (!threads.is_none()) {
      const long v = PyLong_AsLong(threads.ptr());
      if (v < 1 || v > INT32_MAX) {  // (an error or an overflow too: Python raises it)
        PyErr_Clear();
        return false;
      }
      nt = (int)v;
    }
    dt = dtype_of(x);
    if (dt < 0) return false;
    item = kItemOf[dt];
    bf16 = dt == (int)Dtype::kBfloat16;
    if (!xv.get(x, PyBUF_STRIDES, bf16)) return false;
    const Py_buffer& b = xv.b;
    const long axis = PyLong_AsLong(axis_h.ptr());
    if (axis == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    if (b.ndim == 0 || (axis != -1 && axis != b.ndim - 1) || b.itemsize != item || b.len == 0 ||
        b.len > N.max_bytes || !c_contiguous(b))
      return false;
    n = b.shape[b.ndim - 1], size = b.len / item;
    return true;
  }

  // `out`, if not None: an array of x's dtype object and `shape`, writable, C-contiguous,
  // not overlapping x unless it is x and `same_ok` (_fast_out_ok), viewed into ov.
  bool out_fits(nb::handle out, const Py_ssize_t* shape, int ndim, bool same_ok, View& ov) const {
    if (out.is_none()) return true;
    if ((PyObject*)Py_TYPE(out.ptr()) != N.ndarray || dtype_of(out.ptr()) != dt ||
        !ov.get(out.ptr(), PyBUF_STRIDES | PyBUF_WRITABLE, bf16) || ov.b.ndim != ndim || !c_contiguous(ov.b))
      return false;
    for (int i = 0; i < ndim; ++i)
      if (ov.b.shape[i] != shape[i]) return false;
    const char *xa = (const char*)xv.b.buf, *oa = (const char*)ov.b.buf;
    if (out.ptr() == x && same_ok) return true;
    return !(oa < xa + xv.b.len && xa < oa + ov.b.len);  // (np.may_share_memory)
  }

  int threads() const {
    if (nt) return nt;
    if (size < 2 * kMinPerThread) return 1;  // (below it the kernels run on one thread whatever they are given)
    PyObject* t = PyObject_CallMethodNoArgs(N.dispatch, N.s_default_threads);
    if (!t) throw nb::python_error();
    const long v = PyLong_AsLong(t);
    Py_DECREF(t);
    if (v < 1) throw std::runtime_error("twopass: default_threads() < 1");
    return (int)v;
  }

  // Normal stores: a fresh y (_arrays.streaming_stores), or an `out` far below
  // _dispatch.stream_min_bytes.
  void run_kernel(Problem pb) const {
    pb.bf16 = bf16;
    const int t = threads();
    with_gil_if_short(size, [&] { run(pb, (Isa)N.isa, t, false); });
  }
};

// softmax (log_softmax where `log`) of x over `axis`, or None: the arguments of the
// public function, taken where `algorithm` is "auto" or a name, `threads` None or an int
// >= 1, and `out` None or what _fast_out_ok accepts (x itself, or a writable
// C-contiguous array of x's shape and dtype object that does not overlap x), which is
// returned.
nb::object numpy_rows(nb::handle xh, nb::handle axis_h, nb::handle out, nb::handle algorithm, nb::handle threads,
                      bool log) {
  PyObject* x = xh.ptr();
  if (!PyUnicode_CheckExact(algorithm.ptr())) return nb::none();
  const bool automatic = PyUnicode_CompareWithASCIIString(algorithm.ptr(), "auto") == 0;
  Algo algo = Algo::kTwoPass;
  if (!automatic && !algorithm_named(algorithm.ptr(), algo)) return nb::none();
  Call c;
  if (!c.read(x, axis_h, threads)) return nb::none();
  if (automatic && !small_call_algorithm(log, c.item, c.n, c.size, N.rule, algo)) return nb::none();
  View ov;
  if (!c.out_fits(out, c.xv.b.shape, c.xv.b.ndim, true, ov)) return nb::none();
  nb::object y = out.is_none() ? nb::steal(PyObject_CallOneArg(N.empty_like, x)) : nb::borrow(out);  // C-contiguous
  if (!y.is_valid()) throw nb::python_error();
  if (out.is_none() && !ov.get(y.ptr(), PyBUF_STRIDES | PyBUF_WRITABLE, c.bf16))
    throw std::runtime_error("twopass: np.empty_like gave no buffer");
  const int64_t n = c.n;
  c.run_kernel(Problem{log ? Op::kLogSoftmax : Op::kSoftmax, algo, c.item, c.xv.b.buf, ov.b.buf, c.size / n, n, 1,
                       n, 1, n, 1, panel_lanes((Isa)N.isa, c.item)});
  return y;
}

// logsumexp of x over `axis` (the public function's arguments; keepdims a bool), or
// None as above; `out` of the reduced shape, never x. The general path's kernels
// (softmax.cpp, run), as _fast. A 1-D x without `out` gives a NumPy scalar, as NumPy's
// reductions do.
nb::object numpy_lse(nb::handle xh, nb::handle axis_h, nb::handle keepdims, nb::handle out, nb::handle threads) {
  PyObject* x = xh.ptr();
  if (keepdims.ptr() != Py_True && keepdims.ptr() != Py_False) return nb::none();
  Call c;
  if (!c.read(x, axis_h, threads)) return nb::none();
  const bool keep = keepdims.ptr() == Py_True;
  const int nd = c.xv.b.ndim - 1 + keep;
  Py_ssize_t shape[kMaxDims];
  if (nd > kMaxDims) return nb::none();
  for (int i = 0; i < c.xv.b.ndim - 1; ++i) shape[i] = c.xv.b.shape[i];
  if (keep) shape[nd - 1] = 1;
  View ov;
  if (!c.out_fits(out, shape, nd, false, ov)) return nb::none();
  const int64_t n = c.n, rows = c.size / n;
  Problem pb{Op::kLogSumExp, Algo::kTwoPass, c.item, c.xv.b.buf, nullptr, rows, n, 1, n, 1, 1, 0,
             panel_lanes((Isa)N.isa, c.item)};
  if (out.is_none() && nd == 0) {  // one row: a scalar
    alignas(8) unsigned char r[8];
    pb.y = r;
    c.run_kernel(pb);
    double v = 0;
    switch ((Dtype)c.dt) {
      case Dtype::kFloat32: v = *(const float*)r; break;
      case Dtype::kFloat64: v = *(const double*)r; break;
      case Dtype::kFloat16: v = f16_to_float(*(const uint16_t*)r); break;
      case Dtype::kBfloat16: v = bf16_to_float(*(const uint16_t*)r); break;
    }
    PyObject* f = PyFloat_FromDouble(v);  // exact: v is a value of x's dtype
    if (!f) throw nb::python_error();
    PyObject* scalar = PyObject_CallOneArg(N.scalar_types[c.dt], f);
    Py_DECREF(f);
    if (!scalar) throw nb::python_error();
    return nb::steal(scalar);
  }
  nb::object y = nb::borrow(out);
  if (out.is_none()) {
    PyObject* dims = PyTuple_New(nd);
    if (!dims) throw nb::python_error();
    for (int i = 0; i < nd; ++i) PyTuple_SET_ITEM(dims, i, PyLong_FromSsize_t(shape[i]));
    PyObject* args[] = {dims, N.dtypes[c.dt]};  // (x's dtype object: dtype_of compared it)
    y = nb::steal(PyObject_Vectorcall(N.empty, args, 2, nullptr));  // C-contiguous
    Py_DECREF(dims);
    if (!y.is_valid()) throw nb::python_error();
    if (!ov.get(y.ptr(), PyBUF_STRIDES | PyBUF_WRITABLE, c.bf16)) throw std::runtime_error("twopass: np.empty gave no buffer");
  }
  pb.y = ov.b.buf;
  c.run_kernel(pb);
  return y;
}

}  // namespace

void bind_numpy_rows(nb::module_& m) {
  m.def("numpy_init", &numpy_init);
  m.def("numpy_bfloat16", &numpy_bfloat16);
  m.def("numpy_lse", &numpy_lse, nb::arg("x").none(), nb::arg("axis").none(), nb::arg("keepdims").none(),
        nb::arg("out").none(), nb::arg("threads").none());
  m.def("numpy_rows", &numpy_rows, nb::arg("x").none(), nb::arg("axis").none(), nb::arg("out").none(),
        nb::arg("algorithm").none(), nb::arg("threads").none(), nb::arg("log"));
}

}  // namespace tp
