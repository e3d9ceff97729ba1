// The CPU backend's thread count. Every CPU call (flex_attention, flex_attention_backward,
// create_block_mask) runs on one pool of worker threads shared by the whole process; the calling
// thread always works on its own call too.
//
//   FLEXATTN_NUM_THREADS=n   read once, when the pool starts (the first CPU call or the first of
//                            these functions): a decimal integer in [1, kMaxThreads]. Anything
//                            else (empty, not a number, trailing characters, < 1, too large) is
//                            ignored with one warning on stderr. Unset or ignored: the hardware
//                            concurrency (std::thread::hardware_concurrency(), at least 1).
//
// Concurrency: calls from several threads at once run at the same time, sharing the workers
// (idle workers join the running call with the fewest threads); each call waits only for its own
// work. A call made from inside a user functor that the pool is running (nested) runs serially on
// that thread.
#pragma once

namespace flexattn {

// The largest thread count set_num_threads and FLEXATTN_NUM_THREADS accept.
inline constexpr int kMaxThreads = 1024;

// Sets the number of threads a CPU call uses, the calling thread included: n = 1 runs every call
// serially on its caller. Throws flexattn::Error (changing nothing) unless 1 <= n <= kMaxThreads.
// Thread-safe, and may be called while other threads are inside CPU calls: a call already running
// finishes with the count it started with; calls that start after set_num_threads returns use n.
// Raising the count starts workers; lowering it parks the extra ones (asleep, not stopped).
void set_num_threads(int n);

// The thread count CPU calls use now: the last set_num_threads, else FLEXATTN_NUM_THREADS, else
// the hardware concurrency.
int num_threads();

}  // namespace flexattn
