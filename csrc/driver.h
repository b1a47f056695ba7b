// The C++ entry point the binding calls: one softmax-family problem, already checked
// and laid out by the Python layer as (outer, n, inner) with unit stride across inner.
#pragma once

#include <cstdint>

#include "twopass.h"

#if defined(__x86_64__) || defined(_M_X64)
#define TP_HAVE_X86 1
#else
#define TP_HAVE_X86 0
#endif
#if defined(__aarch64__)
#define TP_HAVE_ARM64 1
#else
#define TP_HAVE_ARM64 0
#endif

namespace tp {

enum class Op { kSoftmax = 0, kLogSoftmax = 1, kLogSumExp = 2 };
enum class Algo { kTwoPass = 0, kThreePassReload = 1, kThreePassRecompute = 2, kOnline = 3 };
enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kNeon = 3 };

struct Problem {
  Op op;
  Algo algo;
  int dtype_bytes;  // 4: float32, 8: float64
  const void* x;
  void* y;  // softmax/log_softmax: like x; logsumexp: (outer, inner)
  int64_t outer, n, inner;
  int64_t xs_outer, xs_n;  // strides in elements; the stride across inner is 1
  int64_t ys_outer, ys_n;
  int panel_lanes;  // columns per panel group (from panel_lanes())
};

bool isa_supported(Isa isa);  // the CPU and OS can run it
bool isa_compiled(Isa isa);   // this build has it
int panel_lanes(Isa isa, int dtype_bytes);
// Runs the problem with `threads` threads (>= 1); `stream` asks for non-temporal stores.
void run(const Problem& pb, Isa isa, int threads, bool stream);

// The memory-bandwidth probes of the benchmark, built from the same kernels: a read
// pass (the maximum of x) and a copy pass (y = x * 1), split over `threads` threads.
float read_pass(const float* x, int64_t n, Isa isa, int threads);
void copy_pass(const float* x, float* y, int64_t n, Isa isa, int threads, bool stream);

}  // namespace tp
