/* device.cpp: the CPU library's answers to kbit_device_count and kbit_cpu_threads (CUDA libraries:
 * csrc/cuda/device.cu). The CPU library drives no accelerator: zero devices, and success. Its loops run on the
 * threads cpu/parallel.cpp chooses. */
#include "common/args.h"
#include "cpu/parallel.h"

extern "C" {

KBIT_API int kbit_device_count(int32_t* count) {
  return kbit::guarded("kbit_device_count", [&]() -> int {
    KBIT_CHECK(count != nullptr, KBIT_ERR_INVALID_ARGUMENT, "count is NULL");
    *count = 0;  // the CPU library drives no accelerator
    return KBIT_OK;
  });
}

KBIT_API int kbit_cpu_threads(int32_t* kind, char* where, int32_t capacity) {
  return kbit::guarded("kbit_cpu_threads", [&]() -> int {
    if (const int st = kbit::check_cpu_threads(kind, where, capacity)) return st;
    *kind = kbit::cpu_threads_kind(where, static_cast<size_t>(capacity));
    return KBIT_OK;
  });
}

}  // extern "C"
