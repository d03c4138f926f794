/* parallel.h: the CPU library's thread team, a static parallel-for on raw pthreads.
 *
 * This header owns how a CPU loop is split across threads: [0, count) is cut into `threads` contiguous
 * ranges of count/threads iterations, the first count%threads ranges one longer (the partition of OpenMP's
 * schedule(static)). The caller passes the thread count (torch.get_num_threads()); the calling thread runs
 * the first range. Every loop parallelised here has independent iterations, so the bits do not depend on the
 * thread count or on which thread ran which range.
 *
 * Why not OpenMP: libgomp.so.1 is not on every Linux (a minbase Debian has none) and is outside manylinux's
 * library whitelist, so the wheel would have to graft a second OpenMP runtime beside torch's own. Why not
 * std::thread: libstdc++ starts it through std::thread::_M_start_thread, GLIBCXX_3.4.22, newer than what
 * manylinux2014 allows (3.4.19); pthread_create is in every glibc. Windows uses its own threads (CreateThread). */
#pragma once

#include <cstdint>
#include <vector>

#if defined(_WIN32)
#ifndef NOMINMAX
#define NOMINMAX  // keep std::min/std::max usable in the including file
#endif
#include <windows.h>
#else
#include <pthread.h>
#endif

namespace kbit {

template <class F>
struct ParallelRange {
  const F* body;
  int64_t begin;
  int64_t end;
};

/* The one place a range's body is called (not inlined: one copy of the loop serves every thread). */
template <class F>
#if defined(__GNUC__)
__attribute__((noinline))
#endif
void run_range(const ParallelRange<F>& r) {
  (*r.body)(r.begin, r.end);
}

#if defined(_WIN32)
using ThreadId = HANDLE;
template <class F>
DWORD WINAPI thread_main(void* arg) {
  run_range(*static_cast<const ParallelRange<F>*>(arg));
  return 0;
}
template <class F>
bool start_thread(ThreadId* id, ParallelRange<F>* r) {
  *id = CreateThread(nullptr, 0, &thread_main<F>, r, 0, nullptr);
  return *id != nullptr;
}
inline void join_thread(ThreadId id) {
  WaitForSingleObject(id, INFINITE);
  CloseHandle(id);
}
#else
using ThreadId = pthread_t;
template <class F>
void* thread_main(void* arg) {
  run_range(*static_cast<const ParallelRange<F>*>(arg));
  return nullptr;
}
template <class F>
bool start_thread(ThreadId* id, ParallelRange<F>* r) {
  return pthread_create(id, nullptr, &thread_main<F>, r) == 0;
}
inline void join_thread(ThreadId id) { pthread_join(id, nullptr); }
#endif

/* How many of the caller's `threads` are worth starting for `elements` elements of work. Starting and joining a
 * thread costs about 10 us, the time one thread takes for some 4K elements of a quantize round trip, so a thread
 * is added only for every kMinElementsPerThread elements: small calls (an optimizer over many small parameters)
 * stay on the calling thread instead of paying for a team. The split never changes the bits (see above). */
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
  std::vector<ThreadId> ids(static_cast<size_t>(team));
  std::vector<char> started(static_cast<size_t>(team), 0);
  for (size_t t = 1; t < ranges.size(); ++t) started[t] = start_thread(&ids[t], &ranges[t]);
  run_range(ranges[0]);
  // a thread the system refused to start (EAGAIN) has its range run here: fewer threads, the same bits
  for (size_t t = 1; t < ranges.size(); ++t) {
    if (started[t]) {
      join_thread(ids[t]);
    } else {
      run_range(ranges[t]);
    }
  }
}

/* body(i) for every i in [0, count), split as parallel_ranges does. */
template <class F>
void parallel_for(int64_t count, int32_t threads, const F& body) {
  parallel_ranges(count, threads, [&body](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body(i);
  });
}

}  // namespace kbit
