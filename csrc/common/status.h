/* status.h: how native code reports failure (internal).
 * Owns the thread-local last-error text and the CHECK macro. Every exported function clears the text on
 * entry, returns a kbit_status, and never ends the process; C++ exceptions never cross the C ABI. */
#pragma once

#include <exception>

#include "kbit.h"

namespace kbit {

/* Record "<file>:<line>: <what>: <printf-formatted detail>" for kbit_last_error() and return `status`. */
int fail(int status, const char* file, int line, const char* what, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

/* Forget the calling thread's last error (called on entry of every exported function). */
void clear_error();

/* A broken internal invariant, thrown with a string literal; guarded() reports its text. Not std::logic_error:
 * its const char* constructor is GLIBCXX_3.4.21, newer than manylinux2014's libstdc++ (README, Portability). */
class InternalError : public std::exception {
 public:
  explicit InternalError(const char* what) noexcept : what_(what) {}
  const char* what() const noexcept override { return what_; }

 private:
  const char* what_;
};

/* Run an exported function's body: clears the error first and turns a stray C++ exception into
 * KBIT_ERR_INTERNAL instead of letting it unwind through C callers. */
template <class Body>
int guarded(const char* function, Body&& body) noexcept {
  clear_error();
  try {
    return body();
  } catch (const std::exception& exc) {
    return fail(KBIT_ERR_INTERNAL, __FILE__, __LINE__, function, "C++ exception: %s", exc.what());
  } catch (...) {
    return fail(KBIT_ERR_INTERNAL, __FILE__, __LINE__, function, "unknown C++ exception");
  }
}

}  // namespace kbit

/* Return `status` with a recorded message naming the failed condition when `cond` is false. */
#define KBIT_CHECK(cond, status, ...)                                        \
  do {                                                                       \
    if (!(cond)) return ::kbit::fail((status), __FILE__, __LINE__, #cond, __VA_ARGS__); \
  } while (0)
