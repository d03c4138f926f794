/* parallel.cpp: the threads that run parallel.h's ranges (run_team).
 *
 * POSIX, torch loaded: torch's OpenMP team (host_openmp below). kbit's loops and torch's run on the same threads,
 * so neither waits for a core the other's idle threads are polling on.
 *
 * POSIX, no OpenMP in the process: a persistent team. Workers are started the first time a loop needs them and
 * then wait for the next loop: a worker that has just finished polls for a while (a model calls kbit once per
 * layer, tens of microseconds apart; see spin_until), then sleeps on its condition variable. Starting and joining
 * a pthread per call cost more than that: a 4096x4096 batch-1 gemv_4bit layer took 0.60 ms with a thread started
 * per call and 0.51 ms with the team (2 threads, a stack of layers larger than the last-level cache). One caller
 * owns the team at a time; a second caller that finds it busy (two Python threads in kbit at once: ctypes releases
 * the GIL) starts threads for its own loop, as every loop did before. After fork() the child has none of the
 * parent's threads (its OpenMP team's neither): an atfork handler forgets them, and the child's first loop starts
 * a team of its own. Workers block every signal, so signals reach the threads that expect them.
 *
 * Windows: a thread per range per call (CreateThread), joined before run_team returns. */
#include "cpu/parallel.h"

#include "kbit.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>

#if defined(_WIN32)
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>
#else
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#endif

namespace kbit {
namespace {

/* What a range threw, kept for the calling thread (not as a std::exception_ptr: GCC 12 builds that on
 * CXXABI_1.3.13 symbols, newer than manylinux2014's libstdc++ allows). */
struct RangeFailure {
  bool failed = false;
  char what[160] = {};
};

/* The exception run_team throws on the calling thread: the text of the first failed range's exception. */
class RangeError : public std::exception {
 public:
  explicit RangeError(const RangeFailure& f) noexcept : failure_(f) {}
  const char* what() const noexcept override { return failure_.what; }

 private:
  RangeFailure failure_;
};

void record(RangeFailure& f, const char* what) noexcept {
  f.failed = true;
  std::snprintf(f.what, sizeof f.what, "%s", what);
}

/* Range `index`; an exception it throws is recorded in failures[index]. */
void run_guarded(RangeTask task, const void* ranges, size_t index, RangeFailure* failures) noexcept {
  try {
    task(ranges, index);
  } catch (const std::exception& e) {
    record(failures[index], e.what());
  } catch (...) {
    record(failures[index], "unknown C++ exception");
  }
}

void rethrow_first(const std::vector<RangeFailure>& failures) {
  for (const RangeFailure& f : failures)
    if (f.failed) throw RangeError(f);
}

// ------------------------------------------------------------------------------------------ a thread per range

struct Call {
  RangeTask task;
  const void* ranges;
  size_t index;
  RangeFailure* errors;
};

#if defined(_WIN32)
using ThreadId = HANDLE;
DWORD WINAPI call_main(void* arg) {
  const Call* c = static_cast<const Call*>(arg);
  run_guarded(c->task, c->ranges, c->index, c->errors);
  return 0;
}
bool start_call(ThreadId* id, Call* c) {
  *id = CreateThread(nullptr, 0, &call_main, c, 0, nullptr);
  return *id != nullptr;
}
void join_call(ThreadId id) {
  WaitForSingleObject(id, INFINITE);
  CloseHandle(id);
}
#else
using ThreadId = pthread_t;
void* call_main(void* arg) {
  const Call* c = static_cast<const Call*>(arg);
  run_guarded(c->task, c->ranges, c->index, c->errors);
  return nullptr;
}
bool start_call(ThreadId* id, Call* c) { return pthread_create(id, nullptr, &call_main, c) == 0; }
void join_call(ThreadId id) { pthread_join(id, nullptr); }
#endif

/* Ranges 1.. on threads started for this call, range 0 here; a range whose thread did not start runs here. */
void run_with_new_threads(size_t team, RangeTask task, const void* ranges, std::vector<RangeFailure>& errors) {
  std::vector<Call> calls(team);
  std::vector<ThreadId> ids(team);
  std::vector<char> started(team, 0);
  for (size_t t = 1; t < team; ++t) {
    calls[t] = Call{task, ranges, t, errors.data()};
    started[t] = start_call(&ids[t], &calls[t]);
  }
  run_guarded(task, ranges, 0, errors.data());
  for (size_t t = 1; t < team; ++t) {
    if (started[t]) {
      join_call(ids[t]);
    } else {
      run_guarded(task, ranges, t, errors.data());
    }
  }
}

#if !defined(_WIN32)
// ------------------------------------------------------------------------------------------ the persistent team

/* How long a waiting thread polls before it sleeps: kSpinNanoseconds with the CPU's pause hint, then up to
 * kPoliteNanoseconds more giving its core away (sched_yield) between polls, so that a torch loop run between two
 * kbit calls is not slowed by a worker that waits for the next one. Measured on 2 cores (Linear4bit stacks,
 * batch 1..256): without the polite phase a batch-1 layer waits for a sleeping worker to be woken; pure spinning
 * for 0.5 ms made batch 1 twice as slow (the worker took the core torch's own threads needed). */
constexpr int64_t kSpinNanoseconds = 20000;
constexpr int64_t kPoliteNanoseconds = 300000;

/* std::chrono rather than clock_gettime: glibc versioned clock_gettime at 2.17 (it left librt), and the
 * library's only other glibc needs are 2.3 or older; libstdc++'s steady_clock is GLIBCXX_3.4.19, in manylinux2014. */
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Poll ready() as described above, for at most kSpinNanoseconds + kPoliteNanoseconds; returns ready(). */
template <class Ready>
bool spin_until(const Ready& ready) {
  const int64_t start = now_ns();
  for (int i = 1;; ++i) {
    if (ready()) return true;
    cpu_relax();
    if ((i & 63) == 0 && now_ns() - start > kSpinNanoseconds) break;
  }
  while (now_ns() - start < kSpinNanoseconds + kPoliteNanoseconds) {
    if (ready()) return true;
    sched_yield();
  }
  return ready();
}

class Team;

/* One worker: it runs range `index` of the owner's loop each time `ticket` moves past `seen`. */
struct Worker {
  Team* team;
  size_t index;
  std::atomic<uint64_t> ticket{0};
  std::atomic<bool> sleeping{false};
  pthread_cond_t wake;
  pthread_t thread;
};

class Team {
 public:
  Team() {
    pthread_mutex_init(&owner_, nullptr);
    pthread_mutex_init(&lock_, nullptr);
    pthread_cond_init(&done_, nullptr);
  }

  /* A static object: at exit (or dlclose) idle workers are stopped and joined. A loop still running in another
   * thread keeps its workers (they are left to the exiting process). */
  ~Team() {
    if (pthread_mutex_trylock(&owner_) != 0) {
      for (auto& w : workers_) w.release();  // still in use by the running loop's workers: never freed
      return;
    }
    pthread_mutex_lock(&lock_);
    stop_.store(true);
    for (auto& w : workers_) pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&lock_);
    for (auto& w : workers_) pthread_join(w->thread, nullptr);
    pthread_mutex_unlock(&owner_);
  }

  /* Ranges 1..team-1 on the workers, range 0 here. False (nothing run) when another caller owns the team. */
  bool run(size_t team, RangeTask task, const void* ranges, std::vector<RangeFailure>& errors) {
    if (pthread_mutex_trylock(&owner_) != 0) return false;
    const size_t ready = grow(team - 1);
    task_ = task;
    ranges_ = ranges;
    errors_ = errors.data();
    pending_.store(ready);
    for (size_t i = 0; i < ready; ++i) post(*workers_[i]);
    run_guarded(task, ranges, 0, errors.data());
    for (size_t t = ready + 1; t < team; ++t) run_guarded(task, ranges, t, errors.data());  // no worker for these
    wait_done();
    pthread_mutex_unlock(&owner_);
    return true;
  }

  /* In the child of fork(): the parent's workers do not exist here. Their records are leaked, not destroyed (a
   * condition variable a parent thread waited on cannot be destroyed safely), and the locks are made anew. */
  void forget_after_fork() {
    for (auto& w : workers_) w.release();
    workers_.clear();
    pthread_mutex_init(&owner_, nullptr);
    pthread_mutex_init(&lock_, nullptr);
    pthread_cond_init(&done_, nullptr);
    pending_.store(0);
    caller_sleeping_.store(false);
  }

 private:
  /* At least `count` workers if the system starts them; returns how many there are, at most `count`. */
  size_t grow(size_t count) {
    if (workers_.size() < count) {
      sigset_t all, previous;
      sigfillset(&all);
      pthread_sigmask(SIG_SETMASK, &all, &previous);  // workers inherit a mask that blocks every signal
      while (workers_.size() < count) {
        std::unique_ptr<Worker> w(new Worker());
        w->team = this;
        w->index = workers_.size() + 1;
        pthread_cond_init(&w->wake, nullptr);
        if (pthread_create(&w->thread, nullptr, &Team::worker_main, w.get()) != 0) {
          pthread_cond_destroy(&w->wake);
          break;
        }
        workers_.push_back(std::move(w));
      }
      pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    }
    return workers_.size() < count ? workers_.size() : count;
  }

  void post(Worker& w) {
    w.ticket.fetch_add(1);  // seq_cst, as sleeping: either the worker sees the ticket or this sees it asleep
    if (w.sleeping.load()) {
      pthread_mutex_lock(&lock_);
      pthread_cond_signal(&w.wake);
      pthread_mutex_unlock(&lock_);
    }
  }

  void wait_done() {
    if (spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) return;
    pthread_mutex_lock(&lock_);
    caller_sleeping_.store(true);
    while (pending_.load() != 0) pthread_cond_wait(&done_, &lock_);
    caller_sleeping_.store(false);
    pthread_mutex_unlock(&lock_);
  }

  void finished() {
    if (pending_.fetch_sub(1) == 1 && caller_sleeping_.load()) {
      pthread_mutex_lock(&lock_);
      pthread_cond_signal(&done_);
      pthread_mutex_unlock(&lock_);
    }
  }

  static void* worker_main(void* arg) {
    Worker& w = *static_cast<Worker*>(arg);
    Team& team = *w.team;
    uint64_t seen = 0;
    for (;;) {
      const auto posted = [&] { return w.ticket.load(std::memory_order_acquire) != seen; };
      if (!spin_until(posted)) {
        pthread_mutex_lock(&team.lock_);
        w.sleeping.store(true);
        while (!posted() && !team.stop_.load()) pthread_cond_wait(&w.wake, &team.lock_);
        w.sleeping.store(false);
        pthread_mutex_unlock(&team.lock_);
      }
      if (team.stop_.load()) return nullptr;
      seen = w.ticket.load(std::memory_order_acquire);
      run_guarded(team.task_, team.ranges_, w.index, team.errors_);
      team.finished();
    }
  }

  pthread_mutex_t owner_;  // held by the caller whose loop the team runs
  pthread_mutex_t lock_;   // for sleeping and waking
  pthread_cond_t done_;
  std::atomic<size_t> pending_{0};
  std::atomic<bool> caller_sleeping_{false};
  std::atomic<bool> stop_{false};
  RangeTask task_ = nullptr;
  const void* ranges_ = nullptr;
  RangeFailure* errors_ = nullptr;
  std::vector<std::unique_ptr<Worker>> workers_;
};

// ------------------------------------------------------------------------------------------ torch's OpenMP team

/* The OpenMP runtime torch runs its own loops on (torch loads its libgomp into the process's global scope, through
 * libtorch_global_deps), found by its GNU entry points. When the process has one, kbit's ranges run on that team:
 * the threads torch has just used are the ones that run kbit's next loop. With a team of its own, kbit's threads
 * and torch's compete for the cores: libgomp's idle workers poll for a while after each torch loop (unless
 * OMP_WAIT_POLICY=PASSIVE), and on 2 cores a gemv_4bit layer run right after a torch loop (attention, an
 * elementwise op over 1M values) took twice as long (0.47 vs 0.23 ms, 4096x4096 nf4, batch 1). */
using GompParallel = void (*)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);
using OmpQuery = int (*)();

struct HostOpenMp {
  GompParallel parallel = nullptr;
  OmpQuery thread_num = nullptr;
  OmpQuery num_threads = nullptr;
};

std::atomic<bool> g_host_openmp_off{false};  // set in a forked child: its parent's OpenMP team is not its own

HostOpenMp find_host_openmp() {
  HostOpenMp o;
  o.parallel = reinterpret_cast<GompParallel>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
  o.thread_num = reinterpret_cast<OmpQuery>(dlsym(RTLD_DEFAULT, "omp_get_thread_num"));
  o.num_threads = reinterpret_cast<OmpQuery>(dlsym(RTLD_DEFAULT, "omp_get_num_threads"));
  if (!o.parallel || !o.thread_num || !o.num_threads) o = HostOpenMp{};
  return o;
}

/* The process's OpenMP runtime, or null. Looked up once, at the first loop: kbit's Python imports torch before it
 * loads the library, so torch's runtime is there by then (a process without one pays no lookup per loop). */
const HostOpenMp* host_openmp() {
  static const HostOpenMp found = find_host_openmp();
  if (g_host_openmp_off.load(std::memory_order_relaxed) || found.parallel == nullptr) return nullptr;
  return &found;
}

struct OpenMpCall {
  const HostOpenMp* omp;
  RangeTask task;
  const void* ranges;
  size_t team;
  RangeFailure* errors;
};

/* One OpenMP thread's share: ranges tid, tid + n, ... (n = the team the runtime gave, which may be smaller than
 * asked for: inside another parallel region it is 1, and the calling thread runs every range). */
void openmp_body(void* arg) {
  const OpenMpCall& c = *static_cast<const OpenMpCall*>(arg);
  const int n = c.omp->num_threads(), tid = c.omp->thread_num();
  const size_t step = n > 0 ? static_cast<size_t>(n) : 1;
  for (size_t i = tid > 0 ? static_cast<size_t>(tid) : 0; i < c.team; i += step)
    run_guarded(c.task, c.ranges, i, c.errors);
}

bool run_on_host_openmp(size_t team, RangeTask task, const void* ranges, std::vector<RangeFailure>& errors) {
  const HostOpenMp* omp = host_openmp();
  if (omp == nullptr) return false;
  OpenMpCall call{omp, task, ranges, team, errors.data()};
  omp->parallel(&openmp_body, &call, static_cast<unsigned>(team), 0);
  return true;
}

Team& the_team();

/* In the child of fork(): neither the parent's workers nor its OpenMP team's threads exist there (libgomp's
 * pool would wait for them), so the child's loops use a team of its own, started by its first loop. */
void after_fork_in_child() {
  g_host_openmp_off.store(true);
  the_team().forget_after_fork();
}

Team& the_team() {
  static Team team;
  return team;
}

/* Registered when the library is loaded, so that a child forked before kbit's first loop knows it is one. */
const bool g_fork_handler_registered = (pthread_atfork(nullptr, nullptr, &after_fork_in_child) == 0);
#endif

}  // namespace

int32_t cpu_threads_kind(char* where, size_t capacity) {
  if (where != nullptr && capacity > 0) where[0] = '\0';
#if defined(_WIN32)
  return KBIT_THREADS_PER_CALL;
#else
  const HostOpenMp* omp = host_openmp();
  if (omp == nullptr) return KBIT_THREADS_OWN_TEAM;
  Dl_info info;
  if (where != nullptr && capacity > 0 && dladdr(reinterpret_cast<void*>(omp->parallel), &info) != 0 &&
      info.dli_fname != nullptr)
    std::snprintf(where, capacity, "%s", info.dli_fname);
  return KBIT_THREADS_HOST_OPENMP;
#endif
}

void run_team(size_t team, RangeTask task, const void* ranges) {
  std::vector<RangeFailure> errors(team);
#if defined(_WIN32)
  run_with_new_threads(team, task, ranges, errors);
#else
  if (!run_on_host_openmp(team, task, ranges, errors) && !the_team().run(team, task, ranges, errors))
    run_with_new_threads(team, task, ranges, errors);
#endif
  rethrow_first(errors);
}

}  // namespace kbit
