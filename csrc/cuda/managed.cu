/* managed.cu: CUDA managed memory for paged optimizer states (kbit.optim's Paged* optimizers).
 * Managed pages migrate between host and device on demand, so states larger than the GPU's free memory
 * still work; kbit's kernels accept such pointers like device memory. */
#include "common/status.h"
#include "cuda/cuda_check.h"

extern "C" {

KBIT_API int kbit_managed_alloc(void** out, int64_t bytes) {
  return kbit::guarded("kbit_managed_alloc", [&]() -> int {
    KBIT_CHECK(out != nullptr, KBIT_ERR_INVALID_ARGUMENT, "out is NULL; pass the address of a pointer");
    *out = nullptr;
    KBIT_CHECK(bytes >= 0, KBIT_ERR_INVALID_ARGUMENT, "bytes = %lld is negative", static_cast<long long>(bytes));
    if (bytes == 0) return KBIT_OK;
    KBIT_CUDA_CHECK(cudaMallocManaged(out, static_cast<size_t>(bytes), cudaMemAttachGlobal));
    return KBIT_OK;
  });
}

KBIT_API int kbit_managed_free(void* ptr) {
  return kbit::guarded("kbit_managed_free", [&]() -> int {
    if (ptr == nullptr) return KBIT_OK;
    KBIT_CUDA_CHECK(cudaFree(ptr));
    return KBIT_OK;
  });
}

}  // extern "C"
