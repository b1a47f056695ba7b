// The row passes of one ISA, timed without Python: ns per element on a row that
// stays in cache (or, with a batch, a block of rows that does not). The figures in the
// kernels' comments (pass 1 per element, the fold, rows_reload) come from here.
//
//   for k in softmax_passes cross_entropy_rows bf16 softmax_backward table; do
//     g++ -O3 -DNDEBUG -std=c++17 -DTP_ISA_AVX2 -mavx2 -mfma -c csrc/kernels/$k.cpp -o /tmp/kb_$k.o
//   done
//   g++ -O3 -std=c++17 -DTP_BENCH_NS=tp_avx2 tools/kernel_bench.cpp /tmp/kb_*.o -o /tmp/kernel_bench
//   /tmp/kernel_bench [n = 4096] [rows = 1]
//
// (TP_ISA_SCALAR / tp_scalar for the baseline, TP_ISA_AVX512 -mavx512f -mfma / tp_avx512;
// the fastest of 9 rounds is printed.)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "../csrc/kernel_api.h"

#ifndef TP_BENCH_NS
#define TP_BENCH_NS tp_avx2
#endif

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

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int64_t rows = argc > 2 ? std::atoll(argv[2]) : 1;
  const tp::KernelTable& t = TP_BENCH_NS::table();
  const tp::Passes<float>& P = t.f32.row;
  std::vector<float> x((size_t)(n * rows)), y(x.size());
  std::mt19937 gen(1);
  std::normal_distribution<float> normal(0, 3);
  for (float& v : x) v = normal(gen);
  const tp::Group<float> g{x.data(), y.data(), n, 1, 1, 1};
  const tp::Group<float> gy{y.data(), y.data(), n, 1, 1, 1};  // in place on y
  tp::ScaledSum sum2{};
  float mx = 0;
  float m = 12.0f, half = 0.5f, e = 3.0f;
  double s = 0, om = 0, os = 0;
  std::vector<uint8_t> redo((size_t)rows);
  std::printf("isa %s, float32, n = %lld: ns per element\n", t.isa, (long long)n);
  if (rows == 1) {
    std::printf("  two_pass_sum   %.3f\n", ns_per_element([&] { P.two_pass_sum(g, nullptr, &sum2, &mx); }, n));
    std::printf("  two_pass_write %.3f\n", ns_per_element([&] { P.two_pass_write(g, nullptr, &half, &e, false); }, n));
    std::printf("  max            %.3f\n", ns_per_element([&] { P.max(g, &m); }, n));
    std::printf("  sumexp         %.3f\n", ns_per_element([&] { P.sumexp(g, &m, &s); }, n));
    std::printf("  exp_store_sum  %.3f\n", ns_per_element([&] { P.exp_store_sum(g, &m, &s, false); }, n));
    std::printf("  scale in place %.3f\n", ns_per_element([&] { P.scale(gy, &half, false); }, n));
    std::printf("  online         %.3f\n", ns_per_element([&] { P.online(g, &om, &os); }, n));
  }
  std::printf("  rows_reload, %lld row(s) %.3f\n", (long long)rows,
              ns_per_element([&] { P.rows_reload(x.data(), y.data(), rows, n, n, n, false, false, nullptr, redo.data()); },
                             n * rows));
  return 0;
}
