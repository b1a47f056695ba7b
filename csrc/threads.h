// Threads: run f(0..n-1) over n threads (the caller's is one of them), and the work sizes
// below which splitting does not pay. f is inlined at each call site; the workers are a
// pool kept between calls (thread_pool.cpp).
//
// Every f(t) runs exactly once, but not necessarily on its own thread: the caller and
// the workers claim the indices in turn, so a worker that is slow to wake leaves its
// share to the others instead of holding the call up. Starting threads per call cost
// ~30 us each on a 2-core VM (a 64x1024 float32 softmax: 22 us on one thread, 89 us on
// two), more than the work of most batches that fit in the cache.
// kMinPerThread elements for a batch split by rows (on the pool, 16K-element float32
// batches took 12-17% less time on 2 threads than on 1, 8K ones the same; with threads
// started per call this was 32K), kMinPerChunk for a row split along its axis (one
// parallel region per pass: float32 softmax, hot, rows of 32K / 64K / 128K / 256K / 1M,
// 1 thread's best against two_pass split on 2: 10.1 / 16.5 / 35.1 / 62.7 / 241 us against
// 11.5 / 15.9 / 24.0 / 37.8 / 131; with threads started per call rows split from 512K).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

namespace tp {

// Jobs of this many elements wake sleeping workers (~0.3 ms of work on one thread).
constexpr int64_t kWakeElements = int64_t{1} << 20;

// fn(ctx, i) for every i in [0, n), on the calling thread and up to threads - 1 of the
// pool's workers; an exception from any of them is rethrown here (the first one), after
// all have finished. `wake`: wake workers that sleep (else only those still spinning
// after a recent call help).
void parallel_for_each(int n, int threads, void (*fn)(void*, int), void* ctx, bool wake = true);

// f(i) for i in [0, n) on up to n threads (`wake`: as parallel_for_each's).
template <class F> inline void parallel(int n, F&& f, bool wake = true) {
  if (n <= 1) {
    if (n == 1) f(0);
    return;
  }
  using Fn = std::remove_reference_t<F>;
  parallel_for_each(n, n, [](void* c, int i) { (*static_cast<Fn*>(c))(i); },
                    const_cast<void*>(static_cast<const void*>(&f)), wake);
}

// f(lo, hi) over consecutive ranges covering [0, count), on up to `threads` threads: a
// few ranges per thread, so that one that starts late (a worker waking from sleep)
// leaves more of them to the others. `elements`: the job's size, which decides whether
// sleeping workers are worth waking (kWakeElements).
constexpr int kRangesPerThread = 4;
template <class F> inline void parallel_ranges(int64_t count, int threads, int64_t elements, F&& f) {
  const int64_t ranges = std::min<int64_t>(count, (int64_t)threads * kRangesPerThread);
  if (threads <= 1 || ranges <= 1) {
    if (count > 0) f(int64_t{0}, count);
    return;
  }
  auto piece = [&](int i) { f(count * i / ranges, count * (i + 1) / ranges); };
  using Fn = decltype(piece);
  parallel_for_each((int)ranges, threads, [](void* c, int i) { (*static_cast<Fn*>(c))(i); }, &piece,
                    elements >= kWakeElements);
}
constexpr int64_t kMinPerThread = 1 << 13;
// Below this many elements the one-call paths (torch_eager.cpp, numpy_rows.cpp: small_calls.h) run the
// kernel holding the GIL: it takes less than releasing and taking it back (~0.2 us on
// the Zen 1 VM).
constexpr int64_t kGilElements = 4096;
constexpr int64_t kMinPerChunk = 1 << 15;

// Another runtime's thread team, used instead of the pool by the parallel calls of one
// thread while a TeamScope lives: twopass.torch runs on torch's OpenMP team
// (torch_eager.cpp). Torch's OpenMP workers spin after each torch op, and beside them the
// pool's workers waited for a core: 2 cores, 2 threads, a torch op before each call, a
// 256x1024 float32 logsumexp took 426 us against 322 on one thread. TeamRun has
// GOMP_parallel's contract: fn(data) on `threads` threads (the caller's one of them),
// returning when all have.
using TeamRun = void (*)(void (*fn)(void*), void* data, unsigned threads, unsigned flags);
class TeamScope {
 public:
  explicit TeamScope(TeamRun run);  // null: the pool, as without a scope
  ~TeamScope();
  TeamScope(const TeamScope&) = delete;
  TeamScope& operator=(const TeamScope&) = delete;

 private:
  TeamRun saved_;
};

// How long the pool's workers spin after a job, waiting for the next, before they sleep
// (TWOPASS_SPIN_US, src/twopass/_dispatch.py).
extern std::atomic<int> spin_microseconds;

}  // namespace tp
