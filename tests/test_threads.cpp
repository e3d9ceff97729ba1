// The CPU thread pool (src/cpu/threads.cpp) and the thread-count setting (flexattn/threads.h):
// concurrent callers really share the pool, thread ids stay unique within a job and below the
// count the caller read, nested calls and exceptions, set_num_threads / FLEXATTN_NUM_THREADS, and
// library calls from several threads at once against the float64 reference and against a serial
// run bit for bit.
//
// Overlap is observed with rendezvous points (every participant waits for all the others), never
// with timings; the only clock is a 120 s guard that turns a deadlock into a failure.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include <flexattn/flexattn.h>

#include "attn_check.h"

namespace flexattn::testing {
namespace {

namespace cpu = flexattn::detail::cpu;

// Restores the thread count a test changed.
struct ThreadCountGuard {
  int saved = flexattn::num_threads();
  ~ThreadCountGuard() { flexattn::set_num_threads(saved); }
};

// A rendezvous of `n` arrivals; wait() is false when the others did not come within the guard.
class Rendezvous {
 public:
  explicit Rendezvous(int n) : left_(n) {}
  bool arrive_and_wait() {
    std::unique_lock<std::mutex> lk(mu_);
    if (--left_ <= 0) {
      cv_.notify_all();
      return true;
    }
    return cv_.wait_for(lk, std::chrono::seconds(120), [&] { return left_ <= 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int left_;
};

TEST(Threads, SetNumThreadsRangeAndErrors) {
  ThreadCountGuard guard;
  EXPECT_GE(flexattn::num_threads(), 1);
  flexattn::set_num_threads(3);
  EXPECT_EQ(flexattn::num_threads(), 3);
  EXPECT_EQ(cpu::num_threads(), 3);
  for (int bad : {0, -1, kMaxThreads + 1}) {
    EXPECT_THROW(flexattn::set_num_threads(bad), flexattn::Error) << bad;
    EXPECT_EQ(flexattn::num_threads(), 3) << "a rejected count must change nothing";
  }
  flexattn::set_num_threads(1);
  EXPECT_EQ(flexattn::num_threads(), 1);
  std::vector<int> ids;  // serial: every item on the caller with id 0
  const std::thread::id me = std::this_thread::get_id();
  bool all_here = true;
  cpu::parallel_for(50, [&](int64_t, int t) {
    ids.push_back(t);
    all_here = all_here && std::this_thread::get_id() == me;
  });
  EXPECT_EQ(ids, std::vector<int>(50, 0));
  EXPECT_TRUE(all_here);
}

// Two callers' jobs run at the same time, each with a pool worker: every job has 2 items, and each
// item waits until all 4 items (2 per job) are running. The caller runs one item of its job and
// blocks in it, so the other item must be on a worker; with one job at a time on the pool the
// second job would run inline on its caller alone and the rendezvous could never complete.
TEST(Threads, ConcurrentCallersShareThePool) {
  ThreadCountGuard guard;
  flexattn::set_num_threads(4);  // caller + 3 workers
  Rendezvous all(4);
  std::atomic<int> missed{0};
  std::atomic<int> bad_ids{0};
  auto caller = [&] {
    std::atomic<int> seen[2] = {0, 0};
    const int threads = cpu::num_threads();
    cpu::parallel_for(2, [&](int64_t, int t) {
      if (t < 0 || t >= threads || t >= 2 || seen[t].fetch_add(1) != 0) ++bad_ids;
      if (!all.arrive_and_wait()) ++missed;
    });
  };
  std::thread a(caller), b(caller);
  a.join();
  b.join();
  EXPECT_EQ(missed.load(), 0) << "the two callers' jobs did not run on the pool at the same time";
  EXPECT_EQ(bad_ids.load(), 0);
}

// Many callers at once, uneven items: every item runs exactly once, and no id is used by two
// threads of the same job at the same moment.
TEST(Threads, IdsUniqueWithinEachJob) {
  ThreadCountGuard guard;
  flexattn::set_num_threads(5);
  constexpr int kCallers = 4, kItems = 300;
  std::atomic<int> errors{0};
  auto caller = [&](int c) {
    for (int round = 0; round < 5; ++round) {
      const int threads = cpu::num_threads();
      std::vector<std::atomic<int>> busy(static_cast<size_t>(threads));
      std::vector<std::atomic<int>> ran(kItems);
      cpu::parallel_for(kItems, [&](int64_t i, int t) {
        if (t < 0 || t >= threads) {
          ++errors;
          return;
        }
        if (busy[size_t(t)].exchange(1) != 0) ++errors;
        volatile double x = 0;
        for (int k = 0; k < 200 * int((i * 7 + c) % 13); ++k) x = x + 1.0;
        std::this_thread::yield();
        busy[size_t(t)].store(0);
        ran[size_t(i)].fetch_add(1);
      });
      for (auto& r : ran) errors += r.load() != 1;
    }
  };
  std::vector<std::thread> ts;
  for (int c = 0; c < kCallers; ++c) ts.emplace_back(caller, c);
  for (auto& t : ts) t.join();
  EXPECT_EQ(errors.load(), 0);
}

// A call that read the count keeps it: raising the count before its parallel_for does not hand
// out ids beyond what it sized its scratch for; the next call that reads the count gets the new
// one.
TEST(Threads, RunningCallKeepsItsCount) {
  ThreadCountGuard guard;
  flexattn::set_num_threads(2);
  const int read = cpu::num_threads();
  ASSERT_EQ(read, 2);
  std::thread([] { flexattn::set_num_threads(8); }).join();
  std::atomic<int> max_id{0};
  auto record = [&](int64_t, int t) {
    int m = max_id.load();
    while (t > m && !max_id.compare_exchange_weak(m, t)) {
    }
    std::this_thread::yield();
  };
  for (int rep = 0; rep < 20; ++rep)
    cpu::parallel_for(64, [&](int64_t i, int t) { record(i, t); });
  EXPECT_LT(max_id.load(), read);
  EXPECT_EQ(cpu::num_threads(), 8);
  // Lowering takes effect at once: fewer ids is always safe.
  flexattn::set_num_threads(1);
  max_id = 0;
  cpu::parallel_for(64, [&](int64_t i, int t) { record(i, t); });
  EXPECT_EQ(max_id.load(), 0);
}

// parallel_for from inside items (on workers and on the caller, from two callers at once) runs
// inline and completes; every nested item runs once with id 0.
TEST(Threads, NestedCallsDoNotDeadlock) {
  ThreadCountGuard guard;
  flexattn::set_num_threads(4);
  std::atomic<int> inner_runs{0}, bad{0};
  auto caller = [&] {
    cpu::parallel_for(16, [&](int64_t, int) {
      cpu::parallel_for(8, [&](int64_t, int t) {
        bad += t != 0;
        cpu::parallel_for(2, [&](int64_t, int) { ++inner_runs; });
      });
    });
  };
  std::thread a(caller), b(caller);
  a.join();
  b.join();
  EXPECT_EQ(inner_runs.load(), 2 * 16 * 8 * 2);
  EXPECT_EQ(bad.load(), 0);
}

// An item's exception reaches its own caller, after every item of that job ran; a concurrent
// caller's job is unaffected. Also in the serial (1 thread) path.
TEST(Threads, ExceptionsReachTheirCallerAfterAllItems) {
  ThreadCountGuard guard;
  for (int threads : {4, 1}) {
    flexattn::set_num_threads(threads);
    std::atomic<int> ran_bad{0}, ran_good{0};
    bool threw = false, good_threw = false;
    std::thread bad_caller([&] {
      try {
        cpu::parallel_for(100, [&](int64_t i, int) {
          ++ran_bad;
          if (i % 10 == 3) throw std::runtime_error("item " + std::to_string(i));
        });
      } catch (const std::runtime_error&) {
        threw = true;
      }
    });
    std::thread good_caller([&] {
      try {
        cpu::parallel_for(100, [&](int64_t, int) { ++ran_good; });
      } catch (...) {
        good_threw = true;
      }
    });
    bad_caller.join();
    good_caller.join();
    EXPECT_TRUE(threw) << threads;
    EXPECT_FALSE(good_threw) << threads;
    EXPECT_EQ(ran_bad.load(), 100) << "every item runs before the rethrow";
    EXPECT_EQ(ran_good.load(), 100);
  }
}

// FLEXATTN_NUM_THREADS is read when the pool starts, so each case runs in a fresh process
// (the threadsafe death-test style re-executes this binary).
TEST(ThreadsEnv, ValidAndInvalidValues) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const int hw = std::max(1, int(std::min(std::thread::hardware_concurrency(), 1024u)));
  auto expect_count = [&](const char* value, int expected, const char* stderr_regex) {
    setenv("FLEXATTN_NUM_THREADS", value, 1);
    EXPECT_EXIT(std::exit(flexattn::num_threads()), ::testing::ExitedWithCode(expected),
                stderr_regex)
        << "FLEXATTN_NUM_THREADS='" << value << "'";
  };
  expect_count("3", 3, "");
  expect_count("1", 1, "");
  for (const char* bad : {"0", "-2", "abc", "4x", "", "99999999999999999999", "1025"})
    expect_count(bad, hw, "ignoring FLEXATTN_NUM_THREADS");
  unsetenv("FLEXATTN_NUM_THREADS");
}

// ---- library calls from several threads at once -------------------------------------------------

TEST(ThreadsLibrary, ConcurrentCallsMatchTheReference) {
  ThreadCountGuard guard;
  flexattn::set_num_threads(3);
  Problem p;
  p.shape = {.B = 2, .Hq = 4, .Hkv = 2, .Lq = 150, .Lkv = 131, .D = 32, .Dv = 24};
  p.block_q = 32;
  p.block_kv = 48;
  std::vector<std::thread> ts;
  ts.emplace_back([&] { check_forward(p, noop_score(), causal()); });
  ts.emplace_back([&] { check_backward(p, softcap(20.0f), sliding_window(40)); });
  ts.emplace_back([&] {
    Problem q = p;
    q.dtype = DType::bf16;
    q.strided = true;
    check_backward(q, relative_position(), noop_mask());
  });
  for (auto& t : ts) t.join();
}

// The same inputs from four threads at once, several times each: outputs and gradients are bit
// for bit those of a call made alone (a thread id shared by two threads of one job, or scratch
// sized for fewer threads, would corrupt them).
TEST(ThreadsLibrary, ConcurrentCallsBitwiseEqualSerial) {
  ThreadCountGuard guard;
  flexattn::set_num_threads(4);
  const Shape sh{.B = 2, .Hq = 4, .Hkv = 4, .Lq = 200, .Lkv = 190, .D = 40, .Dv = 40};
  std::mt19937_64 rng(1234);
  const std::vector<float> q = random_input(sh.q_numel(), DType::f16, rng),
                           k = random_input(sh.k_numel(), DType::f16, rng),
                           v = random_input(sh.v_numel(), DType::f16, rng),
                           dout = random_input(sh.out_numel(), DType::f16, rng);
  const auto mask = create_block_mask(causal(), 1, 1, sh.Lq, sh.Lkv,
                                      {.block_q = 64, .block_kv = 32});
  struct Result {
    std::vector<unsigned char> out, lse, dq, dk, dv;
    bool operator==(const Result&) const = default;
  };
  auto run = [&] {
    const Operand qo = Operand::make({sh.B, sh.Hq, sh.Lq, sh.D}, DType::f16, false, &q);
    const Operand ko = Operand::make({sh.B, sh.Hkv, sh.Lkv, sh.D}, DType::f16, false, &k);
    const Operand vo = Operand::make({sh.B, sh.Hkv, sh.Lkv, sh.Dv}, DType::f16, false, &v);
    const Operand doo = Operand::make({sh.B, sh.Hq, sh.Lq, sh.Dv}, DType::f16, false, &dout);
    const Operand out = Operand::make({sh.B, sh.Hq, sh.Lq, sh.Dv}, DType::f16, false, nullptr);
    const Operand lse = Operand::make({sh.B, sh.Hq, sh.Lq}, DType::f32, false, nullptr);
    const Operand dq = Operand::make({sh.B, sh.Hq, sh.Lq, sh.D}, DType::f16, false, nullptr);
    const Operand dk = Operand::make({sh.B, sh.Hkv, sh.Lkv, sh.D}, DType::f16, false, nullptr);
    const Operand dv = Operand::make({sh.B, sh.Hkv, sh.Lkv, sh.Dv}, DType::f16, false, nullptr);
    flex_attention_into(qo.view, ko.view, vo.view, out.view, lse.view, alibi(4), mask);
    flex_attention_backward_into(qo.view, ko.view, vo.view, out.view, lse.view, doo.view, dq.view,
                                 dk.view, dv.view, alibi(4), mask);
    return Result{out.bytes(), lse.bytes(), dq.bytes(), dk.bytes(), dv.bytes()};
  };
  const Result alone = run();
  std::atomic<int> mismatches{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&] {
      for (int rep = 0; rep < 3; ++rep) mismatches += !(run() == alone);
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace flexattn::testing
