// The row passes of one ISA, timed without Python: ns per element on a row that
// stays in cache (or, with a batch, a block of rows that does not). The figures in the
// kernels' comments (pass 1 per element, the fold, rows_reload) come from here.
//
//   for k in softmax_passes cross_entropy_rows bf16 softmax_backward table; do
//     g++ -O3 -DNDEBUG -std=c++17 -DTP_ISA_AVX2 -mavx2 -mfma -c csrc/kernels/$k.cpp -o /tmp/kb_$k.o
//   done
//   g++ -O3 -std=c++17 -DTP_BENCH_NS=tp_avx2 tools/kernel_bench.cpp csrc/kernel_shared.cpp /tmp/kb_*.o -o /tmp/kernel_bench
//   /tmp/kernel_bench [n = 4096] [rows = 1] [dtype = float32|float64|bfloat16|float16]
//
// (TP_ISA_SCALAR / tp_scalar for the baseline, TP_ISA_AVX512 -mavx512f -mfma / tp_avx512;
// the fastest of 9 rounds is printed.)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../csrc/kernel_api.h"

#ifndef TP_BENCH_NS
#define TP_BENCH_NS tp_avx2
#endif

// The software prefetch distance (defined by dispatch.cpp in the module).
namespace tp {
int prefetch_bytes = 2048;
}

namespace {

template <class F> double ns_per_element(F&& f, int64_t elements) {
  const int reps = (int)std::max<int64_t>(3, (int64_t(1) << 26) / elements);
  double best = 1e300;
  for (int round = 0; round < 9; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < reps; ++k) f();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count() / reps / (double)elements * 1e9);
  }
  return best;
}

}  // namespace

template <class S> int run(const tp::SoftmaxKernels<S>& K, const char* isa, const char* dtype, int64_t n, int64_t rows) {
  using T = tp::Compute<S>;
  const tp::Passes<S>& P = K.row;
  std::vector<S> x((size_t)(n * rows)), y(x.size());
  std::mt19937 gen(1);
  std::normal_distribution<float> normal(0, 3);
  for (S& v : x) v = tp::Storage<S>::narrow((T)normal(gen));
  const tp::Group<S> g{x.data(), y.data(), n, 1, 1, 1};
  const tp::Group<S> gy{y.data(), y.data(), n, 1, 1, 1};  // in place on y
  tp::ScaledSum sum2{};
  T mx = 0;
  T m = 12, half = 0.5, e = 3;
  double s = 0, om = 0, os = 0;
  std::vector<uint8_t> redo((size_t)rows);
  std::printf("isa %s, %s, n = %lld: ns per element\n", isa, dtype, (long long)n);
  if (rows == 1) {
    std::printf("  two_pass_sum   %.3f\n", ns_per_element([&] { P.two_pass_sum(g, nullptr, &sum2, &mx); }, n));
    std::printf("  two_pass_write %.3f\n", ns_per_element([&] { P.two_pass_write(g, nullptr, &half, &e, false); }, n));
    std::printf("  max            %.3f\n", ns_per_element([&] { P.max(g, &m); }, n));
    std::printf("  sumexp         %.3f\n", ns_per_element([&] { P.sumexp(g, &m, &s); }, n));
    std::printf("  exp_store_sum  %.3f\n", ns_per_element([&] { P.exp_store_sum(g, &m, &s, false); }, n));
    std::printf("  scale in place %.3f\n", ns_per_element([&] { P.scale(gy, &half, false); }, n));
    std::printf("  online         %.3f\n", ns_per_element([&] { P.online(g, &om, &os); }, n));
    std::printf("  log_sm_write   %.3f\n", ns_per_element([&] { P.log_softmax_write(g, &half, &e, false); }, n));
  }
  std::printf("  rows_reload, %lld row(s) %.3f\n", (long long)rows,
              ns_per_element([&] { P.rows_reload(x.data(), y.data(), rows, n, n, n, false, false, nullptr, redo.data()); },
                             n * rows));
  return 0;
}

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int64_t rows = argc > 2 ? std::atoll(argv[2]) : 1;
  const std::string dtype = argc > 3 ? argv[3] : "float32";
  const tp::KernelTable& t = TP_BENCH_NS::table();
  if (dtype == "bfloat16") return run(t.bf16s, t.isa, "bfloat16", n, rows);
  if (dtype == "float16") return run(t.f16s, t.isa, "float16", n, rows);
  if (dtype == "float64") return run(t.f64, t.isa, "float64", n, rows);
  return run(t.f32, t.isa, "float32", n, rows);
}
