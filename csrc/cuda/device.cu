/* device.cu: device discovery and CUDA error evidence for CUDA variants (and kbit_cpu_threads: a CUDA library
 * runs no CPU loops). Never aborts: without a driver
 * or a GPU, every entry point returns a status and a message that says which. */
#include <cstdio>

#include "common/args.h"
#include "cuda/cuda_check.h"
#include "kbit_build_info.h"

namespace kbit {

namespace {
const char* hint_for(cudaError_t err) {
  switch (status_of(err)) {
    case KBIT_ERR_NO_DRIVER:
      return "no NVIDIA driver (libcuda) was found, or it is older than this library's toolkit (CUDA "
             KBIT_TOOLKIT_VERSION "); install or update the driver, or use a kbit variant built with an older "
             "toolkit";
    case KBIT_ERR_NO_DEVICE:
      return "the driver sees no usable GPU (check CUDA_VISIBLE_DEVICES and nvidia-smi)";
    case KBIT_ERR_NO_KERNEL_IMAGE:
      return "this GPU's arch is not among this library's SASS archs (" KBIT_SASS_LIST ") and its PTX ("
             KBIT_PTX_ARCH ") cannot be JIT-compiled for it by this driver; use a variant whose archs cover the GPU";
    default:
      return "see NVIDIA's text above";
  }
}
}  // namespace

int cuda_fail(cudaError_t err, const char* file, int line, const char* what) {
  cudaGetLastError();  // clear a sticky non-fatal error so the next call starts clean
  return fail(status_of(err), file, line, what, "%s (%d): %s; %s", cudaGetErrorName(err), static_cast<int>(err),
              cudaGetErrorString(err), hint_for(err));
}

}  // namespace kbit

extern "C" KBIT_API int kbit_device_count(int32_t* count) {
  return kbit::guarded("kbit_device_count", [&]() -> int {
    KBIT_CHECK(count != nullptr, KBIT_ERR_INVALID_ARGUMENT, "count is NULL");
    *count = 0;
    int n = 0;
    KBIT_CUDA_CHECK(cudaGetDeviceCount(&n));
    *count = n;
    return KBIT_OK;
  });
}

extern "C" KBIT_API int kbit_cpu_threads(int32_t* kind, char* where, int32_t capacity) {
  return kbit::guarded("kbit_cpu_threads", [&]() -> int {
    if (const int st = kbit::check_cpu_threads(kind, where, capacity)) return st;
    if (capacity > 0) where[0] = '\0';
    *kind = KBIT_THREADS_NONE;  // CPU tensors are served by the CPU library
    return KBIT_OK;
  });
}
