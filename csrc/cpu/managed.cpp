/* managed.cpp: the CPU library's answers to the CUDA-only managed-memory functions of kbit.h. Paging needs CUDA
 * (csrc/cuda/managed.cu): the CPU library refuses with a message that says so. */
#include "common/status.h"

extern "C" {

KBIT_API int kbit_managed_alloc(void** out, int64_t bytes) {
  return kbit::guarded("kbit_managed_alloc", [&]() -> int {
    if (out != nullptr) *out = nullptr;
    return kbit::fail(KBIT_ERR_INVALID_ARGUMENT, __FILE__, __LINE__, "kbit_managed_alloc",
                      "paged optimizer states live in CUDA managed memory, which needs a CUDA library "
                      "(libkbit_cuda<NNN>); %lld bytes were requested from the CPU library",
                      static_cast<long long>(bytes));
  });
}

KBIT_API int kbit_managed_free(void* ptr) {
  return kbit::guarded("kbit_managed_free", [&]() -> int {
    KBIT_CHECK(ptr == nullptr, KBIT_ERR_INVALID_ARGUMENT,
               "the CPU library never allocates managed memory, so it cannot free %p; free it with the CUDA "
               "library that allocated it", ptr);
    return KBIT_OK;
  });
}

}  // extern "C"
