// The memory-bandwidth probes: a read pass (the maximum of x) and a copy pass
// (y = x * 1), split over threads; `stream` is the caller's choice here (the probe
// measures streaming stores themselves).
#include "probes.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "dispatch.h"
#include "kernel_api.h"
#include "threads.h"

namespace tp {

namespace {
Group<float> slice(const float* x, float* y, int64_t n, int part, int parts) {
  const int64_t lo = n * part / parts, hi = n * (part + 1) / parts;
  return Group<float>{x + lo, y ? y + lo : nullptr, hi - lo, 1, 1, 1};
}
}  // namespace

float read_pass(const float* x, int64_t n, Isa isa, int threads) {
  const Passes<float>& P = kernels(isa).f32.row;
  std::vector<float> parts(threads);
  parallel(threads, [&](int t) { P.max(slice(x, nullptr, n, t, threads), &parts[t]); });
  float m = -INFINITY;
  for (float v : parts) m = std::max(m, v);
  return m;
}

void copy_pass(const float* x, float* y, int64_t n, Isa isa, int threads, bool stream) {
  const Passes<float>& P = kernels(isa).f32.row;
  const float one = 1.0f;
  parallel(threads, [&](int t) { P.scale(slice(x, y, n, t, threads), &one, stream); });
}

}  // namespace tp
