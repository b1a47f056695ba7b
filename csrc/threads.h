// Threads: run f(0..n-1) on n threads (the caller's is one of them), and the work sizes
// below which splitting does not pay. Header-only: f is inlined at each call site.
//
// Threads are spawned per call: the driver only goes parallel when each thread has
// enough work that thread starts (~20 us each) are noise: kMinPerThread elements for a
// batch split by rows (one start), kMinPerChunk for a row split along its axis (one
// start per pass; measured: a 64K-256K row was slower on 2 threads than on 1 with 32K).
#pragma once

#include <cstdint>
#include <thread>
#include <vector>

namespace tp {

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

}  // namespace tp
