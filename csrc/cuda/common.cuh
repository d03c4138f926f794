/* device_pointer.h: the pointer check of CUDA entry points (internal): refuse host pointers and pointers of
 * another device with words, instead of an illegal-address error at some later call. */
#pragma once

#include "cuda/cuda_check.h"

namespace kbit {

/* `ptr` must be device (or managed) memory of the current device; `name` is used in the message. */
inline int check_device_memory(const void* ptr, const char* name) {
  cudaPointerAttributes attr{};
  KBIT_CUDA_CHECK(cudaPointerGetAttributes(&attr, ptr));
  KBIT_CHECK(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged, KBIT_ERR_INVALID_ARGUMENT,
             "%s is not device memory (cudaMemoryType %d); CPU tensors go to libkbit_cpu", name,
             static_cast<int>(attr.type));
  int current = 0;
  KBIT_CUDA_CHECK(cudaGetDevice(&current));
  KBIT_CHECK(attr.type == cudaMemoryTypeManaged || attr.device == current, KBIT_ERR_INVALID_ARGUMENT,
             "%s is on device %d but the current device is %d; make the tensor's device current first "
             "(torch.cuda.device(tensor.device))", name, attr.device, current);
  return KBIT_OK;
}

/* log2 of a power of two (blocksizes), so kernels shift instead of dividing. */
inline int log2_pow2(int32_t pow2) {
  int r = 0;
  while ((1 << r) < pow2) ++r;
  return r;
}

}  // namespace kbit
