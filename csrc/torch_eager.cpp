// twopass.torch's eager softmax / log_softmax of a small CPU tensor over its last dim,
// in one C++ call (src/twopass/torch/_eager.py, eager_rows). It does what eager_ok and
// softmax_forward do there: on a slow core those Python checks and reads cost ~6 us a
// call, more than torch's whole softmax of 1x1024 floats. Torch is not linked: Python
// hands over, once, the objects compared against (torch.Tensor, the dtypes, ...) and the
// functions called (torch.empty_like, the checks for transforms and modes). A tensor's
// dtype, device, sizes, contiguity and data pointer are read, and outputs allocated,
// through torch's C shim where the process has it (Shim below), else through the Python
// API. Anything else returns None and takes the Python path, which gives the same bits
// (same kernel, same algorithm).
#include <dlfcn.h>
#include <unistd.h>
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>

#include "codes.h"
#include "cross_entropy.h"
#include "dispatch.h"
#include "kernel_api.h"
#include "softmax.h"
#include "small_calls.h"
#include "softmax_backward.h"
#include "threads.h"

namespace nb = nanobind;

namespace tp {
TeamRun torch_team();  // below
namespace {

constexpr int kDtypes = 4;  // float32, float64, float16, bfloat16 (codes.h order)
constexpr int kItem[kDtypes] = {4, 8, 2, 2};

struct Torch {
  PyObject* tensor = nullptr;  // torch.Tensor; nullptr until eager_init
  PyObject* parameter = nullptr;
  PyObject* dtypes[kDtypes] = {};
  PyObject* int64 = nullptr;  // cross_entropy's targets
  PyObject* strided = nullptr;
  PyObject* empty_like = nullptr;
  PyObject* checks[3] = {};  // functorch transforms, dispatch modes, function modes: all must be falsy
  PyObject* grad_enabled = nullptr;
  PyObject* num_threads = nullptr;
  PyObject *s_is_contiguous, *s_data_ptr, *s_new_empty, *s_is_neg;
  PyObject* scalars[kDtypes] = {};  // a 0-d tensor of each dtype: empty_like's model for a loss
  int isa = 0;
  int64_t max_bytes = 0;           // larger forwards take the Python path (its algorithm rule)
  int64_t backward_max_bytes = 0;  // larger backwards take it too (their outputs on huge pages)
  SmallCallRule rule;  // what algorithm="auto" needs (small_calls.h)
  TeamRun team = nullptr;       // torch's OpenMP team (threads.h), or null: the pool
  const char* team_library = nullptr;
  pid_t team_pid = 0;  // the process that found it
} T;

// torch's C shim: the C functions AOTInductor's compiled models call
// (torch/csrc/inductor/aoti_torch/c/shim.h, exported by libtorch_cpu) and
// THPVariable_Wrap (libtorch_python), found by dlsym in the process that imported torch.
// A tensor's attributes cost ~5 ns each through them against 40-90 ns through the
// Python API, and an output ~0.3 us against torch.empty_like's 0.85 (Zen 4, 1 thread:
// this call on a 1x16 float32 softmax 1.72 -> 0.98 us; twopass.torch.softmax of 1x1024
// 2.37 -> 1.55 us, torch.softmax's 1.65-1.9). Taken only when eager_init's self-test
// shows that a torch.Tensor object holds its at::Tensor right after the PyObject header
// (as torch 2.13 does; a release laid out otherwise fails it and keeps the Python
// API), so a handle is an address, not a call.
struct Shim {
  using Err = int32_t;  // 0: success (AOTITorchError)
  using Handle = void*;  // an at::Tensor*
  Err (*get_dtype)(Handle, int32_t*) = nullptr;
  Err (*get_device_type)(Handle, int32_t*) = nullptr;
  Err (*get_dim)(Handle, int64_t*) = nullptr;
  Err (*get_sizes)(Handle, int64_t**) = nullptr;
  Err (*get_strides)(Handle, int64_t**) = nullptr;
  Err (*is_contiguous)(Handle, bool*) = nullptr;
  Err (*get_data_ptr)(Handle, void**) = nullptr;
  Err (*empty_strided)(int64_t, const int64_t*, const int64_t*, int32_t, int32_t, int32_t, Handle*) = nullptr;
  Err (*delete_tensor)(Handle) = nullptr;
  bool (*grad_enabled)() = nullptr;
  PyObject* (*wrap)(const void*) = nullptr;  // THPVariable_Wrap(const at::TensorBase&)
  int32_t dtypes[kDtypes + 1] = {};          // torch's codes of float32 ... bfloat16, int64
  int32_t cpu = 0;
  bool found = false;  // every function above resolved and the self-test passed
  bool on = false;     // found and not switched off (TWOPASS_TORCH_SHIM=0, _core.eager_shim)

  static Handle handle(PyObject* t) { return (char*)t + sizeof(PyObject); }
} S;

// torch's OpenMP runtime, already in the process when torch's parallel backend is
// OpenMP: its GOMP_parallel (GNU's libgomp, as in torch's x86 wheels; Intel's and LLVM's
// runtimes export it too). RTLD_NOLOAD: found by soname, never loaded here.
void find_openmp() {
  for (const char* name : {"libgomp.so.1", "libiomp5.so", "libomp.so"}) {
    void* lib = dlopen(name, RTLD_NOW | RTLD_NOLOAD);
    if (!lib) continue;
    if (void* f = dlsym(lib, "GOMP_parallel")) {
      T.team = reinterpret_cast<TeamRun>(f);
      T.team_library = name;
      T.team_pid = getpid();
      return;  // (the handle stays open: the runtime lives as long as torch)
    }
    dlclose(lib);
  }
}

// A tensor property (dtype, shape, ...) read by calling its getter directly: the same
// function PyObject_GetAttr ends in, without the lookup through the type's dict (~40 ns
// each on the Zen 1 VM, five a call). Falls back to PyObject_GetAttr where torch.Tensor
// and torch.nn.Parameter do not resolve the name to one C getter.
struct Property {
  PyObject* name = nullptr;
  getter get = nullptr;
  void* closure = nullptr;

  void init(const char* s, PyObject* tensor, PyObject* parameter) {
    name = PyUnicode_InternFromString(s);
    PyObject* a = PyObject_GetAttr(tensor, name);
    PyObject* b = PyObject_GetAttr(parameter, name);
    if (a && a == b && Py_IS_TYPE(a, &PyGetSetDescr_Type)) {
      const PyGetSetDef* def = ((PyGetSetDescrObject*)a)->d_getset;
      get = def->get, closure = def->closure;
    }
    PyErr_Clear();
    Py_XDECREF(a);
    Py_XDECREF(b);
  }
  // A new reference, or nullptr with a Python error set.
  PyObject* of(PyObject* t) const { return get ? get(t, closure) : PyObject_GetAttr(t, name); }
};

struct Properties {
  Property dtype, is_cpu, layout, requires_grad, shape, is_nested;
} P;

// A new reference, released on scope exit.
struct Ref {
  PyObject* p;
  explicit Ref(PyObject* o) : p(o) {
    if (!p) throw nb::python_error();
  }
  ~Ref() { Py_XDECREF(p); }
  Ref(const Ref&) = delete;
  Ref& operator=(const Ref&) = delete;
  PyObject* release() {
    PyObject* o = p;
    p = nullptr;
    return o;
  }
};

bool truthy(PyObject* o) {
  const int v = PyObject_IsTrue(o);
  if (v < 0) throw nb::python_error();
  return v;
}

int64_t address(PyObject* t) {
  if (S.on) {
    void* a = nullptr;
    if (S.get_data_ptr(Shim::handle(t), &a) != 0) throw std::runtime_error("twopass: torch's data_ptr failed");
    return (int64_t)(uintptr_t)a;
  }
  Ref p(PyObject_CallMethodNoArgs(t, T.s_data_ptr));
  const long long a = PyLong_AsLongLong(p.p);
  if (a == -1 && PyErr_Occurred()) throw nb::python_error();
  return a;
}

PyObject* keep(nb::handle h) {
  Py_INCREF(h.ptr());  // for the module's life
  return h.ptr();
}

// Returns the OpenMP runtime whose team the calls run on (`openmp`: torch's parallel
// backend is OpenMP), or None.
bool plain(PyObject* t) {
  const PyObject* type = (PyObject*)Py_TYPE(t);
  return T.tensor && (type == T.tensor || type == T.parameter);
}

// The attributes of a tensor the kernels can take as rows of its last dim.
constexpr int kMaxDims = 16;  // more: the Python path
constexpr int kInt64 = kDtypes;  // Rows::dt of cross_entropy's targets
struct Rows {
  int dt = 0;  // codes.h's Dtype, or kInt64
  int nd = 0;
  int64_t n = 0, size = 1;
  int64_t shape[kMaxDims] = {};

  bool same_shape(const Rows& o) const {
    if (nd != o.nd) return false;
    for (int i = 0; i < nd; ++i)
      if (shape[i] != o.shape[i]) return false;
    return true;
  }
};

// Fills r from t's shape (sizes[nd]); false beyond kMaxDims, max_bytes, or when `dim`
// is not the last dim (Python raises for a bad dim).
bool take_shape(Rows& r, const int64_t* sizes, int64_t nd, long dim, int64_t max_bytes) {
  if (nd == 0 || nd > kMaxDims || (dim != -1 && dim != nd - 1)) return false;
  const int64_t item = r.dt == kInt64 ? 8 : kItem[r.dt];
  r.nd = (int)nd;
  for (int64_t i = 0; i < nd; ++i) {
    r.shape[i] = r.n = sizes[i];
    r.size *= sizes[i];
    if (r.size * item > max_bytes) return false;
  }
  return true;
}

// t (a plain tensor) is a contiguous CPU tensor of a kernel dtype (int64 where `targets`)
// and at most max_bytes, not a negative view, and `dim` its last dim.
bool rows_of(PyObject* t, long dim, Rows& r, int64_t max_bytes, bool targets = false) {
  {
    Ref layout(P.layout.of(t));
    if (layout.p != T.strided) return false;
  }
  if (S.on) {
    // (a nested tensor is strided but has no sizes: the shim would log torch's error)
    Ref nested(P.is_nested.of(t));
    if (nested.p != Py_False) return false;
    const Shim::Handle h = Shim::handle(t);
    int32_t dtype = 0, device = 0;
    int64_t nd = 0, *sizes = nullptr;
    bool contiguous = false;
    if (S.get_dtype(h, &dtype) || S.get_device_type(h, &device) || device != S.cpu) return false;
    if (targets) {
      if (dtype != S.dtypes[kInt64]) return false;
      r.dt = kInt64;
    } else {
      while (r.dt < kDtypes && dtype != S.dtypes[r.dt]) ++r.dt;
      if (r.dt == kDtypes) return false;
    }
    if (S.get_dim(h, &nd) || S.get_sizes(h, &sizes) || !take_shape(r, sizes, nd, dim, max_bytes)) return false;
    if (S.is_contiguous(h, &contiguous) || !contiguous) return false;
  } else {
    {
      Ref dtype(P.dtype.of(t));
      if (targets) {
        if (dtype.p != T.int64) return false;
        r.dt = kInt64;
      } else {
        while (r.dt < kDtypes && dtype.p != T.dtypes[r.dt]) ++r.dt;
        if (r.dt == kDtypes) return false;
      }
      Ref cpu(P.is_cpu.of(t));
      if (cpu.p != Py_True) return false;
    }
    // (a nested tensor is strided but has no shape: None, and the Python path's TypeError)
    PyObject* s = P.shape.of(t);
    if (!s) {
      PyErr_Clear();
      return false;
    }
    Ref shape(s);
    if (!PyTuple_Check(shape.p)) return false;
    const Py_ssize_t nd = PyTuple_GET_SIZE(shape.p);
    if (nd > kMaxDims) return false;
    int64_t sizes[kMaxDims];
    for (Py_ssize_t i = 0; i < nd; ++i) {
      sizes[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(shape.p, i));
      if (sizes[i] < 0) {
        PyErr_Clear();
        return false;
      }
    }
    if (!take_shape(r, sizes, nd, dim, max_bytes)) return false;
    Ref contiguous(PyObject_CallMethodNoArgs(t, T.s_is_contiguous));
    if (contiguous.p != Py_True) return false;
  }
  // A negative view (torch._neg_view, or a complex tensor's conj().imag of one element)
  // holds -t in memory: torch resolves it, the kernels would not.
  Ref neg(PyObject_CallMethodNoArgs(t, T.s_is_neg));
  return neg.p == Py_False;
}

// A new CPU tensor of dtype dt with like's shape and strides (a new reference): what
// torch.empty_like(like) gives for a contiguous `like` of that dtype (the fallback).
PyObject* new_like(PyObject* like, int dt) {
  if (!S.on) return PyObject_CallOneArg(T.empty_like, like);
  const Shim::Handle l = Shim::handle(like);
  int64_t nd = 0, *sizes = nullptr, *strides = nullptr;
  Shim::Handle h = nullptr;
  if (S.get_dim(l, &nd) || S.get_sizes(l, &sizes) || S.get_strides(l, &strides) ||
      S.empty_strided(nd, sizes, strides, S.dtypes[dt], S.cpu, 0, &h))
    throw std::runtime_error("twopass: torch's empty_strided failed");
  PyObject* o = S.wrap(h);
  S.delete_tensor(h);  // (o holds its own reference)
  return o;
}

// A new contiguous CPU tensor of dtype dt and shape sizes[nd] (a new reference), as
// like.new_empty(sizes) gives for a CPU `like` of that dtype (the fallback).
PyObject* new_shaped(PyObject* like, int dt, const int64_t* sizes, int nd) {
  if (!S.on) {
    Ref dims(PyTuple_New(nd));
    if (!dims.p) throw nb::python_error();
    for (int i = 0; i < nd; ++i) PyTuple_SET_ITEM(dims.p, i, PyLong_FromLongLong(sizes[i]));
    return PyObject_CallMethodOneArg(like, T.s_new_empty, dims.p);
  }
  int64_t strides[kMaxDims];
  for (int64_t i = nd - 1, step = 1; i >= 0; --i) {
    strides[i] = step;
    step *= sizes[i];
  }
  Shim::Handle h = nullptr;
  if (S.empty_strided(nd, sizes, strides, S.dtypes[dt], S.cpu, 0, &h))
    throw std::runtime_error("twopass: torch's empty_strided failed");
  PyObject* o = S.wrap(h);
  S.delete_tensor(h);  // (o holds its own reference)
  return o;
}

template <class F>
bool resolve(F& f, void* lib, const char* name) {
  f = reinterpret_cast<F>(dlsym(lib ? lib : RTLD_DEFAULT, name));
  return f != nullptr;
}

// Finds the shim's functions in the process (torch already imported them: RTLD_NOLOAD).
bool find_shim() {
  void* cpu = dlopen("libtorch_cpu.so", RTLD_NOW | RTLD_NOLOAD);
  void* py = dlopen("libtorch_python.so", RTLD_NOW | RTLD_NOLOAD);
  int32_t (*code[kDtypes + 1])() = {}, (*cpu_type)() = nullptr;
  bool ok = resolve(S.get_dtype, cpu, "aoti_torch_get_dtype") &&
            resolve(S.get_device_type, cpu, "aoti_torch_get_device_type") &&
            resolve(S.get_dim, cpu, "aoti_torch_get_dim") && resolve(S.get_sizes, cpu, "aoti_torch_get_sizes") &&
            resolve(S.get_strides, cpu, "aoti_torch_get_strides") &&
            resolve(S.is_contiguous, cpu, "aoti_torch_is_contiguous") &&
            resolve(S.get_data_ptr, cpu, "aoti_torch_get_data_ptr") &&
            resolve(S.empty_strided, cpu, "aoti_torch_empty_strided") &&
            resolve(S.delete_tensor, cpu, "aoti_torch_delete_tensor_object") &&
            resolve(S.grad_enabled, cpu, "aoti_torch_grad_mode_is_enabled") &&
            resolve(code[0], cpu, "aoti_torch_dtype_float32") && resolve(code[1], cpu, "aoti_torch_dtype_float64") &&
            resolve(code[2], cpu, "aoti_torch_dtype_float16") && resolve(code[3], cpu, "aoti_torch_dtype_bfloat16") &&
            resolve(code[kInt64], cpu, "aoti_torch_dtype_int64") &&
            resolve(cpu_type, cpu, "aoti_torch_device_type_cpu") &&
            resolve(S.wrap, py, "_Z16THPVariable_WrapRKN2at10TensorBaseE");  // (const at::TensorBase&)
  if (ok) {
    for (int i = 0; i <= kDtypes; ++i) S.dtypes[i] = code[i]();
    S.cpu = cpu_type();
  }
  if (cpu) dlclose(cpu);  // (torch keeps them loaded)
  if (py) dlclose(py);
  return ok;
}

// The shim reads a tensor object as torch 2.13 lays it out: the at::Tensor (a pointer
// to its TensorImpl, which tensor._cdata gives) right after the PyObject header. Checked
// on `samples` (tensors of each dtype, of several shapes, a Parameter) without
// dereferencing anything until that holds; then every attribute against the Python
// API's, and an output's. Any mismatch: the Python API, for good.
bool shim_selftest(nb::tuple samples) {
  for (nb::handle sh : samples) {
    PyObject* t = sh.ptr();
    if (!plain(t)) return false;
    PyObject* c = PyObject_GetAttrString(t, "_cdata");
    if (!c) return PyErr_Clear(), false;
    const unsigned long long impl = PyLong_AsUnsignedLongLong(c);
    Py_DECREF(c);
    if (PyErr_Occurred()) return PyErr_Clear(), false;
    void* held = nullptr;
    std::memcpy(&held, Shim::handle(t), sizeof held);
    if ((uintptr_t)held != impl) return false;
  }
  // the layout holds: compare what the shim reads with the Python API's answers
  const bool saved = S.on;
  bool ok = true;
  for (nb::handle sh : samples) {
    PyObject* t = sh.ptr();
    Rows a, b;
    S.on = true;
    const bool read_a = rows_of(t, -1, a, INT64_MAX) || rows_of(t, -1, a = Rows{}, INT64_MAX, true);
    const int64_t ptr_a = read_a ? address(t) : 0;
    S.on = false;
    const bool read_b = rows_of(t, -1, b, INT64_MAX) || rows_of(t, -1, b = Rows{}, INT64_MAX, true);
    if (PyErr_Occurred()) PyErr_Clear(), ok = false;
    if (!ok || read_a != read_b || !read_a || a.dt != b.dt || !a.same_shape(b) || ptr_a != address(t)) {
      ok = false;
      break;
    }
    S.on = true;
    PyObject* o = new_like(t, a.dt);  // the output path: an ordinary tensor as empty_like's
    Rows c;
    const int64_t ptr_c = address(o);
    S.on = false;
    ok = Py_IS_TYPE(o, (PyTypeObject*)T.tensor) && rows_of(o, -1, c, INT64_MAX, a.dt == kInt64) && c.dt == a.dt &&
         c.same_shape(a) && ptr_c == address(o);
    Py_DECREF(o);
    if (PyErr_Occurred()) PyErr_Clear(), ok = false;
    if (!ok) break;
  }
  S.on = saved;
  return ok;
}

nb::object eager_init(nb::handle tensor, nb::handle parameter, nb::tuple dtypes, nb::tuple scalars, nb::handle int64,
                nb::handle strided, nb::handle empty_like,
                nb::tuple checks, nb::handle grad_enabled, nb::handle num_threads, int isa, int64_t max_bytes,
                int64_t backward_max_bytes, int64_t short_row_bytes, int64_t half_reload_bytes, bool openmp, nb::tuple samples, bool shim) {
  if (dtypes.size() != kDtypes || scalars.size() != kDtypes || checks.size() != 3 || isa < 0 || isa >= kIsaCount)
    throw std::invalid_argument("twopass eager_init: bad arguments");
  T.parameter = keep(parameter);
  for (int i = 0; i < kDtypes; ++i) T.dtypes[i] = keep(dtypes[i]), T.scalars[i] = keep(scalars[i]);
  T.int64 = keep(int64);
  T.strided = keep(strided);
  T.empty_like = keep(empty_like);
  for (int i = 0; i < 3; ++i) T.checks[i] = keep(checks[i]);
  T.grad_enabled = keep(grad_enabled);
  T.num_threads = keep(num_threads);
  P.dtype.init("dtype", tensor.ptr(), parameter.ptr());
  P.is_cpu.init("is_cpu", tensor.ptr(), parameter.ptr());
  P.layout.init("layout", tensor.ptr(), parameter.ptr());
  P.requires_grad.init("requires_grad", tensor.ptr(), parameter.ptr());
  P.shape.init("shape", tensor.ptr(), parameter.ptr());
  P.is_nested.init("is_nested", tensor.ptr(), parameter.ptr());
  T.s_is_contiguous = PyUnicode_InternFromString("is_contiguous");
  T.s_is_neg = PyUnicode_InternFromString("is_neg");
  T.s_data_ptr = PyUnicode_InternFromString("data_ptr");
  T.s_new_empty = PyUnicode_InternFromString("new_empty");
  T.isa = isa;
  T.max_bytes = max_bytes;
  T.backward_max_bytes = backward_max_bytes;
  T.rule = {short_row_bytes, half_reload_bytes};
  T.team = nullptr, T.team_library = nullptr;
  if (openmp) find_openmp();
  T.tensor = keep(tensor);  // set means ready
  S.on = false;
  S.found = shim && find_shim() && shim_selftest(samples);
  S.on = S.found;
  if (T.team_library) return nb::str(T.team_library);
  return nb::none();
}

bool small_dim(PyObject* d, long& dim) {
  if (!PyLong_CheckExact(d)) return false;
  dim = PyLong_AsLong(d);
  if (dim == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  return true;
}

// torch.get_num_threads(), asked only where the kernels could split `elements` over
// more than one (threads.h: below 2 * kMinPerThread they run on one; ~0.2 us a call).
bool splits(int64_t elements) { return elements >= 2 * kMinPerThread; }
int threads(int64_t elements) {
  if (!splits(elements)) return 1;
  Ref t(PyObject_CallNoArgs(T.num_threads));
  const long v = PyLong_AsLong(t.p);
  if (v < 1) throw std::runtime_error("twopass: torch.get_num_threads() < 1");
  return (int)v;
}

// Something traces or intercepts calls: functorch transforms, dispatch or function modes.
bool intercepted() {
  for (PyObject* check : T.checks) {
    Ref r(PyObject_CallNoArgs(check));
    if (truthy(r.p)) return true;
  }
  return false;
}

bool needs_grad(PyObject* t) {
  Ref grad(P.requires_grad.of(t));
  if (grad.p != Py_True) return false;
  if (S.on) return S.grad_enabled();
  Ref on(PyObject_CallNoArgs(T.grad_enabled));
  return truthy(on.p);
}

// The kernel calls of the one-call paths here and of the autograd node's torch_rows and
// torch_backward (below): contiguous rows of n on nt threads of torch's team, normal
// stores (outputs are fresh: _eager._FRESH_STORES). logsumexp: y (or lse) one value per row.
void forward_rows(Op op, Algo algo, int item, bool bf16, const void* x, void* y, int64_t rows, int64_t n, int nt) {
  const bool per_row = op == Op::kLogSumExp;
  Problem pb{op, algo, item, x, y, rows, n, 1, n, 1, per_row ? 1 : n, per_row ? 0 : 1, panel_lanes((Isa)T.isa, item)};
  pb.bf16 = item == 2 && bf16;
  TeamScope team(nt > 1 ? torch_team() : nullptr);
  run(pb, (Isa)T.isa, nt, false);
}
void backward_rows(Op op, int item, bool bf16, const void* g, const void* y, const void* lse, void* gx, int64_t rows,
                   int64_t n, int nt) {
  const bool per_row = op == Op::kLogSumExp;
  const BackwardProblem pb{op, item, g, y, per_row ? lse : nullptr, gx, rows, n, per_row ? 0 : n, n, n,
                           item == 2 && bf16};
  TeamScope team(nt > 1 ? torch_team() : nullptr);
  run_backward(pb, (Isa)T.isa, nt, false);
}

// forward_rows over r's rows (x's) on torch's thread count.
void run_rows(Op op, Algo algo, PyObject* x, PyObject* y, const Rows& r) {
  const int nt = threads(r.size);
  const void* xa = (const void*)address(x);  // (with the GIL: address may ask Python)
  void* ya = (void*)address(y);
  with_gil_if_short(r.size, [&] {
    forward_rows(op, algo, kItem[r.dt], r.dt == (int)Dtype::kBfloat16, xa, ya, r.size / r.n, r.n, nt);
  });
}

// softmax / log_softmax of x over `dim` (eager_ok's and softmax_forward's work); False
// where x needs a gradient and everything else holds; None where the path is not taken.
nb::object eager_rows(nb::handle xh, nb::handle dim_h, bool log) {
  PyObject* x = xh.ptr();
  long dim = 0;
  if (!plain(x) || !small_dim(dim_h.ptr(), dim)) return nb::none();
  if (intercepted()) return nb::none();
  Rows r;
  if (!rows_of(x, dim, r, T.max_bytes)) return nb::none();
  const int item = kItem[r.dt];
  Algo algo;  // _eager._algorithm's choice, as far as it goes for tensors of at most max_bytes
  if (!small_call_algorithm(log, item, r.n, r.size, T.rule, algo)) return nb::none();
  // Everything holds but x needs a gradient: the autograd node's path (_eager.softmax_apply),
  // without eager_ok's checks in Python.
  if (needs_grad(x)) return nb::bool_(false);
  Ref y(new_like(x, r.dt));  // contiguous, as x
  if (r.size) run_rows(log ? Op::kLogSoftmax : Op::kSoftmax, algo, x, y.p, r);
  return nb::steal(y.release());
}

// logsumexp of x over `dim` (logsumexp_forward's work: two_pass's first pass), of x's
// shape without `dim` (length 1 where keepdim); False where x needs a gradient and
// everything else holds; None where the path is not taken (empty rows included).
nb::object eager_lse(nb::handle xh, nb::handle dim_h, nb::handle keepdim_h) {
  PyObject* x = xh.ptr();
  long dim = 0;
  if (keepdim_h.ptr() != Py_True && keepdim_h.ptr() != Py_False) return nb::none();
  if (!plain(x) || !small_dim(dim_h.ptr(), dim)) return nb::none();
  if (intercepted()) return nb::none();
  Rows r;
  if (!rows_of(x, dim, r, T.max_bytes) || r.size == 0) return nb::none();
  if (needs_grad(x)) return nb::bool_(false);
  const int nd = r.nd - (keepdim_h.ptr() == Py_True ? 0 : 1);
  int64_t sizes[kMaxDims];
  for (int i = 0; i < nd; ++i) sizes[i] = i < r.nd - 1 ? r.shape[i] : 1;
  Ref y(new_shaped(x, r.dt, sizes, nd));
  if (!y.p) throw nb::python_error();
  run_rows(Op::kLogSumExp, Algo::kTwoPass, x, y.p, r);
  return nb::steal(y.release());
}

// The backward over the last dim with the fused row kernels (softmax_backward and
// logsumexp_backward's), or None. op: softmax or log_softmax (g and y of one dtype and
// shape, lse None) or logsumexp (y is its input x; g and lse one value per row, of
// x's dtype); everything contiguous.
nb::object eager_backward(nb::handle gh, nb::handle yh, nb::handle lse_h, nb::handle dim_h, int op) {
  PyObject *g = gh.ptr(), *y = yh.ptr(), *lse = lse_h.ptr();
  const bool per_row = op == (int)Op::kLogSumExp;
  long dim = 0;
  if (!plain(g) || !plain(y) || (per_row && !plain(lse)) || !small_dim(dim_h.ptr(), dim) || op < 0 || op >= kOpCount)
    return nb::none();
  Rows rg, ry, rl;
  if (!rows_of(y, dim, ry, T.backward_max_bytes) || !rows_of(g, -1, rg, T.backward_max_bytes) || rg.dt != ry.dt)
    return nb::none();
  const int64_t n = ry.n, rows = n ? ry.size / n : 0;
  if (per_row) {
    if (!rows_of(lse, -1, rl, T.backward_max_bytes) || rl.dt != ry.dt || rl.size != rows || rg.size != rows) return nb::none();
  } else if (!rg.same_shape(ry)) {
    return nb::none();
  }
  Ref gx(new_like(y, ry.dt));
  if (rows) {
    const int nt = threads(ry.size);
    const void *ga = (const void*)address(g), *ya = (const void*)address(y);  // (with the GIL)
    const void* la = per_row ? (const void*)address(lse) : nullptr;
    void* gxa = (void*)address(gx.p);
    with_gil_if_short(ry.size, [&] {
      backward_rows((Op)op, kItem[ry.dt], ry.dt == (int)Dtype::kBfloat16, ga, ya, la, gxa, rows, n, nt);
    });
  }
  return nb::steal(gx.release());
}

// twopass.torch.cross_entropy's loss (_cross_entropy._direct's work with no weight or
// extras, and the checks of _direct_ok), or None: (rows, n) logits, contiguous, and
// (rows,) int64 targets. reduction: 0 mean, 1 sum, 2 none (cross_entropy_rows).
// with_grad (from the autograd Function's forward): (loss, gradient for an upstream
// gradient of 1), for logits of at most max_bytes. Without it, where x needs a gradient
// and everything else holds: False (the caller then takes that Function).
nb::object eager_cross_entropy(nb::handle xh, nb::handle th, nb::handle ignore_h, int reduction, double eps, double zc,
                               double cap, bool with_grad) {
  PyObject *x = xh.ptr(), *t = th.ptr();
  if (!plain(x) || !plain(t) || !PyLong_CheckExact(ignore_h.ptr()) || intercepted()) return nb::none();
  const long long ignore_index = PyLong_AsLongLong(ignore_h.ptr());
  if (ignore_index == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return nb::none();
  }
  Rows r, rt;
  if (!rows_of(x, -1, r, INT64_MAX) || r.nd != 2 || r.size == 0) return nb::none();
  const int64_t n = r.n, rows = r.size / n;
  if (!rows_of(t, -1, rt, INT64_MAX, true) || rt.nd != 1 || rt.n != rows) return nb::none();
  const int item = kItem[r.dt];
  const bool small = r.size * item <= T.max_bytes;  // (a gradient of it: no streaming stores)
  if (!with_grad && needs_grad(x)) {
    if (small) return nb::bool_(false);
    return nb::none();
  }
  if (with_grad && !small) return nb::none();
  // The loss in the logits' dtype: 0-d (torch.empty_like of a 0-d tensor: 1.1 us less
  // than x.new_empty(()) on the Zen 1 VM), or per row for "none" (the target's shape).
  // (through the shim, "none"'s is a tensor of t's shape and strides, dense as t)
  Ref loss(reduction != 2 ? new_like(T.scalars[r.dt], r.dt)
           : S.on         ? new_like(t, r.dt)
                          : PyObject_CallMethodOneArg(x, T.s_new_empty, Ref(P.shape.of(t)).p));
  Ref grad(with_grad ? new_like(x, r.dt) : Py_NewRef(Py_None));
  const int half = item != 2 ? 0 : r.dt == (int)Dtype::kBfloat16 ? 2 : 1;
  const uintptr_t xa = (uintptr_t)address(x), ta = (uintptr_t)address(t), la = (uintptr_t)address(loss.p);
  const uintptr_t ga = with_grad ? (uintptr_t)address(grad.p) : 0;
  const int nt = threads(r.size);
  // _direct's algorithms: a loss alone is logsumexp's single pass (two_pass), with the
  // gradient the reload.
  const Algo algo = with_grad ? Algo::kThreePassReload : Algo::kTwoPass;
  TeamScope team(nt > 1 ? torch_team() : nullptr);
  auto call = [&] {
    cross_entropy_rows(T.isa, (int)algo, item, half, xa, rows, n, n, ta, 0, ignore_index, eps, zc, cap, reduction, ga,
                       n, la, 0, 0, nt, false, true);
  };
  with_gil_if_short(r.size, call);
  if (with_grad) return nb::make_tuple(nb::steal(loss.release()), nb::steal(grad.release()));
  return nb::steal(loss.release());
}

}  // namespace

// twopass.torch's autograd node (src/twopass/torch/_node.py, built against libtorch)
// runs its forward and backward on raw memory through these (the C table, c_api.h): the
// rule, kernels, thread count and team of eager_rows, eager_lse and eager_backward, so
// the same bits. The GIL is neither needed nor touched (the node's backward runs without
// it). 1: the one-call path would not take the call (the node takes the Python path);
// with a null output, only whether it would.
int torch_rows(int op, int bytes, bool bf16, const void* x, void* y, int64_t rows, int64_t n, int threads) {
  const int64_t size = rows * n;
  if (!T.tensor || size <= 0 || size * bytes > T.max_bytes) return 1;
  const bool lse = op == (int)Op::kLogSumExp;
  Algo algo = Algo::kTwoPass;
  if (!lse && !small_call_algorithm(op == (int)Op::kLogSoftmax, bytes, n, size, T.rule, algo)) return 1;
  if (y) forward_rows((Op)op, algo, bytes, bf16, x, y, rows, n, splits(size) ? threads : 1);
  return 0;
}

int torch_backward(int op, int bytes, bool bf16, const void* g, const void* y, const void* lse, void* gx, int64_t rows,
                   int64_t n, int threads) {
  const int64_t size = rows * n;
  if (!T.tensor || size <= 0 || size * bytes > T.backward_max_bytes) return 1;
  if (gx) backward_rows((Op)op, bytes, bf16, g, y, lse, gx, rows, n, splits(size) ? threads : 1);
  return 0;
}

// In a forked child the team's threads are gone, and GNU's runtime waits for them
// forever (torch's own ops hang there too): the pool, which starts threads of its own.
TeamRun torch_team() { return T.team && getpid() == T.team_pid ? T.team : nullptr; }

void bind_torch_eager(nb::module_& m) {
  m.def("eager_init", &eager_init);
  // Whether the shim is in use; `on` switches it (only where it was found), for tests
  // of both ways of reading tensors.
  m.def("eager_shim", [](std::optional<bool> on) {
    if (on) S.on = *on && S.found;
    return S.on;
  }, nb::arg("on") = nb::none());
  m.def("eager_rows", &eager_rows);
  m.def("eager_lse", &eager_lse);
  m.def("eager_backward", &eager_backward, nb::arg("g"), nb::arg("y"), nb::arg("lse").none(), nb::arg("dim"),
        nb::arg("op"));
  m.def("eager_cross_entropy", &eager_cross_entropy);
}

}  // namespace tp
