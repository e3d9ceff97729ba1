// The library's persistent thread pool: num_threads() - 1 workers started on first use, plus the
// calling thread, which always takes part as thread 0. Items are handed out one at a time from an
// atomic counter, so uneven items (causal q-tiles) balance themselves.
//
// Hazards handled here:
//  - parallel_for called from inside an item (nested) or while another thread's call holds the
//    pool runs inline on the caller: waiting for the pool from inside it would deadlock.
//  - an exception thrown by an item is caught on the worker and rethrown on the caller after every
//    item has finished (remaining items still run; they must not touch freed state).
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "flexattn/detail/cpu/kernels.h"

namespace flexattn::detail::cpu {
namespace {

int read_thread_count() {
  if (const char* env = std::getenv("FLEXATTN_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return n;
  }
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

thread_local bool t_inside_pool = false;

class Pool {
 public:
  explicit Pool(int n) : size_(n) {
    for (int t = 1; t < n; ++t) workers_.emplace_back([this, t] { worker(t); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }

  int size() const { return size_; }

  // Runs the job on the pool; returns false (having done nothing) when the pool is busy.
  bool try_run(int64_t n, void (*fn)(void*, int64_t, int), void* ctx) {
    std::unique_lock<std::mutex> call(call_mu_, std::try_to_lock);
    if (!call.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = fn;
      ctx_ = ctx;
      n_ = n;
      next_.store(0, std::memory_order_relaxed);
      active_ = static_cast<int>(workers_.size());
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    drain(0);
    std::unique_lock<std::mutex> lk(mu_);
    done_.wait(lk, [this] { return active_ == 0; });
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    return true;
  }

 private:
  void drain(int tid) {
    t_inside_pool = true;
    for (;;) {
      const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= n_) break;
      try {
        fn_(ctx_, i, tid);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!error_) error_ = std::current_exception();
      }
    }
    t_inside_pool = false;
  }

  void worker(int tid) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        wake_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      drain(tid);
      std::lock_guard<std::mutex> lk(mu_);
      if (--active_ == 0) done_.notify_one();
    }
  }

  const int size_;
  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // one parallel_for at a time on the pool
  std::mutex mu_;
  std::condition_variable wake_, done_;
  uint64_t generation_ = 0;
  bool stop_ = false;
  int active_ = 0;
  void (*fn_)(void*, int64_t, int) = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
};

Pool& pool() {
  static Pool p(read_thread_count());
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }

void parallel_for(int64_t n, void (*fn)(void* ctx, int64_t i, int thread_id), void* ctx) {
  if (n <= 0) return;
  if (n == 1 || t_inside_pool || pool().size() == 1 || !pool().try_run(n, fn, ctx)) {
    for (int64_t i = 0; i < n; ++i) fn(ctx, i, 0);
  }
}

}  // namespace flexattn::detail::cpu
