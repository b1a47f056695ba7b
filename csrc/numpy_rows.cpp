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
#include "small_calls.h"
#include "softmax.h"
#include "threads.h"

namespace nb = nanobind;

namespace tp {
namespace {

constexpr int kItemOf[] = {4, 8, 2, 2};  // by Dtype

struct Numpy {
  PyObject* ndarray = nullptr;  // numpy.ndarray; nullptr until numpy_init
  PyObject* dtypes[4] = {};     // by Dtype, compared by identity; bfloat16 from numpy_bfloat16
  PyObject* uint16 = nullptr;   // np.dtype("uint16"): bfloat16's view
  PyObject* empty_like = nullptr;
  PyObject* dispatch = nullptr;  // twopass._dispatch, whose default_threads() is looked up per call (the
                                 // benchmark swaps it)
  PyObject* s_default_threads = nullptr;
  PyObject* s_dtype = nullptr;
  PyObject* s_view = nullptr;
  int isa = 0;
  int64_t max_bytes = 0;        // _softmax._SMALL_SOFTMAX_BYTES
  int64_t short_row_bytes = 0;  // _softmax.SHORT_ROW_BYTES: log_softmax's reload below it
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

void numpy_init(nb::handle ndarray, nb::tuple dtypes, nb::handle uint16, nb::handle empty_like, nb::handle dispatch,
                int isa, int64_t max_bytes, int64_t short_row_bytes) {
  if (isa < 0 || isa >= kIsaCount) throw std::invalid_argument("twopass numpy_init: bad isa");
  if (dtypes.size() != 3) throw std::invalid_argument("twopass numpy_init: float32, float64, float16");
  for (nb::handle h : {ndarray, uint16, empty_like, dispatch}) Py_INCREF(h.ptr());  // the module's life
  for (int i = 0; i < 3; ++i) N.dtypes[i] = nb::handle(dtypes[i]).inc_ref().ptr();
  N.uint16 = uint16.ptr();
  N.empty_like = empty_like.ptr();
  N.dispatch = dispatch.ptr();
  N.s_default_threads = PyUnicode_InternFromString("default_threads");
  N.s_dtype = PyUnicode_InternFromString("dtype");
  N.s_view = PyUnicode_InternFromString("view");
  N.isa = isa;
  N.max_bytes = max_bytes;
  N.short_row_bytes = short_row_bytes;
  N.ndarray = ndarray.ptr();  // last: set means ready
}

// ml_dtypes' bfloat16, once the Python path has met it (importing ml_dtypes at import
// of twopass would cost every user).
void numpy_bfloat16(nb::handle dtype) {
  if (!N.dtypes[(int)Dtype::kBfloat16]) N.dtypes[(int)Dtype::kBfloat16] = dtype.inc_ref().ptr();
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

// softmax (log_softmax where `log`) of x over `axis`, or None: the arguments of the
// public function, taken where `algorithm` is "auto" or a name, `threads` None or an int
// >= 1, and `out` None or what _fast_out_ok accepts (x itself, or a writable
// C-contiguous array of x's shape and dtype object that does not overlap x), which is
// returned.
nb::object numpy_rows(nb::handle xh, nb::handle axis_h, nb::handle out, nb::handle algorithm, nb::handle threads,
                      bool log) {
  PyObject* x = xh.ptr();
  if (!N.ndarray || (PyObject*)Py_TYPE(x) != N.ndarray || !PyLong_CheckExact(axis_h.ptr()) ||
      !PyUnicode_CheckExact(algorithm.ptr()) || !(threads.is_none() || PyLong_CheckExact(threads.ptr())) ||
      (!out.is_none() && (PyObject*)Py_TYPE(out.ptr()) != N.ndarray))
    return nb::none();
  int nt = 0;  // 0: the default
  if (!threads.is_none()) {
    const long v = PyLong_AsLong(threads.ptr());
    if (v < 1 || v > INT32_MAX) {  // (an error or an overflow too: Python raises it)
      PyErr_Clear();
      return nb::none();
    }
    nt = (int)v;
  }
  const bool automatic = PyUnicode_CompareWithASCIIString(algorithm.ptr(), "auto") == 0;
  Algo algo = Algo::kTwoPass;
  if (!automatic && !algorithm_named(algorithm.ptr(), algo)) return nb::none();
  const int dt = dtype_of(x);
  if (dt < 0) return nb::none();
  const int item = kItemOf[dt];
  const bool bf16 = dt == (int)Dtype::kBfloat16;
  View xv;
  if (!xv.get(x, PyBUF_STRIDES, bf16)) return nb::none();
  const Py_buffer& b = xv.b;
  const long axis = PyLong_AsLong(axis_h.ptr());
  if (axis == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return nb::none();
  }
  if (b.ndim == 0 || (axis != -1 && axis != b.ndim - 1) || b.itemsize != item || b.len == 0 || b.len > N.max_bytes ||
      !c_contiguous(b))
    return nb::none();
  const int64_t n = b.shape[b.ndim - 1], size = b.len / item;
  if (automatic && !small_call_algorithm(log, item, n, N.short_row_bytes, algo)) return nb::none();
  View ov;
  if (!out.is_none()) {
    if (dtype_of(out.ptr()) != dt || !ov.get(out.ptr(), PyBUF_STRIDES | PyBUF_WRITABLE, bf16) ||
        ov.b.ndim != b.ndim || !c_contiguous(ov.b))
      return nb::none();
    for (int i = 0; i < b.ndim; ++i)
      if (ov.b.shape[i] != b.shape[i]) return nb::none();
    const char *xa = (const char*)b.buf, *oa = (const char*)ov.b.buf;
    if (out.ptr() != x && oa < xa + b.len && xa < oa + ov.b.len) return nb::none();  // (np.may_share_memory)
  }
  if (nt == 0) {
    nt = 1;
    if (size >= 2 * kMinPerThread) {  // (below it the kernels run on one thread whatever they are given)
      PyObject* t = PyObject_CallMethodNoArgs(N.dispatch, N.s_default_threads);
      if (!t) throw nb::python_error();
      nt = (int)PyLong_AsLong(t);
      Py_DECREF(t);
      if (nt < 1) throw std::runtime_error("twopass: default_threads() < 1");
    }
  }
  nb::object y = out.is_none() ? nb::steal(PyObject_CallOneArg(N.empty_like, x)) : nb::borrow(out);  // C-contiguous
  if (!y.is_valid()) throw nb::python_error();
  if (out.is_none() && !ov.get(y.ptr(), PyBUF_STRIDES | PyBUF_WRITABLE, bf16))
    throw std::runtime_error("twopass: np.empty_like gave no buffer");
  // Normal stores: a fresh y (_arrays.streaming_stores), or an `out` far below
  // _dispatch.stream_min_bytes.
  Problem pb{log ? Op::kLogSoftmax : Op::kSoftmax, algo, item, b.buf, ov.b.buf, size / n, n, 1, n, 1, n, 1,
             panel_lanes((Isa)N.isa, item)};
  pb.bf16 = bf16;
  if (size < kGilElements) {
    run(pb, (Isa)N.isa, nt, false);
  } else {
    nb::gil_scoped_release release;
    run(pb, (Isa)N.isa, nt, false);
  }
  return y;
}

}  // namespace

void bind_numpy_rows(nb::module_& m) {
  m.def("numpy_init", &numpy_init);
  m.def("numpy_bfloat16", &numpy_bfloat16);
  m.def("numpy_rows", &numpy_rows, nb::arg("x").none(), nb::arg("axis").none(), nb::arg("out").none(),
        nb::arg("algorithm").none(), nb::arg("threads").none(), nb::arg("log"));
}

}  // namespace tp
