/* device.cpp: the CPU library's answer to kbit_device_count (CUDA libraries: csrc/cuda/device.cu). The CPU
 * library drives no accelerator: zero devices, and success. */
#include "common/status.h"

extern "C" {

KBIT_API int kbit_device_count(int32_t* count) {
  return kbit::guarded("kbit_device_count", [&]() -> int {
    KBIT_CHECK(count != nullptr, KBIT_ERR_INVALID_ARGUMENT, "count is NULL");
    *count = 0;  // the CPU library drives no accelerator
    return KBIT_OK;
  });
}

}  // extern "C"
