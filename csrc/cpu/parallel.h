/* parallel.h: the CPU library's thread team, a static parallel-for on raw pthreads.
 *
 * This header owns how a CPU loop is split across threads: [0, count) is cut into `threads` contiguous
 * ranges of count/threads iterations, the first count%threads ranges one longer (the partition of OpenMP's
 * schedule(static)). The caller passes the thread count (torch.get_num_threads()); the calling thread runs
 * the first range. Every loop parallelised here has independent iterations, so the bits do not depend on the
 * thread count or on which thread ran which range. cpu/parallel.cpp owns the threads that run the other ranges:
 * torch's own OpenMP team when the process has one (looked up, not linked), else a persistent team of the
 * library's own on POSIX, threads per call on Windows.
 *
 * Why not link OpenMP: libgomp.so.1 is not on every Linux (a minbase Debian has none) and is outside manylinux's
 * library whitelist, so the wheel would have to graft a second OpenMP runtime beside torch's own. Why not
 * std::thread: libstdc++ starts it through std::thread::_M_start_thread, GLIBCXX_3.4.22, newer than what
 * manylinux2014 allows (3.4.19); pthread_create is in every glibc. Windows uses its own threads (CreateThread). */
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kbit {

template <class F>
struct ParallelRange {
  const F* body;
  int64_t begin;
  int64_t end;
};

/* Range `index` of the array `ranges` (ParallelRange<F>[team]): the one place a range's body is called (not
 * inlined: one copy of the loop serves every thread). */
template <class F>
#if defined(__GNUC__)
__attribute__((noinline))
#endif
void run_range_at(const void* ranges, size_t index) {
  const ParallelRange<F>& r = static_cast<const ParallelRange<F>*>(ranges)[index];
  (*r.body)(r.begin, r.end);
}

using RangeTask = void (*)(const void* ranges, size_t index);

/* task(ranges, i) for every i in [0, team): 0 on the calling thread, the others on the library's worker threads
 * (cpu/parallel.cpp), returning when all have finished. A range whose thread cannot run it (the system refused to
 * start one, or the team is busy with another caller's loop and a thread could not be started for this one) runs
 * on the calling thread: fewer threads, the same bits. An exception thrown by any range is thrown again here (as
 * a std::exception with its text), after every range has finished (the ranges live in the caller's frame). */
void run_team(size_t team, RangeTask task, const void* ranges);

/* The kbit_cpu_threads_kind of the threads the next loop runs on (kbit.h); for torch's OpenMP team, the file of
 * its runtime into where (capacity bytes, NUL-terminated, truncated), else "". */
int32_t cpu_threads_kind(char* where, size_t capacity);

/* How many of the caller's `threads` are worth using for `elements` elements of work. Waking a waiting worker
 * costs a few microseconds (starting a thread, when no team is waiting, about 10-30 us), some 4K elements of a
 * quantize round trip, so a thread is added only for every kMinElementsPerThread elements: small calls (an
 * optimizer over many small parameters) stay on the calling thread. The split never changes the bits (see above). */
constexpr int64_t kMinElementsPerThread = 16384;
inline int32_t team_for(int64_t elements, int32_t threads) {
  const int64_t useful = elements / kMinElementsPerThread;
  if (threads < 1 || useful < 1) return 1;
  return useful < threads ? static_cast<int32_t>(useful) : threads;
}

/* body(begin, end) once per thread's range, for per-thread setup (a scratch buffer, a store fence). */
template <class F>
void parallel_ranges(int64_t count, int32_t threads, const F& body) {
  if (count <= 0) return;
  const int64_t team = threads < 1 ? 1 : (threads < count ? threads : count);
  std::vector<ParallelRange<F>> ranges(static_cast<size_t>(team));
  const int64_t share = count / team, longer = count % team;
  for (int64_t t = 0, begin = 0; t < team; ++t) {
    const int64_t len = share + (t < longer ? 1 : 0);
    ranges[static_cast<size_t>(t)] = ParallelRange<F>{&body, begin, begin + len};
    begin += len;
  }
  if (team == 1) {
    run_range_at<F>(ranges.data(), 0);
    return;
  }
  run_team(ranges.size(), &run_range_at<F>, ranges.data());
}

/* body(i) for every i in [0, count), split as parallel_ranges does. */
template <class F>
void parallel_for(int64_t count, int32_t threads, const F& body) {
  parallel_ranges(count, threads, [&body](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body(i);
  });
}

}  // namespace kbit
