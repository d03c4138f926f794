/* gemv4.cpp: CPU entry point of the 4-bit matrix-vector product out = A @ W.T (+ bias) (libkbit_cpu).
 * The math and the summation order are numerics/blockwise4.h. This file owns the loops: cpu/parallel.h over output
 * features; each thread decodes one weight row into float32 once and uses it for every row of A. Each output
 * is computed by one thread in the fixed lane order, so the result does not depend on the thread count. */
#include <vector>

#include "common/args.h"
#include "common/host_tables.h"
#include "cpu/parallel.h"
#include "cpu/simd4.h"
#include "numerics/blockwise4.h"
#include "numerics/float16.h"

namespace kbit {
namespace {


/* Codes [k, stop) of a row segment inside one block (flat index of k: first + k) decoded through the block's
 * 16 values: a leading odd nibble alone, then whole bytes (AVX2 lookup when available), then a trailing nibble. */
void decode_segment(const uint8_t* packed, int64_t first, int64_t k, int64_t stop, const float* scaled, float* w) {
  if (k < stop && ((first + k) & 1)) {
    w[k] = scaled[packed[(first + k) >> 1] & 15u];
    ++k;
  }
  const uint8_t* src = packed + ((first + k) >> 1);
  const int64_t pairs = (stop - k) / 2;
  int64_t j = 0;
#if KBIT_X86_DISPATCH
  if (use_avx2()) j = lookup_pairs_avx2<false>(src, w + k, pairs, scaled);
#endif
  for (; j < pairs; ++j) {
    w[k + 2 * j] = scaled[src[j] >> 4];
    w[k + 2 * j + 1] = scaled[src[j] & 15u];
  }
  if ((stop - k) & 1) w[stop - 1] = scaled[src[pairs] >> 4];
}

/* Weight row `row` (elements row*K .. row*K+K-1 of the flat quantized tensor) as float32. Blocks may span rows
 * and a row may start at an odd nibble (odd K), so the row is cut at block boundaries. */
void decode_row(const uint8_t* packed, const float* absmax, int64_t row, int64_t K, int32_t bs, const float* table,
                float* w) {
  const int64_t first = row * K;
  for (int64_t k = 0; k < K;) {
    const int64_t block = (first + k) / bs;
    const int64_t end_in_row = (block + 1) * bs - first;  // the block's end, relative to the row
    const int64_t stop = end_in_row < K ? end_in_row : K;
    float scaled[16];
    for (uint32_t c = 0; c < 16; ++c) scaled[c] = dequantize_4bit_value(c, absmax[block], table);
    decode_segment(packed, first, k, stop, scaled, w);
    k = stop;
  }
}

/* The lane-ordered dot product of blockwise4.h: lane l sums k = l, l + 32, ...; then the pairwise lane tree. */
KBIT_ALWAYS_INLINE float dot_lanes_body(const float* __restrict a, const float* __restrict w, int64_t K) {
  float acc[kGemvLanes] = {};
  int64_t k = 0;
  for (; k + kGemvLanes <= K; k += kGemvLanes)
    for (int l = 0; l < kGemvLanes; ++l) acc[l] = gemv_step(acc[l], a[k + l], w[k + l]);
  for (int l = 0; k + l < K; ++l) acc[l] = gemv_step(acc[l], a[k + l], w[k + l]);
  for (int offset = kGemvLanes / 2; offset >= 1; offset >>= 1)
    for (int l = 0; l < offset; ++l) acc[l] = acc[l] + acc[l + offset];
  return acc[0];
}

float dot_lanes_base(const float* a, const float* w, int64_t K) { return dot_lanes_body(a, w, K); }

#if KBIT_X86_DISPATCH
/* The same per-lane operations in 256-bit registers: identical bits. */
KBIT_TARGET_AVX2 float dot_lanes_avx2(const float* a, const float* w, int64_t K) { return dot_lanes_body(a, w, K); }
#endif

using DotFn = float (*)(const float*, const float*, int64_t);

DotFn dot_lanes() {
#if KBIT_X86_DISPATCH
  if (use_avx2()) return &dot_lanes_avx2;
#endif
  return &dot_lanes_base;
}

/* A as float32 rows (widening is exact, so converting once changes no result). */
template <class T>
const float* widen(const T* A, int64_t count, std::vector<float>& buffer) {
  buffer.resize(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) buffer[static_cast<size_t>(i)] = to_float(A[i]);
  return buffer.data();
}
template <>
const float* widen<float>(const float* A, int64_t, std::vector<float>&) { return A; }

template <class T>
void gemv(const T* A, const uint8_t* packed, const float* absmax, const T* bias, T* out, int64_t M, int64_t N,
          int64_t K, int32_t bs, const float* table, int32_t threads) {
  std::vector<float> a_buffer;
  const float* a = widen(A, M * K, a_buffer);
  const DotFn dot = dot_lanes();
  // work counted as multiply-adds (cheaper than a quantized element: the count errs towards starting threads)
  parallel_ranges(N, team_for(M * N * K, threads), [&](int64_t first, int64_t last) {
    std::vector<float> w(static_cast<size_t>(K > 0 ? K : 1));
    for (int64_t j = first; j < last; ++j) {
      decode_row(packed, absmax, j, K, bs, table, w.data());
      const float b = bias != nullptr ? to_float(bias[j]) : 0.0f;
      for (int64_t m = 0; m < M; ++m)
        out[m * N + j] = from_float<T>(gemv_finish(dot(a + m * K, w.data(), K), bias != nullptr, b));
    }
  });
}

}  // namespace
}  // namespace kbit

extern "C" {

KBIT_API int kbit_gemv_4bit(int32_t dtype, int32_t quant_type, const void* A, const uint8_t* packed,
                            const float* absmax, const void* bias, void* out, int64_t rows, int64_t out_features,
                            int64_t in_features, int32_t blocksize, void* stream, int32_t num_threads) {
  return kbit::guarded("kbit_gemv_4bit", [&]() -> int {
    if (int s = kbit::check_gemv_4bit(dtype, quant_type, A, packed, absmax, out, rows, out_features, in_features,
                                      blocksize))
      return s;
    if (int s = kbit::check_host_launch(stream, num_threads)) return s;
    if (rows == 0 || out_features == 0) return KBIT_OK;
    const float* table = quant_type == KBIT_FP4 ? kbit::kFp4Values : kbit::kNf4Values;
    const int64_t M = rows, N = out_features, K = in_features;
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      kbit::gemv(static_cast<const T*>(A), packed, absmax, static_cast<const T*>(bias), static_cast<T*>(out), M, N, K,
                 blocksize, table, num_threads);
      return KBIT_OK;
    });
  });
}

}  // extern "C"
