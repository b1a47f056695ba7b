// Python binding (nanobind). The Python layer (src/twopass/_api.py) checks arguments and
// lays the problem out; this only unpacks the arrays and releases the GIL.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <stdexcept>

#include "driver.h"

namespace nb = nanobind;

namespace {

int dtype_bytes(const nb::dlpack::dtype& dt) {
  if (dt == nb::dtype<float>()) return 4;
  if (dt == nb::dtype<double>()) return 8;
  throw nb::type_error("twopass: kernels take float32 or float64 arrays");
}

void run(int op, int algo, int isa, nb::ndarray<nb::ro, nb::device::cpu> x, nb::ndarray<nb::device::cpu> y,
         int64_t outer, int64_t n, int64_t inner, int64_t xs_outer, int64_t xs_n, int64_t ys_outer, int64_t ys_n,
         int threads, bool stream) {
  const int bytes = dtype_bytes(x.dtype());
  if (dtype_bytes(y.dtype()) != bytes) throw nb::type_error("twopass: x and y must have the same dtype");
  if (op < 0 || op > 2 || algo < 0 || algo > 3 || isa < 0 || isa > 3 || threads < 1 || outer < 0 || n < 0 || inner < 0)
    throw std::invalid_argument("twopass: bad problem description");
  tp::Problem pb{(tp::Op)op, (tp::Algo)algo, bytes, x.data(), y.data(), outer, n, inner,
                 xs_outer, xs_n, ys_outer, ys_n, tp::panel_lanes((tp::Isa)isa, bytes)};
  nb::gil_scoped_release release;
  tp::run(pb, (tp::Isa)isa, threads, stream);
}

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

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "twopass C++ kernels (private: use the functions of the twopass package)";
  m.def("run", &run, nb::arg("op"), nb::arg("algo"), nb::arg("isa"), nb::arg("x"), nb::arg("y"), nb::arg("outer"),
        nb::arg("n"), nb::arg("inner"), nb::arg("xs_outer"), nb::arg("xs_n"), nb::arg("ys_outer"), nb::arg("ys_n"),
        nb::arg("threads"), nb::arg("stream"));
  m.def("read_pass", &read_pass, nb::arg("x"), nb::arg("isa"), nb::arg("threads"),
        "Memory-bandwidth probe: one read of a float32 array (returns its maximum).");
  m.def("copy_pass", &copy_pass, nb::arg("x"), nb::arg("y"), nb::arg("isa"), nb::arg("threads"), nb::arg("stream"),
        "Memory-bandwidth probe: y = x, with or without streaming stores.");
  m.def("isa_supported", [](int isa) { return tp::isa_supported((tp::Isa)isa); });
  m.def("isa_compiled", [](int isa) { return tp::isa_compiled((tp::Isa)isa); });
  m.def("panel_lanes", [](int isa, int bytes) { return tp::panel_lanes((tp::Isa)isa, bytes); });
}
