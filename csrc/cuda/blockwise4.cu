/* blockwise4.cu: CUDA entry points of 4-bit blockwise quantization (NF4, FP4). The math is
 * numerics/blockwise4.h, the same header the CPU library runs; this file owns the kernels' data movement and
 * launches. The absmax is an integer max of |x| bit patterns, which is order-free, so the GPU's reduction tree
 * gives the CPU's bits. */
#include "common/args.h"
#include "cuda/cuda_check.h"
#include "cuda/common.cuh"
#include "numerics/blockwise4.h"
#include "numerics/float16.h"

namespace kbit {
namespace {

__constant__ float c_nf4[16] = KBIT_NF4_VALUES;
__constant__ float c_fp4[16] = KBIT_FP4_VALUES;

constexpr int kMaxThreads = 256;
constexpr int kDequantThreads = 256;

/* One thread block per quantization block; each thread writes whole bytes (pairs of elements). */
template <int32_t Q, class T>
__global__ void quantize4_kernel(const T* __restrict__ in, float* __restrict__ absmax, uint8_t* __restrict__ out,
                                 int64_t n, int32_t bs) {
  __shared__ uint32_t s_scratch[kMaxThreads / 32];
  const int64_t start = static_cast<int64_t>(blockIdx.x) * bs;
  const int len = static_cast<int>(n - start < bs ? n - start : bs);
  uint32_t m = 0;
  for (int i = threadIdx.x; i < len; i += blockDim.x) {
    const uint32_t a = magnitude_bits(to_float(in[start + i]));
    m = a > m ? a : m;
  }
  const float scale = magnitude_value<float>(block_max_bits(m, s_scratch));
  if (threadIdx.x == 0) absmax[blockIdx.x] = scale;
  const int pairs = (len + 1) / 2;
  uint8_t* dst = out + start / 2;
  const uint32_t zero = zero_code_4bit(Q);
  if (!is_finite_scale(scale)) {
    for (int p = threadIdx.x; p < pairs; p += blockDim.x) dst[p] = pack_4bit(zero, zero);
    return;
  }
  const float inv = inverse_absmax(scale);
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const uint32_t hi = code_4bit<Q>(normalize(to_float(in[start + 2 * p]), scale, inv));
    const uint32_t lo = 2 * p + 1 < len ? code_4bit<Q>(normalize(to_float(in[start + 2 * p + 1]), scale, inv)) : zero;
    dst[p] = pack_4bit(hi, lo);
  }
}

/* Grid-stride over bytes; both elements of a byte are in the same block (blocks are even-sized). */
template <class T>
__global__ void dequantize4_kernel(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                                   T* __restrict__ out, int64_t n, int32_t log2_bs, int32_t quant_type) {
  __shared__ float s_table[16];
  if (threadIdx.x < 16) s_table[threadIdx.x] = quant_type == KBIT_FP4 ? c_fp4[threadIdx.x] : c_nf4[threadIdx.x];
  __syncthreads();
  const int64_t bytes = (n + 1) / 2;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < bytes; j += stride) {
    const uint32_t byte = packed[j];
    const float scale = absmax[(2 * j) >> log2_bs];
    out[2 * j] = from_float<T>(dequantize_4bit_value(byte >> 4, scale, s_table));
    if (2 * j + 1 < n) out[2 * j + 1] = from_float<T>(dequantize_4bit_value(byte & 15u, scale, s_table));
  }
}

template <class T>
int launch_quantize4(int32_t quant_type, const void* A, float* absmax, uint8_t* out, int64_t n, int32_t bs,
                     cudaStream_t stream) {
  const int64_t blocks = block_count(n, bs);
  KBIT_CHECK(blocks <= 0x7fffffff, KBIT_ERR_INVALID_ARGUMENT,
             "%lld blocks exceed the grid limit; use a larger blocksize", static_cast<long long>(blocks));
  const int pairs = bs / 2;
  const int threads = pairs < 32 ? 32 : (pairs > kMaxThreads ? kMaxThreads : pairs);
  const T* in = static_cast<const T*>(A);
  if (quant_type == KBIT_FP4) {
    quantize4_kernel<KBIT_FP4, T><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(in, absmax, out, n, bs);
  } else {
    quantize4_kernel<KBIT_NF4, T><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(in, absmax, out, n, bs);
  }
  KBIT_CUDA_CHECK(cudaGetLastError());
  return KBIT_OK;
}

template <class T>
int launch_dequantize4(int32_t quant_type, const uint8_t* packed, const float* absmax, void* out, int64_t n,
                       int32_t bs, cudaStream_t stream) {
  const int64_t bytes = (n + 1) / 2;
  const unsigned grid = grid_for(bytes, kDequantThreads * 4, 65535 * 8);
  dequantize4_kernel<T><<<grid, kDequantThreads, 0, stream>>>(packed, absmax, static_cast<T*>(out), n, log2_pow2(bs),
                                                              quant_type);
  KBIT_CUDA_CHECK(cudaGetLastError());
  return KBIT_OK;
}

}  // namespace
}  // namespace kbit

extern "C" {

KBIT_API int kbit_quantize_4bit(int32_t dtype, int32_t quant_type, const void* A, float* absmax, uint8_t* packed,
                                int64_t n, int32_t blocksize, void* stream, int32_t /*num_threads*/) {
  return kbit::guarded("kbit_quantize_4bit", [&]() -> int {
    if (int s = kbit::check_blockwise_4bit(dtype, quant_type, A, absmax, packed, n, blocksize)) return s;
    if (n == 0) return KBIT_OK;
    if (int s = kbit::check_device_pointers({{A, "A"}, {absmax, "absmax"}, {packed, "packed"}})) return s;
    auto st = static_cast<cudaStream_t>(stream);
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      return kbit::launch_quantize4<T>(quant_type, A, absmax, packed, n, blocksize, st);
    });
  });
}

KBIT_API int kbit_dequantize_4bit(int32_t dtype, int32_t quant_type, const uint8_t* packed, const float* absmax,
                                  void* out, int64_t n, int32_t blocksize, void* stream, int32_t /*num_threads*/) {
  return kbit::guarded("kbit_dequantize_4bit", [&]() -> int {
    if (int s = kbit::check_blockwise_4bit(dtype, quant_type, packed, absmax, out, n, blocksize)) return s;
    if (n == 0) return KBIT_OK;
    if (int s = kbit::check_device_pointers({{packed, "packed"}, {absmax, "absmax"}, {out, "out"}})) return s;
    auto st = static_cast<cudaStream_t>(stream);
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      return kbit::launch_dequantize4<T>(quant_type, packed, absmax, out, n, blocksize, st);
    });
  });
}

}  // extern "C"
