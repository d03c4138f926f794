/* blockwise8.cu: CUDA entry points of 8-bit blockwise quantization. The math is numerics/blockwise8.h,
 * the same header the CPU library runs; this file owns the kernels' data movement and launches. */
#include "common/args.h"
#include "cuda/cuda_check.h"
#include "cuda/common.cuh"
#include "numerics/blockwise8.h"
#include "cuda/device_maps.cuh"
#include "numerics/float16.h"

namespace kbit {
namespace {

constexpr int kMaxThreads = 256;
constexpr int kDequantPerThread = 4;

/* Stage a map's values and midpoints into shared memory: the signed dynamic map from constant memory when
 * `code` is NULL (kbit_quantize_blockwise_8bit), else the caller's device map with its midpoints computed
 * here by split_midpoint (kbit_quantize_blockwise_8bit_map). The caller synchronizes before use. */
__device__ void stage_map(const float* code, float* s_values, float* s_hi, float* s_lo) {
  for (int i = threadIdx.x; i < 256; i += blockDim.x) s_values[i] = code ? code[i] : c_signed_values[i];
  for (int i = threadIdx.x; i < 255; i += blockDim.x) {
    if (code) {
      split_midpoint(code[i], code[i + 1], &s_hi[i], &s_lo[i]);
    } else {
      s_hi[i] = c_signed_mid_hi[i];
      s_lo[i] = c_signed_mid_lo[i];
    }
  }
}

/* One thread block per quantization block (blockDim = min(blocksize, 256), a multiple of 32). */
template <class T>
__global__ void quantize_kernel(const T* __restrict__ in, float* __restrict__ absmax, uint8_t* __restrict__ out,
                                int64_t n, int32_t bs, const float* __restrict__ code) {
  __shared__ float s_values[256], s_hi[255], s_lo[255], s_scratch[kMaxThreads / 32];
  stage_map(code, s_values, s_hi, s_lo);
  const int64_t start = static_cast<int64_t>(blockIdx.x) * bs;
  const int len = static_cast<int>(n - start < bs ? n - start : bs);
  float m = 0.0f;
  for (int i = threadIdx.x; i < len; i += blockDim.x) m = absmax_step(m, to_float(in[start + i]));
  m = block_absmax(m, s_scratch);  // its __syncthreads also publishes the staged map
  if (threadIdx.x == 0) absmax[blockIdx.x] = m;
  const float inv = inverse_absmax(m);
  const MapView map{s_values, s_hi, s_lo};
  const uint8_t zero = code ? zero_code(s_hi, s_lo) : kSignedZeroCode;
  for (int i = threadIdx.x; i < len; i += blockDim.x) {
    const float x = to_float(in[start + i]);
    out[start + i] = is_finite_scale(m) ? nearest_code(normalize(x, m, inv), map) : zero;
  }
}

template <class T>
__global__ void dequantize_kernel(const uint8_t* __restrict__ codes, const float* __restrict__ absmax,
                                  T* __restrict__ out, int64_t n, int32_t log2_bs, const float* __restrict__ code) {
  __shared__ float s_values[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) s_values[i] = code ? code[i] : c_signed_values[i];
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = from_float<T>(dequantize_8bit(codes[i], absmax[i >> log2_bs], s_values));
}

template <class T>
int launch_quantize(const void* A, float* absmax, uint8_t* out, int64_t n, int32_t bs, cudaStream_t stream,
                    const float* code) {
  const int64_t blocks = block_count(n, bs);
  KBIT_CHECK(blocks <= 0x7fffffff, KBIT_ERR_INVALID_ARGUMENT, "%lld blocks exceed the grid limit; use a larger blocksize",
             static_cast<long long>(blocks));
  const int threads = bs < kMaxThreads ? bs : kMaxThreads;
  quantize_kernel<T><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(static_cast<const T*>(A), absmax, out, n, bs, code);
  KBIT_CUDA_CHECK(cudaGetLastError());
  return KBIT_OK;
}

template <class T>
int launch_dequantize(const uint8_t* codes, const float* absmax, void* out, int64_t n, int32_t bs, cudaStream_t stream,
                      const float* code) {
  const unsigned grid = grid_for(n, kMaxThreads * kDequantPerThread, 65535 * 8);
  dequantize_kernel<T><<<grid, kMaxThreads, 0, stream>>>(codes, absmax, static_cast<T*>(out), n, log2_pow2(bs), code);
  KBIT_CUDA_CHECK(cudaGetLastError());
  return KBIT_OK;
}

}  // namespace
}  // namespace kbit

extern "C" {

KBIT_API int kbit_quantize_blockwise_8bit(int32_t dtype, const void* A, float* absmax, uint8_t* out, int64_t n,
                                          int32_t blocksize, void* stream, int32_t /*num_threads*/) {
  return kbit::guarded("kbit_quantize_blockwise_8bit", [&]() -> int {
    if (int s = kbit::check_blockwise_8bit(dtype, A, absmax, out, n, blocksize)) return s;
    if (n == 0) return KBIT_OK;
    if (int s = kbit::check_device_pointers({{A, "A"}, {absmax, "absmax"}, {out, "out"}})) return s;
    auto st = static_cast<cudaStream_t>(stream);
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      return kbit::launch_quantize<T>(A, absmax, out, n, blocksize, st, nullptr);
    });
  });
}

KBIT_API int kbit_dequantize_blockwise_8bit(int32_t dtype, const uint8_t* codes, const float* absmax, void* out,
                                            int64_t n, int32_t blocksize, void* stream, int32_t /*num_threads*/) {
  return kbit::guarded("kbit_dequantize_blockwise_8bit", [&]() -> int {
    if (int s = kbit::check_blockwise_8bit(dtype, codes, absmax, out, n, blocksize)) return s;
    if (n == 0) return KBIT_OK;
    if (int s = kbit::check_device_pointers({{codes, "codes"}, {absmax, "absmax"}, {out, "out"}})) return s;
    auto st = static_cast<cudaStream_t>(stream);
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      return kbit::launch_dequantize<T>(codes, absmax, out, n, blocksize, st, nullptr);
    });
  });
}

/* The map is device memory and is not read on the host (that would synchronize): kbit's Python layer checks it
 * (kbit._blockwise8.check_code) before every call. */
KBIT_API int kbit_quantize_blockwise_8bit_map(int32_t dtype, const float* code, const void* A, float* absmax,
                                              uint8_t* out, int64_t n, int32_t blocksize, void* stream,
                                              int32_t /*num_threads*/) {
  return kbit::guarded("kbit_quantize_blockwise_8bit_map", [&]() -> int {
    if (int s = kbit::check_blockwise_8bit_map(dtype, code, A, absmax, out, n, blocksize, KBIT_BLOCKSIZE_8BIT_MAX)) return s;
    if (n == 0) return KBIT_OK;
    if (int s = kbit::check_device_pointers({{code, "code"}, {A, "A"}, {absmax, "absmax"}, {out, "out"}})) return s;
    auto st = static_cast<cudaStream_t>(stream);
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      return kbit::launch_quantize<T>(A, absmax, out, n, blocksize, st, code);
    });
  });
}

KBIT_API int kbit_dequantize_blockwise_8bit_map(int32_t dtype, const float* code, const uint8_t* codes,
                                                const float* absmax, void* out, int64_t n, int32_t blocksize,
                                                void* stream, int32_t /*num_threads*/) {
  return kbit::guarded("kbit_dequantize_blockwise_8bit_map", [&]() -> int {
    if (int s = kbit::check_blockwise_8bit_map(dtype, code, codes, absmax, out, n, blocksize, KBIT_BLOCKSIZE_8BIT_MAX)) return s;
    if (n == 0) return KBIT_OK;
    if (int s = kbit::check_device_pointers({{code, "code"}, {codes, "codes"}, {absmax, "absmax"}, {out, "out"}})) return s;
    auto st = static_cast<cudaStream_t>(stream);
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      return kbit::launch_dequantize<T>(codes, absmax, out, n, blocksize, st, code);
    });
  });
}

}  // extern "C"
