// The library's persistent thread pool, shared by every thread that calls the library.
//
// Each top-level parallel_for is a job: the caller publishes it on the pool's list of jobs in
// flight, works on it itself as thread 0, and waits only for its own job's items. Idle workers
// join the in-flight job with the fewest helpers, so two server threads calling flex_attention at
// once share the machine instead of one of them running alone. Items are handed out one at a time
// from the job's atomic counter, so uneven items (causal q-tiles) balance themselves.
//
// Hazards handled here:
//  - thread ids: the kernels index per-thread scratch, sized by the num_threads() they read before
//    parallel_for, with the thread_id. A thread joining a job takes the job's next slot (the
//    caller has 0), so ids are unique within the job, and a job takes at most as many threads as
//    the count its caller last read (t_count_read), even if set_num_threads raised the count in
//    between: a call that started keeps the count it started with.
//  - nested: parallel_for called from inside an item runs inline on that thread with id 0 (the
//    nested call's own scratch). Waiting on the pool from inside an item could deadlock, and
//    helping other jobs while waiting could reuse an id whose scratch a suspended frame still owns.
//  - exceptions: an item's exception is caught where it ran and rethrown on the caller after every
//    item of the job has finished (the remaining items still run; they must not touch freed state).
//  - idle workers sleep on a condition variable; nothing spins.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "flexattn/detail/cpu/kernels.h"
#include "flexattn/tensor.h"
#include "flexattn/threads.h"

namespace flexattn::detail::cpu {
namespace {

int hardware_threads() {
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(std::min<unsigned>(hc, kMaxThreads));
}

// FLEXATTN_NUM_THREADS: a decimal integer in [1, kMaxThreads]; anything else (empty, garbage,
// trailing characters, < 1, too large) is ignored with one warning on stderr, and the hardware
// concurrency is used.
int read_thread_count() {
  const char* env = std::getenv("FLEXATTN_NUM_THREADS");
  if (env == nullptr) return hardware_threads();
  errno = 0;
  char* end = nullptr;
  const long n = std::strtol(env, &end, 10);
  if (end != env && *end == '\0' && errno == 0 && n >= 1 && n <= kMaxThreads) {
    return static_cast<int>(n);
  }
  std::fprintf(stderr,
               "flexattn: ignoring FLEXATTN_NUM_THREADS='%s' (expected an integer in [1, %d]); "
               "using %d threads\n",
               env, kMaxThreads, hardware_threads());
  return hardware_threads();
}

// True on a thread while it runs an item: parallel_for runs nested calls inline.
thread_local bool t_inside_item = false;
// The count num_threads() last returned on this thread outside an item (0: never asked), or the
// count this thread last set. A thread that read the count before another thread raised it keeps
// the old one for its parallel_for calls (even those, like the block-mask builds, that size
// nothing by it) until it reads the count again: safe, at worst fewer threads.
thread_local int t_count_read = 0;

struct Job {
  void (*fn)(void*, int64_t, int) = nullptr;
  void* ctx = nullptr;
  int64_t n = 0;
  int limit = 1;                // most threads on the job, the caller included
  std::atomic<int64_t> next{0};  // next item to hand out
  // Guarded by Pool::mu_:
  int slots = 1;    // ids handed out (the caller holds 0)
  int helpers = 0;  // workers inside the job now
  std::exception_ptr error;
  std::condition_variable done;  // helpers reached 0 after the job was withdrawn
  bool withdrawn = false;

  bool joinable() const {
    return !withdrawn && slots < limit && next.load(std::memory_order_relaxed) < n;
  }
};

class Pool {
 public:
  explicit Pool(int n) : count_(n), awake_(n - 1) { grow(n - 1); }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }

  int count() const { return count_.load(std::memory_order_acquire); }

  void set_count(int n) {
    std::lock_guard<std::mutex> resize(resize_mu_);
    {
      std::lock_guard<std::mutex> lk(mu_);
      count_.store(n, std::memory_order_release);
      awake_ = n - 1;
    }
    grow(n - 1);
    wake_.notify_all();  // parked workers re-check whether they are still wanted
  }

  // Runs every item of the job, the calling thread taking part as thread 0.
  void run(Job& job) {
    int awake, started;
    {
      std::lock_guard<std::mutex> lk(mu_);
      jobs_.push_back(&job);
      awake = awake_;
      started = static_cast<int>(workers_.size());
    }
    // Wake as many workers as can join; all of them if some are parked (notify_one could pick a
    // parked one, which would go back to sleep and leave the job a helper short).
    const int want = job.limit - 1;
    if (want >= awake || started > awake) {
      wake_.notify_all();
    } else {
      for (int i = 0; i < want; ++i) wake_.notify_one();
    }
    drain(job, 0);
    std::unique_lock<std::mutex> lk(mu_);
    jobs_.erase(std::find(jobs_.begin(), jobs_.end(), &job));
    job.withdrawn = true;
    job.done.wait(lk, [&] { return job.helpers == 0; });
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  // Starts workers until `want` exist (they are never stopped before the pool: lowering the count
  // parks the extra ones).
  void grow(int want) {
    std::lock_guard<std::mutex> lk(mu_);  // run() reads workers_.size()
    while (static_cast<int>(workers_.size()) < want) {
      const int index = static_cast<int>(workers_.size());
      workers_.emplace_back([this, index] { worker(index); });
    }
  }

  void drain(Job& job, int tid) {
    t_inside_item = true;
    for (;;) {
      const int64_t i = job.next.fetch_add(1, std::memory_order_relaxed);
      if (i >= job.n) break;
      try {
        job.fn(job.ctx, i, tid);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!job.error) job.error = std::current_exception();
      }
    }
    t_inside_item = false;
  }

  // The joinable job with the fewest threads on it, or nullptr. Caller holds mu_.
  Job* pick() const {
    Job* best = nullptr;
    for (Job* j : jobs_) {
      if (j->joinable() && (best == nullptr || j->slots < best->slots)) best = j;
    }
    return best;
  }

  void worker(int index) {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      Job* job = nullptr;
      wake_.wait(lk, [&] {
        if (stop_) return true;
        if (index >= awake_) return false;  // parked by a lower count
        job = pick();
        return job != nullptr;
      });
      if (stop_) return;
      const int tid = job->slots++;
      ++job->helpers;
      lk.unlock();
      drain(*job, tid);
      lk.lock();
      // The caller may destroy the job as soon as helpers reaches 0 and it holds mu_: notify
      // before releasing mu_, touch nothing afterwards.
      if (--job->helpers == 0 && job->withdrawn) job->done.notify_one();
    }
  }

  std::atomic<int> count_;
  std::mutex resize_mu_;  // one set_count at a time
  std::mutex mu_;
  std::condition_variable wake_;
  // Guarded by mu_:
  int awake_;                         // workers with index < awake_ take jobs
  std::vector<std::thread> workers_;  // started workers (index = position)
  std::vector<Job*> jobs_;            // jobs in flight, oldest first
  bool stop_ = false;
};

Pool& pool() {
  static Pool p(read_thread_count());
  return p;
}

void note_count_set(int n) {
  if (!t_inside_item) t_count_read = n;
}

}  // namespace

int num_threads() {
  const int n = pool().count();
  if (!t_inside_item) t_count_read = n;
  return n;
}

void parallel_for(int64_t n, void (*fn)(void* ctx, int64_t i, int thread_id), void* ctx) {
  if (n <= 0) return;
  int limit = 1;
  if (n > 1 && !t_inside_item) {
    Pool& p = pool();
    limit = p.count();
    if (t_count_read > 0) limit = std::min(limit, t_count_read);
  }
  if (limit <= 1) {
    // Serial, inline on the caller, with the pool's semantics: nested calls inline, every item
    // runs, the first exception is rethrown at the end.
    const bool outer = t_inside_item;
    t_inside_item = true;
    std::exception_ptr error;
    for (int64_t i = 0; i < n; ++i) {
      try {
        fn(ctx, i, 0);
      } catch (...) {
        if (!error) error = std::current_exception();
      }
    }
    t_inside_item = outer;
    if (error) std::rethrow_exception(error);
    return;
  }
  Job job;
  job.fn = fn;
  job.ctx = ctx;
  job.n = n;
  job.limit = static_cast<int>(std::min<int64_t>(limit, n));
  pool().run(job);
}

}  // namespace flexattn::detail::cpu

namespace flexattn {

void set_num_threads(int n) {
  if (n < 1 || n > kMaxThreads) {
    throw Error("flexattn::set_num_threads: n = " + std::to_string(n) + " is outside [1, " +
                std::to_string(kMaxThreads) + "]");
  }
  detail::cpu::pool().set_count(n);
  // This thread is between calls (outside an item): its next parallel_for may use n at once.
  detail::cpu::note_count_set(n);
}

int num_threads() { return detail::cpu::pool().count(); }

}  // namespace flexattn
