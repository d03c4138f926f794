/* int8.cpp: CPU entry points of LLM.int8 (libkbit_cpu): row-wise int8 quantization and the dequantization of
 * an int32 product. The math is numerics/int8.h; this file owns the loops over rows and their threading. */
#include "common/args.h"
#include "cpu/parallel.h"
#include "numerics/float16.h"
#include "numerics/int8.h"

namespace kbit {
namespace {

template <class T>
void quantize_rows(const T* A, const uint8_t* outlier_cols, float threshold, int8_t* out, float* row_stats,
                   int64_t rows, int64_t cols, int32_t threads) {
  parallel_for(rows, team_for(rows * cols, threads), [&](int64_t r) {
    const T* row = A + r * cols;
    float m = 0.0f;
    for (int64_t j = 0; j < cols; ++j) {
      const float x = to_float(row[j]);
      if (int8_inlier(x, threshold)) m = absmax_step(m, x);
    }
    m = canonical_absmax(m);
    row_stats[r] = m;
    const float scale = int8_row_scale(m);
    int8_t* o = out + r * cols;
    for (int64_t j = 0; j < cols; ++j)
      o[j] = (outlier_cols && outlier_cols[j]) ? int8_t{0} : int8_code(to_float(row[j]), scale);
  });
}

template <class T>
void dequantize_product(const int32_t* A, const float* row_stats, const float* col_stats, const T* bias, T* out,
                        int64_t rows, int64_t cols, int32_t threads) {
  parallel_for(rows, team_for(rows * cols, threads), [&](int64_t r) {
    const float rs = row_stats[r];
    for (int64_t j = 0; j < cols; ++j) {
      float v = int8_dequant(A[r * cols + j], rs, col_stats[j]);
      if (bias) v = v + to_float(bias[j]);
      out[r * cols + j] = from_float<T>(v);
    }
  });
}

}  // namespace
}  // namespace kbit

extern "C" {

KBIT_API int kbit_int8_vectorwise_quant(int32_t dtype, const void* A, const uint8_t* outlier_cols, float threshold,
                                        int8_t* out, float* row_stats, int64_t rows, int64_t cols, void* stream,
                                        int32_t num_threads) {
  return kbit::guarded("kbit_int8_vectorwise_quant", [&]() -> int {
    if (int s = kbit::check_int8_quant(dtype, A, out, row_stats, rows, cols, threshold)) return s;
    if (int s = kbit::check_host_launch(stream, num_threads)) return s;
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      kbit::quantize_rows(static_cast<const T*>(A), outlier_cols, threshold, out, row_stats, rows, cols, num_threads);
      return KBIT_OK;
    });
  });
}

KBIT_API int kbit_int8_mm_dequant(int32_t dtype, const int32_t* A, const float* row_stats, const float* col_stats,
                                  const void* bias, void* out, int64_t rows, int64_t cols, void* stream,
                                  int32_t num_threads) {
  return kbit::guarded("kbit_int8_mm_dequant", [&]() -> int {
    if (int s = kbit::check_int8_mm_dequant(dtype, A, row_stats, col_stats, out, rows, cols)) return s;
    if (int s = kbit::check_host_launch(stream, num_threads)) return s;
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      kbit::dequantize_product(A, row_stats, col_stats, static_cast<const T*>(bias), static_cast<T*>(out), rows, cols,
                               num_threads);
      return KBIT_OK;
    });
  });
}

}  // extern "C"
