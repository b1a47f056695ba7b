// The small calls that the one-call paths run without Python (numpy_rows.cpp,
// torch_eager.cpp): x of at most _SMALL_SOFTMAX_BYTES (64 KiB), contiguous rows of n.
// What algorithm="auto" takes for them, and how they treat the GIL. The rule of _softmax.auto_algorithm as far as it goes there,
// written once; tests/test_softmax.py and tests/test_torch_eager.py pin both paths to
// the bits of the Python path.
#pragma once

#include <nanobind/nanobind.h>

#include <cstdint>

#include "codes.h"
#include "kernel_api.h"
#include "threads.h"

namespace tp {

// Runs f() holding the GIL for a call of fewer than kGilElements elements (releasing and
// taking it back costs more than such a call), without it otherwise.
template <class F> void with_gil_if_short(int64_t elements, F&& f) {
  if (elements < kGilElements) return f();
  nanobind::gil_scoped_release release;
  f();
}

// What the rule needs of the machine, from Python (numpy_init, eager_init).
struct SmallCallRule {
  int64_t short_row_bytes = 0;  // _softmax.SHORT_ROW_BYTES: log_softmax's reload below it
  // _softmax.SMALL_HALF_RELOAD_BYTES: the x and y (in float32 bytes) up to which float32's
  // rule gives the reload on any thread count
  int64_t half_reload_bytes = 0;
};

// False where the rule needs more than this (the caller takes the Python path).
// - softmax of float32/float64: the reload (x and y fit any cache counted on);
// - softmax of float16/bfloat16: the reload while exp(x - max) fits its float32 scratch
//   row (kReloadScratchBytes); longer rows: auto_algorithm's float32 rule on the float32
//   bytes they compute, taken here where it gives the reload whatever the thread count
//   (rows of a small call are too short to be split along their axis); else Python's.
//   (Before, every such row took the Python path: 8192 halves, 1 thread, Zen 4, 8.2 us a
//   call against 3.4 us for the same kernel called with its name.)
// - log_softmax: the reload in rows shorter than short_row_bytes (counted in float32
//   bytes for the halves, which compute in float32), else two_pass.
inline bool small_call_algorithm(bool log, int item, int64_t n, int64_t size, const SmallCallRule& rule,
                                 Algo& algo) {
  const int64_t row_bytes = n * (item == 2 ? 4 : item);
  algo = log && row_bytes >= rule.short_row_bytes ? Algo::kTwoPass : Algo::kThreePassReload;
  return log || item != 2 || row_bytes <= kReloadScratchBytes || 2 * size * 4 <= rule.half_reload_bytes;
}

}  // namespace tp
