/* cuda_check.h: CUDA runtime errors turned into kbit statuses with evidence (internal). */
#pragma once

#include <cuda_runtime.h>

#include "common/status.h"

namespace kbit {

/* Which kbit_status a CUDA error belongs to: classified by error code, never by message text. */
inline int status_of(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return KBIT_OK;
    case cudaErrorInsufficientDriver:
    case cudaErrorCallRequiresNewerDriver: return KBIT_ERR_NO_DRIVER;
    case cudaErrorNoDevice:
    case cudaErrorDevicesUnavailable: return KBIT_ERR_NO_DEVICE;
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
    case cudaErrorInvalidKernelImage: return KBIT_ERR_NO_KERNEL_IMAGE;
    default: return KBIT_ERR_CUDA;
  }
}

/* Record a failed CUDA call: its name and code, NVIDIA's text, and what kbit knows that helps. */
int cuda_fail(cudaError_t err, const char* file, int line, const char* what);

}  // namespace kbit

#define KBIT_CUDA_CHECK(expr)                                                      \
  do {                                                                             \
    const cudaError_t kbit_err_ = (expr);                                          \
    if (kbit_err_ != cudaSuccess) return ::kbit::cuda_fail(kbit_err_, __FILE__, __LINE__, #expr); \
  } while (0)
