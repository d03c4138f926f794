/* status.cpp: the thread-local last-error text behind kbit_last_error(). */
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <exception>

#include "common/status.h"

namespace {
constexpr size_t kErrorCapacity = 2048;
thread_local char t_last_error[kErrorCapacity] = "";

/* Build paths say nothing to users: keep the path from "csrc/" on. */
const char* project_relative(const char* file) {
  const char* hit = nullptr;
  for (const char* p = std::strstr(file, "csrc"); p != nullptr; p = std::strstr(p + 1, "csrc")) hit = p;
  return hit != nullptr ? hit : file;
}
}  // namespace

namespace kbit {

int fail(int status, const char* file, int line, const char* what, const char* fmt, ...) {
  int used = std::snprintf(t_last_error, kErrorCapacity, "%s:%d: %s: ", project_relative(file), line, what);
  if (used < 0 || static_cast<size_t>(used) >= kErrorCapacity) return status;
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(t_last_error + used, kErrorCapacity - static_cast<size_t>(used), fmt, args);
  va_end(args);
  return status;
}

void clear_error() { t_last_error[0] = '\0'; }

}  // namespace kbit

extern "C" KBIT_API const char* kbit_last_error(void) { return t_last_error; }
