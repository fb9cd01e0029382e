#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <dlfcn.h>
#include <exception>
#include <stdexcept>
#include <mutex>
#include <thread>
#include <vector>

namespace slimrt {
namespace {

class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  // Runs task(i) for i in [0, ntasks); the caller runs task 0 and any task no worker claimed first.
  void run(int ntasks, const std::function<void(int)>& task) {
    std::unique_lock<std::mutex> busy(busy_mu_, std::try_to_lock);
    if (!busy.owns_lock()) {  // re-entrant or concurrent use: run serially, still correct
      for (int i = 0; i < ntasks; ++i) task(i);
      return;
    }
    ensure_workers(ntasks - 1);
    {
      std::lock_guard<std::mutex> lk(mu_);
      task_ = &task;
      ntasks_ = ntasks;
      next_.store(1);
      pending_.store(ntasks - 1);
      error_ = nullptr;
      ++generation_;
      gen_.store(generation_, std::memory_order_release);
    }
    cv_.notify_all();
    // The caller runs task 0, then claims whatever no worker has started yet: a worker that is slow
    // to wake (descheduled on a busy machine) then costs nothing instead of its whole chunk's wait.
    for (int i = 0; i < ntasks; i = next_.fetch_add(1)) {
      try {
        task(i);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!error_) error_ = std::current_exception();
      }
      if (i > 0) pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
    // Short spin, then sleep: chunks are usually balanced so the wait is brief.
    for (int spin = 0; pending_.load(std::memory_order_acquire) > 0 && spin < 20000; ++spin) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    }
    if (pending_.load(std::memory_order_acquire) > 0) {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, [&] { return pending_.load() == 0; });
    }
    std::exception_ptr err;
    {
      std::lock_guard<std::mutex> lk(mu_);
      task_ = nullptr;
      err = error_;
    }
    // A worker may still be between its last task and its next next_.fetch_add; if the next run
    // reset next_ before that, it would run this (by then dangling) task with the new run's index.
    // Wait until every worker that picked up this task has left its claim loop.
    while (active_.load(std::memory_order_acquire) > 0) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    }
    if (err) std::rethrow_exception(err);
  }

 private:
  void ensure_workers(int n) {
    while (static_cast<int>(workers_.size()) < n) workers_.emplace_back([this] { loop(); });
  }

  // While keep_warm's deadline lasts, spins for the next run instead of sleeping on the condition
  // variable. A decode step calls ~60 small kernels a few microseconds apart; a sleeping worker
  // costs a futex wake-up each (and on a VM the woken thread was often queued behind the caller on
  // the same core: two threads ran at one thread's speed, 12-layer decode kernels 4.8 ms vs 2.5 ms
  // spinning). Only on request: between the kernels of an eager PyTorch forward, a spinning worker
  // holds the core PyTorch's own OpenMP threads need (a 32-token prefill took 200-300 ms instead
  // of 25 ms with an unconditional 300 us spin). After kPauseUs the spin also yields between checks.
  void spin_for_next_run(uint64_t seen) const {
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    const auto yield_from = start + std::chrono::microseconds(kPauseUs);
    for (int i = 1; gen_.load(std::memory_order_acquire) == seen; ++i) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
      if (i % 64 == 0) {
        const auto now = clock::now();
        if (now.time_since_epoch().count() > warm_until_.load(std::memory_order_relaxed)) return;
        if (now > yield_from) std::this_thread::yield();
      }
    }
  }

 public:
  void keep_warm(int64_t us) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
    warm_until_.store(until.time_since_epoch().count(), std::memory_order_relaxed);
  }

 private:

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int)>* task;
      spin_for_next_run(seen);
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        task = task_;
        // Woken after the run it was woken for had already finished: touching next_ now could
        // steal an index from the next run (which would then wait for it forever).
        if (task == nullptr) continue;
        active_.fetch_add(1, std::memory_order_acq_rel);
      }
      for (;;) {
        int i = next_.fetch_add(1);
        if (i >= ntasks_) break;
        try {
          (*task)(i);
        } catch (...) {
          std::lock_guard<std::mutex> lk(mu_);
          if (!error_) error_ = std::current_exception();
        }
        if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
          std::lock_guard<std::mutex> lk(mu_);
          done_cv_.notify_all();
        }
      }
      active_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::mutex busy_mu_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* task_ = nullptr;
  int ntasks_ = 0;
  std::atomic<int> next_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> active_{0};  // workers inside their claim loop
  std::exception_ptr error_;
  uint64_t generation_ = 0;
  std::atomic<uint64_t> gen_{0};  // generation_, readable without the lock (the workers' spin)
  std::atomic<int64_t> warm_until_{0};  // steady_clock ticks; workers spin until then (keep_warm)
  static constexpr int kPauseUs = 30;
  bool stop_ = false;
};

Pool& pool() {
  static Pool* p = new Pool();  // leaked on purpose: no join ordering problems at interpreter exit
  return *p;
}

// libgomp's entry for `#pragma omp parallel num_threads(n)`: runs fn(data) on a team of n threads,
// the caller included, and returns after all of them (LLVM's libomp exports the same entry).
using GompParallel = void (*)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);

struct OpenMP {
  GompParallel parallel = nullptr;
  std::string path;
};
std::atomic<const OpenMP*> g_openmp{nullptr};  // null: the own pool; set once per runtime, leaked

// One OpenMP run: the team's threads claim task indices from `next` until none are left, so a
// thread the OS is slow to schedule costs nothing, and a team smaller than asked still covers all.
struct OmpRun {
  const std::function<void(int)>* task;
  int ntasks;
  std::atomic<int> next{0};
  std::mutex mu;
  std::exception_ptr error;
};

void omp_body(void* p) {
  auto* run = static_cast<OmpRun*>(p);
  for (int i = run->next.fetch_add(1); i < run->ntasks; i = run->next.fetch_add(1)) {
    try {
      (*run->task)(i);
    } catch (...) {  // an exception must not leave an OpenMP thread: kept, rethrown by the caller
      std::lock_guard<std::mutex> lk(run->mu);
      if (!run->error) run->error = std::current_exception();
    }
  }
}

void run_tasks(int ntasks, const std::function<void(int)>& task) {
  if (const OpenMP* omp = g_openmp.load(std::memory_order_acquire)) {
    OmpRun run;
    run.task = &task;
    run.ntasks = ntasks;
    omp->parallel(omp_body, &run, static_cast<unsigned>(ntasks), 0);
    if (run.error) std::rethrow_exception(run.error);
    return;
  }
  pool().run(ntasks, task);
}

}  // namespace

void parallel_keep_warm(int64_t microseconds) {
  if (g_openmp.load(std::memory_order_acquire) == nullptr) pool().keep_warm(microseconds);
}

std::string use_openmp_runtime(const std::string& anchor) {
  // RTLD_NOLOAD: only a library that is already in the process (never load a second runtime).
  void* lib = dlopen(anchor.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  if (lib == nullptr) throw std::runtime_error("use_openmp_runtime: '" + anchor + "' is not loaded in this process");
  // dlsym on a handle searches the library and then its dependencies: the GOMP_parallel that the
  // anchor's own OpenMP calls go to, even when other OpenMP runtimes are loaded beside it.
  void* sym = dlsym(lib, "GOMP_parallel");
  dlclose(lib);  // drops the reference NOLOAD took; the library stays loaded by its owner
  if (sym == nullptr) throw std::runtime_error("use_openmp_runtime: '" + anchor + "' uses no OpenMP runtime (no GOMP_parallel)");
  Dl_info where{};
  auto* omp = new OpenMP();
  omp->parallel = reinterpret_cast<GompParallel>(sym);
  omp->path = dladdr(sym, &where) != 0 && where.dli_fname != nullptr ? where.dli_fname : "";
  g_openmp.store(omp, std::memory_order_release);  // the previous one leaks: a few bytes, once
  return omp->path;
}

void use_own_pool() { g_openmp.store(nullptr, std::memory_order_release); }

std::string parallel_runtime() { return g_openmp.load() != nullptr ? "openmp" : "pool"; }

std::string parallel_runtime_path() {
  const OpenMP* omp = g_openmp.load();
  return omp != nullptr ? omp->path : "";
}

void parallel_for(int64_t n, int num_threads, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t units = (n + grain - 1) / grain;
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, units)));
  if (nt == 1) {
    fn(0, n);
    return;
  }
  const int64_t per = (units + nt - 1) / nt;
  run_tasks(nt, [&](int t) {
    const int64_t b = std::min(n, t * per * grain), e = std::min(n, (t + 1) * per * grain);
    if (b < e) fn(b, e);
  });
}

}  // namespace slimrt
