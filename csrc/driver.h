// The C++ entry point the binding calls: one softmax-family problem, already checked
// and laid out by the Python layer as (outer, n, inner) with unit stride across inner.
#pragma once

#include <cstdint>
#include <thread>
#include <vector>

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
  void* lse = nullptr;  // softmax only, optional: logsumexp per (outer, inner), dense
};

// ---------------------------------------------------------------------------------
// Threads: run f(0..n-1) on n threads (the caller's is one of them). Spawned per call:
// the driver only goes parallel when each thread has enough work that thread starts
// (~20 us each) are noise: kMinPerThread elements for a batch split by rows (one
// start), kMinPerChunk for a row split along its axis (one start per pass; measured:
// a 64K-256K row was slower on 2 threads than on 1 with 32K).
// ---------------------------------------------------------------------------------
template <class F> inline void parallel(int n, F&& f) {
  if (n <= 1) {
    f(0);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(n - 1);
  for (int t = 1; t < n; ++t) pool.emplace_back([&f, t] { f(t); });
  f(0);
  for (auto& th : pool) th.join();
}
constexpr int64_t kMinPerThread = 1 << 15;
constexpr int64_t kMinPerChunk = 1 << 18;

bool isa_supported(Isa isa);  // the CPU and OS can run it
bool isa_compiled(Isa isa);   // this build has it
int panel_lanes(Isa isa, int dtype_bytes);
// Runs the problem with `threads` threads (>= 1); `stream` asks for non-temporal stores.
void run(const Problem& pb, Isa isa, int threads, bool stream);

// The kernel table of an ISA the CPU supports (else std::invalid_argument).
const KernelTable& kernels(Isa isa);

// The memory-bandwidth probes of the benchmark, built from the same kernels: a read
// pass (the maximum of x) and a copy pass (y = x * 1), split over `threads` threads.
float read_pass(const float* x, int64_t n, Isa isa, int threads);
void copy_pass(const float* x, float* y, int64_t n, Isa isa, int threads, bool stream);

// The fused cross-entropy of docs/cross_entropy.md over contiguous rows of logits: per
// row, the loss terms and lse from one read, and (grad != null) the gradient for an
// upstream gradient of 1, written while the row is still in cache.
struct CeProblem {
  int dtype_bytes;
  const void* x;  // (rows, n): row stride xs elements, class stride 1
  int64_t rows, n, xs;
  const int64_t* target;  // (rows,); targets are checked by the caller
  const void* weight;     // (n,) or null
  double weight_total;    // sum of weight (n without one)
  int64_t ignore_index;
  double smoothing, z_coef, softcap;  // softcap 0: none
  double s_ce, s_z;                   // the gradient scales of the ce and z terms
  void* grad;                         // (rows, n) with row stride gs, or null; may be x
  int64_t gs;
  double *ce, *z, *lse;  // (rows,) each
  Algo algo;             // of the softmax inside (two_pass or a max-based one)
  bool stream;           // streaming stores for grad
  bool bf16 = false;     // x and grad hold bfloat16 (dtype_bytes 4: computed in float32)
};
void cross_entropy(const CeProblem& pb, Isa isa, int threads);

// The gradient of a row whose lse is known (a shard of a vocabulary-parallel row):
// grad_j = a exp(x_j - lse) - c w_j, minus b at the target; target -1: not in this
// row, -2: an ignored row (all 0).
struct CeGradProblem {
  int dtype_bytes;
  const void* x;  // (rows, n): row stride xs, class stride 1
  int64_t rows, n, xs;
  const double *lse, *a, *c, *b;  // (rows,) each
  const int64_t* target;          // (rows,)
  const void* weight;             // (n,) or null
  void* grad;                     // (rows, n), row stride gs
  int64_t gs;
  bool stream;
};
void cross_entropy_grad(const CeGradProblem& pb, Isa isa, int threads);

}  // namespace tp
