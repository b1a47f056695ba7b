// twopass.torch's autograd nodes for CPU tensors that need a gradient, in C++: softmax,
// log_softmax, logsumexp and the fused cross-entropy.
//
// A torch.autograd.Function costs ~3 us of Python machinery a call before any work (its
// context object, the Python forward and backward frames): more than torch's whole
// 1x1024 softmax with its C++ node, so twopass.torch's 1x1024 forward + backward took
// 1.3-1.4x torch's time. This is a node as torch's own operators make them (a Node
// subclass holding SavedVariables, as torch/csrc/autograd/generated/Functions.h does;
// torch::autograd::Function's bookkeeping measured ~1.5 us more). Its forward and
// backward run the one-call paths of csrc/torch_eager.cpp on the tensors' memory through
// _core's C table (c_api.h: torch_rows, torch_backward), without Python; what those do
// not take (other layouts, large tensors, a backward under create_graph) calls the
// Python functions the autograd Functions of _eager.py call. Either way the same kernels
// and rule as the Python path: the same bits.
//
// It includes libtorch's headers, so it is not part of twopass's own build: _node.py
// compiles it on first use against the installed torch (twopass/_compile.py) and keeps
// the Python Functions where it cannot.
#include <Python.h>

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/python_variable.h>

#include <stdexcept>

#include "c_api.h"

namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// One differentiable op: y = forward(x, dim, flag); grad_x = backward(g, *saved, dim,
// flag), saved being (y,) or, with keep_input, (x, y): the Python path, for what the C
// table does not take. Strong references for the process's life.
struct Op {
  PyObject* forward = nullptr;
  PyObject* backward = nullptr;
  bool keep_input = false;
};
enum : int64_t { kSoftmax, kLogSumExp, kOps };  // flag: log (softmax), keepdim (logsumexp)
Op ops[kOps];
Op cross_entropy;  // forward(logits, target, weight, ignore_index, reduction, eps, zc, cap, extras) -> (out, grad)
const tp_c_api* api = nullptr;
int codes[3] = {};  // _core's op codes of softmax, log_softmax, logsumexp

// Python's pending error, carried through C++ frames; re-raised unchanged where the call
// returns to Python (HANDLE_TH_ERRORS, or the autograd engine for the backward).
[[noreturn]] void throw_python_error() {
  python_error e;
  e.persist();
  throw e;
}

// fn(args...) -> the tensor it returns. Needs the GIL.
at::Tensor call(PyObject* fn, PyObject* const* args, size_t nargs) {
  PyObject* r = PyObject_Vectorcall(fn, args, nargs, nullptr);
  if (!r) throw_python_error();
  if (!THPVariable_Check(r)) {
    Py_DECREF(r);
    PyErr_SetString(PyExc_TypeError, "twopass.torch: an autograd function returned something other than a tensor");
    throw_python_error();
  }
  at::Tensor t = THPVariable_Unpack(r);
  Py_DECREF(r);
  return t;
}

// Owned references, released at scope exit.
struct Refs {
  PyObject* p[5] = {};
  int n = 0;
  PyObject* add(PyObject* o) {
    if (!o) throw_python_error();
    return p[n++] = o;
  }
  ~Refs() {
    for (int i = 0; i < n; ++i) Py_DECREF(p[i]);
  }
};


// The nodes. In Python, a tensor's grad_fn is a CppFunction whose name() is
// "twopass::SoftmaxBackward" (torch's own: "SoftmaxBackward0").
template <int64_t kOp> struct Backward : torch::autograd::Node {
  SavedVariable y_;  // the output
  SavedVariable x_;  // the input, where the backward reads it (keep_input)
  int64_t dim_ = -1;
  bool flag_ = false;

  std::string name() const override {
    return kOp == kLogSumExp ? "twopass::LogSumExpBackward" : "twopass::SoftmaxBackward";
  }
  void release_variables() override {
    y_.reset_data();
    x_.reset_data();
  }

  // Called by the autograd engine, without the GIL; grad mode on under create_graph.
  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return {at::Tensor()};  // no gradient flows in: none flows out
    variable_list saved;
    if (ops[kOp].keep_input) saved.push_back(x_.unpack());
    saved.push_back(y_.unpack(this->getptr()));
    at::Tensor gx;
    if (!at::GradMode::is_enabled()) gx = fast_backward(grads[0], saved, dim_, flag_);  // (else: differentiable ops)
    if (!gx.defined()) {
      pybind11::gil_scoped_acquire gil;
      Refs refs;
      PyObject* args[5];
      size_t n = 0;
      args[n++] = refs.add(THPVariable_Wrap(grads[0]));
      for (const at::Tensor& t : saved) args[n++] = refs.add(THPVariable_Wrap(t));
      args[n++] = refs.add(PyLong_FromLongLong(dim_));
      args[n++] = flag_ ? Py_True : Py_False;
      gx = call(ops[kOp].backward, args, n);
    }
    return {gx};
  }

  static int op_code(bool flag) { return kOp == kLogSumExp ? codes[2] : codes[flag ? 1 : 0]; }

  // y = op(x), with a node when x needs a gradient (what torch's generated operators do).
  // Called with the GIL held.
  static at::Tensor forward(const at::Tensor& x, int64_t dim, bool flag) {
    at::Tensor y;
    {
      at::NoGradGuard no_grad;
      y = fast_forward(x, dim, flag);
      if (!y.defined()) {
        Refs refs;
        PyObject* args[] = {refs.add(THPVariable_Wrap(x)), refs.add(PyLong_FromLongLong(dim)),
                            flag ? Py_True : Py_False};
        y = call(ops[kOp].forward, args, 3);
      }
    }
    if (at::GradMode::is_enabled() && x.requires_grad()) {
      auto node = c10::make_intrusive<Backward>();
      node->set_next_edges(torch::autograd::collect_next_edges(x));
      node->dim_ = dim;
      node->flag_ = flag;
      if (ops[kOp].keep_input) node->x_ = SavedVariable(x, false);
      torch::autograd::set_history(y, node);
      node->y_ = SavedVariable(y, true);
    }
    return y;
  }

  // The one-call path's forward (eager_rows, eager_lse), or an undefined tensor.
  static at::Tensor fast_forward(const at::Tensor& x, int64_t dim, bool flag) {
    bool bf16 = false;
    const int bytes = item(x, bf16);
    const int64_t nd = x.dim();
    if (!bytes || nd == 0 || (dim != -1 && dim != nd - 1) || !x.is_contiguous()) return {};
    const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
    char err[256];
    if (api->torch_rows(op_code(flag), bytes, bf16, x.data_ptr(), nullptr, rows, n, 1, err, sizeof err) != 0) return {};
    at::Tensor y;
    if (kOp == kLogSumExp) {
      std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end() - 1);
      if (flag) sizes.push_back(1);  // keepdim
      y = empty(sizes, x);
    } else {
      y = empty(x.sizes(), x);  // contiguous, as x
    }
    if (api->torch_rows(op_code(flag), bytes, bf16, x.data_ptr(), y.data_ptr(), rows, n, at::get_num_threads(), err,
                        sizeof err) != 0)
      throw std::runtime_error(err);
    return y;
  }

  // The one-call path's backward (eager_backward), or an undefined tensor. softmax:
  // saved (y); logsumexp: saved (x, r), g and r one value per row.
  static at::Tensor fast_backward(const at::Tensor& g, const variable_list& saved, int64_t dim, bool flag) {
    const at::Tensor& t = saved[0];  // y, or logsumexp's x
    bool bf16 = false;
    const int bytes = item(t, bf16);
    const int64_t nd = t.dim();
    if (!bytes || nd == 0 || (dim != -1 && dim != nd - 1) || !g.defined() || g.scalar_type() != t.scalar_type() ||
        !t.is_contiguous() || !g.is_contiguous())
      return {};
    const int64_t n = t.size(-1), rows = n ? t.numel() / n : 0;
    const void* lse = nullptr;
    if (kOp == kLogSumExp) {
      const at::Tensor& r = saved[1];
      if (r.scalar_type() != t.scalar_type() || !r.is_contiguous() || r.numel() != rows || g.numel() != rows) return {};
      lse = r.data_ptr();
    } else if (!g.sizes().equals(t.sizes())) {
      return {};
    }
    char err[256];
    const int op = op_code(flag);
    if (api->torch_backward(op, bytes, bf16, g.data_ptr(), t.data_ptr(), lse, nullptr, rows, n, 1, err, sizeof err) != 0)
      return {};
    at::Tensor gx = empty(t.sizes(), t);
    if (api->torch_backward(op, bytes, bf16, g.data_ptr(), t.data_ptr(), lse, gx.data_ptr(), rows, n,
                            at::get_num_threads(), err, sizeof err) != 0)
      throw std::runtime_error(err);
    return gx;
  }

  // A contiguous CPU tensor of like's dtype, straight from the CPU allocator (at::empty_like
  // through the dispatcher costs ~0.2 us more: a fifth of a 1x1024 softmax).
  static at::Tensor empty(at::IntArrayRef sizes, const at::Tensor& like) {
    return at::Tensor(at::detail::empty_cpu(sizes, like.scalar_type()));
  }

  // Bytes per element of a CPU tensor of a kernel dtype, else 0.
  static int item(const at::Tensor& t, bool& bf16) {
    if (!t.is_cpu() || t.layout() != at::kStrided || t.is_neg() || t.is_conj()) return 0;
    switch (t.scalar_type()) {
      case at::kFloat: return 4;
      case at::kDouble: return 8;
      case at::kHalf: return 2;
      case at::kBFloat16: bf16 = true; return 2;
      default: return 0;
    }
  }
};

// The fused cross-entropy: its forward writes the gradient of the logits for an upstream
// gradient of 1 (of the loss, reduced or per row), which the backward returns as it is
// in the usual step (a 0-d upstream gradient of exactly 1) and otherwise scales (the
// Python path). z-loss and lse, when asked for, carry no gradient.
struct CrossEntropyBackward : torch::autograd::Node {
  SavedVariable grad_;  // released once the node has run: AccumulateGrad can then take it as .grad

  std::string name() const override { return "twopass::CrossEntropyBackward"; }
  void release_variables() override { grad_.reset_data(); }

  variable_list apply(variable_list&& grads) override {
    const at::Tensor& g = grads[0];
    if (!g.defined()) return {at::Tensor()};
    at::Tensor grad = grad_.unpack();
    if (!at::GradMode::is_enabled() && is_one(g)) return {grad};
    pybind11::gil_scoped_acquire gil;
    Refs refs;
    PyObject* args[] = {refs.add(THPVariable_Wrap(grad)), refs.add(THPVariable_Wrap(g))};
    return {call(cross_entropy.backward, args, 2)};
  }

  // g is a 0-d CPU tensor holding exactly 1.
  static bool is_one(const at::Tensor& g) {
    if (g.dim() != 0 || !g.is_cpu()) return false;
    switch (g.scalar_type()) {
      case at::kFloat: return *g.const_data_ptr<float>() == 1.0f;
      case at::kDouble: return *g.const_data_ptr<double>() == 1.0;
      case at::kHalf: return (float)*g.const_data_ptr<at::Half>() == 1.0f;
      case at::kBFloat16: return (float)*g.const_data_ptr<at::BFloat16>() == 1.0f;
      default: return false;
    }
  }

  // The forward's result (the loss, or (loss, z_loss, lse)), with a node on the loss when
  // the logits need a gradient. Called with the GIL held.
  static PyObject* forward(PyObject* const* args, Py_ssize_t nargs) {
    PyObject* r;
    {
      at::NoGradGuard no_grad;
      r = PyObject_Vectorcall(cross_entropy.forward, args, nargs, nullptr);
    }
    if (!r) return nullptr;
    Refs refs;
    refs.add(r);
    PyObject *out = PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 2 ? PyTuple_GET_ITEM(r, 0) : nullptr;
    PyObject* grad = out ? PyTuple_GET_ITEM(r, 1) : nullptr;
    PyObject* loss = out && PyTuple_Check(out) && PyTuple_GET_SIZE(out) > 0 ? PyTuple_GET_ITEM(out, 0) : out;
    if (!loss || !THPVariable_Check(loss) || !THPVariable_Check(grad)) {
      PyErr_SetString(PyExc_TypeError, "twopass.torch: the cross-entropy forward returned something unexpected");
      return nullptr;
    }
    const at::Tensor& logits = THPVariable_Unpack(args[0]);
    if (at::GradMode::is_enabled() && logits.requires_grad()) {
      auto node = c10::make_intrusive<CrossEntropyBackward>();
      node->set_next_edges(torch::autograd::collect_next_edges(logits));
      torch::autograd::set_history(THPVariable_Unpack(loss), node);
      node->grad_ = SavedVariable(THPVariable_Unpack(grad), false);
    }
    return Py_NewRef(out);
  }
};

// cross_entropy(logits, target, weight, ignore_index, reduction, eps, zc, cap, extras)
PyObject* apply_cross_entropy(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 9 || !THPVariable_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, "twopass.torch's autograd node: expected the cross-entropy's 9 arguments");
    return nullptr;
  }
  return CrossEntropyBackward::forward(args, nargs);
  END_HANDLE_TH_ERRORS
}

// apply(x, dim, flag) for op: x a tensor, dim an int, flag a bool.
template <int64_t kOp> PyObject* apply(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 3 || !THPVariable_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, "twopass.torch's autograd node: expected (tensor, dim, flag)");
    return nullptr;
  }
  const long long dim = PyLong_AsLongLong(args[1]);
  if (dim == -1 && PyErr_Occurred()) return nullptr;
  const int flag = PyObject_IsTrue(args[2]);
  if (flag < 0) return nullptr;
  return THPVariable_Wrap(Backward<kOp>::forward(THPVariable_Unpack(args[0]), (int64_t)dim, flag != 0));
  END_HANDLE_TH_ERRORS
}

// init(c_api, softmax_code, log_softmax_code, logsumexp_code, softmax_forward,
//      softmax_backward, logsumexp_forward, logsumexp_backward, cross_entropy_forward,
//      cross_entropy_backward): _core's C table (its address), its op codes, and each
// op's Python path.
PyObject* init(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4 + 2 * kOps + 2) {
    PyErr_SetString(PyExc_TypeError, "init: expected the C table, three op codes and each op's forward and backward");
    return nullptr;
  }
  const tp_c_api* a = (const tp_c_api*)PyLong_AsVoidPtr(args[0]);
  if (!a && PyErr_Occurred()) return nullptr;
  if (!a || a->version != TP_C_API_VERSION) {
    PyErr_SetString(PyExc_RuntimeError, "twopass.torch's autograd node was built for another version of _core's C table");
    return nullptr;
  }
  for (int i = 0; i < 3; ++i) {
    codes[i] = (int)PyLong_AsLong(args[1 + i]);
    if (PyErr_Occurred()) return nullptr;
  }
  for (int64_t i = 0; i < kOps; ++i) {
    Py_INCREF(args[4 + 2 * i]);
    Py_INCREF(args[4 + 2 * i + 1]);
    ops[i] = Op{args[4 + 2 * i], args[4 + 2 * i + 1], i == kLogSumExp};
  }
  Py_INCREF(args[4 + 2 * kOps]);
  Py_INCREF(args[5 + 2 * kOps]);
  cross_entropy = Op{args[4 + 2 * kOps], args[5 + 2 * kOps], false};
  api = a;
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"init", (PyCFunction)(void (*)(void))init, METH_FASTCALL, nullptr},
    {"softmax", (PyCFunction)(void (*)(void))apply<kSoftmax>, METH_FASTCALL, "softmax(x, dim, log)"},
    {"logsumexp", (PyCFunction)(void (*)(void))apply<kLogSumExp>, METH_FASTCALL, "logsumexp(x, dim, keepdim)"},
    {"cross_entropy", (PyCFunction)(void (*)(void))apply_cross_entropy, METH_FASTCALL,
     "cross_entropy(logits, target, weight, ignore_index, reduction, eps, zc, cap, extras)"},
    {nullptr, nullptr, 0, nullptr},
};
PyModuleDef module = {PyModuleDef_HEAD_INIT, "_twopass_autograd_node", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__twopass_autograd_node() { return PyModule_Create(&module); }
