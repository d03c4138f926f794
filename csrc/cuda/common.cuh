/* common.cuh: what every CUDA entry point and kernel file shares (internal to libkbit_cuda<NNN>):
 *  - the device-pointer checks: refuse host pointers and pointers of another device with words, instead of an
 *    illegal-address error at some later call;
 *  - the block reduction every kernel's absmax uses (one warp butterfly, one fold over the warps);
 *  - grid sizing, and (through common/args.h) the dtype dispatch of common/dispatch.h. */
#pragma once

#include <initializer_list>

#include "common/args.h"
#include "cuda/cuda_check.h"
#include "numerics/absmax.h"

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

/* One pointer argument of an entry point, by name. */
struct NamedPointer {
  const void* ptr;
  const char* name;
};

/* Every non-NULL pointer must be device or managed memory of the current device (NULL: an optional argument the
 * argument checks of common/args.h allowed). The first offender is reported. */
inline int check_device_pointers(std::initializer_list<NamedPointer> pointers) {
  for (const NamedPointer& p : pointers)
    if (p.ptr != nullptr)
      if (int s = check_device_memory(p.ptr, p.name)) return s;
  return KBIT_OK;
}

/* A reduction of one value per thread over the whole thread block (blockDim.x a multiple of 32), returned to
 * every thread: a warp xor butterfly, lane 0 of each warp into scratch[warp] (blockDim.x / 32 entries), then
 * a fold over the warps in order starting from `identity`. Its __syncthreads also publishes shared memory
 * written before the call; a caller reusing `scratch` synchronizes before writing it again. */
template <class V, class Combine>
__device__ V block_reduce(V v, V* scratch, V identity, Combine combine) {
  for (int offset = 16; offset > 0; offset >>= 1) v = combine(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = identity;
  for (int w = 0; w < warps; ++w) v = combine(v, scratch[w]);
  return v;
}

/* The absmax of numerics/absmax.h over the thread block, from each thread's absmax_step result: on floats, or
 * on magnitude bits (then magnitude_value gives the stored float). */
struct AbsmaxStep {
  __device__ float operator()(float m, float x) const { return absmax_step(m, x); }
};
struct MaxBits {
  __device__ uint32_t operator()(uint32_t a, uint32_t b) const { return b > a ? b : a; }
};
__device__ inline float block_absmax(float m, float* scratch) {
  return canonical_absmax(block_reduce(m, scratch, 0.0f, AbsmaxStep{}));
}
__device__ inline uint32_t block_max_bits(uint32_t m, uint32_t* scratch) { return block_reduce(m, scratch, 0u, MaxBits{}); }

/* A grid-stride launch's block count: enough blocks for the work, at most `max_blocks`. */
inline unsigned grid_for(int64_t work_items, int64_t per_block, int64_t max_blocks) {
  const int64_t wanted = (work_items + per_block - 1) / per_block;
  return static_cast<unsigned>(wanted < max_blocks ? wanted : max_blocks);
}

}  // namespace kbit
