/* int8.cu: CUDA entry points of LLM.int8: row-wise int8 quantization and the dequantization of an int32 product
 * (the product itself is torch's). The math is numerics/int8.h, the same header the CPU library runs; this file
 * owns the kernels' data movement and launches. */
#include "common/args.h"
#include "cuda/common.cuh"
#include "cuda/cuda_check.h"
#include "numerics/float16.h"
#include "numerics/int8.h"

namespace kbit {
namespace {

constexpr int kThreads = 256;

/* One thread block per row: the row's absmax (block reduction), then its codes. */
template <class T>
__global__ void quantize_rows_kernel(const T* __restrict__ A, const uint8_t* __restrict__ outlier_cols, float threshold,
                                     int8_t* __restrict__ out, float* __restrict__ row_stats, int64_t cols) {
  __shared__ float scratch[kThreads / 32];
  const T* row = A + static_cast<int64_t>(blockIdx.x) * cols;
  float m = 0.0f;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const float x = to_float(row[j]);
    if (int8_inlier(x, threshold)) m = absmax_step(m, x);
  }
  m = block_absmax(m, scratch);
  if (threadIdx.x == 0) row_stats[blockIdx.x] = m;
  const float scale = int8_row_scale(m);
  int8_t* o = out + static_cast<int64_t>(blockIdx.x) * cols;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
    o[j] = (outlier_cols && outlier_cols[j]) ? int8_t{0} : int8_code(to_float(row[j]), scale);
}

template <class T>
__global__ void mm_dequant_kernel(const int32_t* __restrict__ A, const float* __restrict__ row_stats,
                                  const float* __restrict__ col_stats, const T* __restrict__ bias, T* __restrict__ out,
                                  int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / cols, j = i - r * cols;
    float v = int8_dequant(A[i], row_stats[r], col_stats[j]);
    if (bias) v = v + to_float(bias[j]);
    out[i] = from_float<T>(v);
  }
}

}  // namespace
}  // namespace kbit

extern "C" {

KBIT_API int kbit_int8_vectorwise_quant(int32_t dtype, const void* A, const uint8_t* outlier_cols, float threshold,
                                        int8_t* out, float* row_stats, int64_t rows, int64_t cols, void* stream,
                                        int32_t /*num_threads*/) {
  return kbit::guarded("kbit_int8_vectorwise_quant", [&]() -> int {
    if (int s = kbit::check_int8_quant(dtype, A, out, row_stats, rows, cols, threshold)) return s;
    if (rows == 0) return KBIT_OK;
    KBIT_CHECK(rows <= 0x7fffffff, KBIT_ERR_INVALID_ARGUMENT, "%lld rows exceed the grid limit", static_cast<long long>(rows));
    if (int s = kbit::check_device_pointers({{A, "A"}, {outlier_cols, "outlier_cols"}, {out, "out"}, {row_stats, "row_stats"}}))
      return s;
    auto st = static_cast<cudaStream_t>(stream);
    return kbit::dispatch(dtype, [&](auto tag) -> int {
      using T = kbit::dtype_t<decltype(tag)>;
      kbit::quantize_rows_kernel<T><<<static_cast<unsigned>(rows), kbit::kThreads, 0, st>>>(
          static_cast<const T*>(A), outlier_cols, threshold, out, row_stats, cols);
      KBIT_CUDA_CHECK(cudaGetLastError());
      return KBIT_OK;
    });
  });
}

KBIT_API int kbit_int8_mm_dequant(int32_t dtype, const int32_t* A, const float* row_stats, const float* col_stats,
                                  const void* bias, void* out, int64_t rows, int64_t cols, void* stream,
                                  int32_t /*num_threads*/) {
  return kbit::guarded("kbit_int8_mm_dequant", [&]() -> int {
    if (int s = kbit::check_int8_mm_dequant(dtype, A, row_stats, col_stats, out, rows, cols)) return s;
    if (rows * cols == 0) return KBIT_OK;
    if (int s = kbit::check_device_pointers({{A, "A"}, {row_stats, "row_stats"}, {col_stats, "col_stats"},
                                             {bias, "bias"}, {out, "out"}}))
      return s;
    auto st = static_cast<cudaStream_t>(stream);
    const unsigned grid = kbit::grid_for(rows * cols, kbit::kThreads * 4, 65535 * 8);
    return kbit::dispatch(dtype, [&](auto tag) -> int {
      using T = kbit::dtype_t<decltype(tag)>;
      kbit::mm_dequant_kernel<T><<<grid, kbit::kThreads, 0, st>>>(A, row_stats, col_stats, static_cast<const T*>(bias),
                                                                  static_cast<T*>(out), rows, cols);
      KBIT_CUDA_CHECK(cudaGetLastError());
      return KBIT_OK;
    });
  });
}

}  // extern "C"
