// The worker pool behind tp::parallel (threads.h).
//
// One job at a time: the caller publishes it (an atomic pointer to a Job on its stack)
// and bumps a generation counter; workers spin on the counter for spin_microseconds
// after their last job, then sleep on a condition variable. Indices are claimed from
// the job by fetch_add, by the caller as well, so the call finishes even if no worker
// wakes in time. Waking a sleeping worker is not free: the notify took the caller 20-50
// us on a 2-core VM (a halted virtual CPU), and the worker came later still, so a small
// job (`wake` false) wakes them only when jobs are coming often (the last ended under
// 1 ms ago); otherwise it takes the workers that are still spinning, if any. A worker holds a reference (`users`) while it looks at the job, and
// the caller waits for those to drop before its Job leaves the stack.
//
// A second parallel call while a job runs (another Python thread with the GIL released,
// or a nested call from inside f) does not queue behind it: it starts threads of its
// own, as every call did before the pool. After fork() the child gets a fresh pool (the
// parent's workers do not exist there).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "threads.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TP_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define TP_PAUSE() asm volatile("yield")
#else
#define TP_PAUSE() ((void)0)
#endif

namespace tp {

std::atomic<int> spin_microseconds{50};

namespace {

struct Job {
  void (*fn)(void*, int);
  void* ctx;
  int n;
  int helpers;                  // workers wanted (the caller is one more thread)
  std::atomic<int> joined{0};   // workers that came to help
  std::atomic<int> next{0};  // the next unclaimed index
  std::atomic<int> done{0};  // indices finished
  std::mutex error_lock;
  std::exception_ptr error;

  // Claim and run indices until none is left.
  void work() {
    for (int i; (i = next.fetch_add(1)) < n;) {
      try {
        fn(ctx, i);
      } catch (...) {
        std::lock_guard<std::mutex> g(error_lock);
        if (!error) error = std::current_exception();
      }
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

struct Pool {
  pid_t pid = getpid();
  std::atomic_flag busy = ATOMIC_FLAG_INIT;  // a job is running
  std::atomic<uint64_t> generation{0};
  std::atomic<Job*> job{nullptr};
  std::atomic<int> users{0};     // workers looking at `job`
  std::atomic<int> sleepers{0};  // workers waiting on `wake`
  std::mutex lock;
  std::condition_variable wake;
  int workers = 0;  // started (never stopped: they live as long as the process)
  // When the last job ended (steady_clock ticks, ns): a small job wakes sleeping workers
  // only while jobs come this often (then they spin on through the next few).
  static constexpr int64_t kRecentNs = 1000000;
  std::atomic<int64_t> last_end{INT64_MIN / 2};

  void worker() {
    uint64_t seen = generation.load();
    for (;;) {
      wait_for_job(seen);
      seen = generation.load();
      users.fetch_add(1);
      if (Job* j = job.load(); j && j->joined.fetch_add(1) < j->helpers) j->work();
      users.fetch_sub(1);
    }
  }

  // Until the generation moves on from `seen`: spinning, then asleep.
  void wait_for_job(uint64_t seen) {
    using clock = std::chrono::steady_clock;
    const auto until = clock::now() + std::chrono::microseconds(spin_microseconds.load(std::memory_order_relaxed));
    for (int k = 0; generation.load(std::memory_order_relaxed) == seen; ++k) {
      TP_PAUSE();
      if ((k & 63) == 63 && clock::now() > until) {
        std::unique_lock<std::mutex> g(lock);
        sleepers.fetch_add(1);
        wake.wait(g, [&] { return generation.load() != seen; });
        sleepers.fetch_sub(1);
        return;
      }
    }
  }

  void run(Job& j, bool wake_sleepers) {
    using clock = std::chrono::steady_clock;
    for (; workers < j.helpers; ++workers) std::thread([this] { worker(); }).detach();
    job.store(&j);
    generation.fetch_add(1);
    if (sleepers.load() > 0 && (wake_sleepers || clock::now().time_since_epoch().count() - last_end.load() < kRecentNs)) {
      std::lock_guard<std::mutex> g(lock);  // (a worker between its check and its wait sees the new generation)
      wake.notify_all();
    }
    j.work();
    while (j.done.load(std::memory_order_acquire) < j.n) TP_PAUSE();
    job.store(nullptr);
    while (users.load() > 0) TP_PAUSE();
    last_end.store(clock::now().time_since_epoch().count());
  }
};

// Never destroyed: detached workers may still spin on it at exit.
std::atomic<Pool*> the_pool{nullptr};
std::mutex pool_lock;

Pool* pool() {
  Pool* p = the_pool.load();
  if (p && p->pid == getpid()) return p;
  std::lock_guard<std::mutex> g(pool_lock);  // first use, or a forked child (the parent's workers are not here)
  p = the_pool.load();
  if (!p || p->pid != getpid()) the_pool.store(p = new Pool);
  return p;
}

void run_on_new_threads(Job& j) {
  std::vector<std::thread> threads;
  threads.reserve(j.helpers);
  for (int t = 0; t < j.helpers; ++t) threads.emplace_back([&j] { j.work(); });
  j.work();
  for (auto& t : threads) t.join();
}

// This thread's team (TeamScope), or null for the pool.
thread_local TeamRun team_run = nullptr;

}  // namespace

TeamScope::TeamScope(TeamRun run) : saved_(team_run) { team_run = run; }
TeamScope::~TeamScope() { team_run = saved_; }

void parallel_for_each(int n, int threads, void (*fn)(void*, int), void* ctx, bool wake) {
  Job j;
  j.fn = fn;
  j.ctx = ctx;
  j.n = n;
  j.helpers = std::max(0, std::min(n, threads) - 1);
  if (const TeamRun run = team_run; run && j.helpers > 0) {
    // Every member claims indices as the pool's workers do; `wake` does not apply: the
    // team's owner runs its own ops on it whatever their size, so its workers are
    // usually spinning. A nested call from fn takes the pool.
    TeamScope pool_inside(nullptr);
    run([](void* job) { static_cast<Job*>(job)->work(); }, &j, (unsigned)(j.helpers + 1), 0);
    if (j.error) std::rethrow_exception(j.error);
    return;
  }
  Pool* p = pool();
  if (p->busy.test_and_set()) {
    run_on_new_threads(j);
  } else {
    p->run(j, wake);
    p->busy.clear();
  }
  if (j.error) std::rethrow_exception(j.error);
}

}  // namespace tp
