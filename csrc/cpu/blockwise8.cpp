/* blockwise8.cpp: CPU entry points of 8-bit blockwise quantization (libkbit_cpu).
 * The math is numerics/blockwise8.h; this file owns only the loops over blocks and their threading
 * (OpenMP across blocks, with the thread count the caller passes). */
#include "common/args.h"
#include "common/host_tables.h"
#include "numerics/blockwise8.h"
#include "numerics/float16.h"

namespace kbit {
namespace {

/* absmax of one block through its magnitude bits: an integer max the compiler vectorizes. */
template <class T>
float block_absmax(const T* in, int64_t len) {
  uint32_t m = 0;
  for (int64_t i = 0; i < len; ++i) {
    const uint32_t b = magnitude_bits(in[i]);
    m = b > m ? b : m;
  }
  return magnitude_value<T>(m);
}

/* The codes of one block; the per-block choices (non-finite block, reciprocal overflow) are made once here,
 * so the per-element loop is a multiply and the bucketed search. Same codes as quantize_8bit. */
template <class T>
void quantize_block(const T* in, uint8_t* out, int64_t len, float absmax, const MapView& map) {
  if (!is_finite_scale(absmax)) {
    for (int64_t i = 0; i < len; ++i) out[i] = kSignedZeroCode;
    return;
  }
  const float inv = inverse_absmax(absmax);
  if (inv > kFloatMax) {  // subnormal absmax: divide, as normalize() does
    for (int64_t i = 0; i < len; ++i) out[i] = nearest_code_bucketed(to_float(in[i]) / absmax, map.buckets, map.above);
    return;
  }
  for (int64_t i = 0; i < len; ++i) out[i] = nearest_code_bucketed(to_float(in[i]) * inv, map.buckets, map.above);
}

template <class T>
void quantize_blocks(const T* in, float* absmax, uint8_t* out, int64_t n, int32_t bs, int32_t threads) {
  const int64_t blocks = block_count(n, bs);
  const MapView& map = host_map(KBIT_MAP_DYNAMIC_SIGNED);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t start = b * bs;
    const int64_t len = n - start < bs ? n - start : bs;
    const float m = block_absmax(in + start, len);
    absmax[b] = m;
    quantize_block(in + start, out + start, len, m, map);
  }
}

template <class T>
void dequantize_blocks(const uint8_t* codes, const float* absmax, T* out, int64_t n, int32_t bs, int32_t threads) {
  const int64_t blocks = block_count(n, bs);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t start = b * bs;
    const int64_t len = n - start < bs ? n - start : bs;
    const float scale = absmax[b];
    for (int64_t i = 0; i < len; ++i)
      out[start + i] = from_float<T>(dequantize_8bit(codes[start + i], scale, kSignedValues));
  }
}

int check_cpu(void* stream, int32_t threads) {
  KBIT_CHECK(stream == nullptr, KBIT_ERR_INVALID_ARGUMENT,
             "a stream was passed to the CPU library; CUDA tensors must go to a CUDA variant");
  KBIT_CHECK(threads >= 1 && threads <= 4096, KBIT_ERR_INVALID_ARGUMENT,
             "num_threads = %d; pass torch.get_num_threads() (1..4096)", threads);
  return KBIT_OK;
}

}  // namespace
}  // namespace kbit

extern "C" {

KBIT_API int kbit_quantize_blockwise_8bit(int32_t dtype, const void* A, float* absmax, uint8_t* out, int64_t n,
                                          int32_t blocksize, void* stream, int32_t num_threads) {
  return kbit::guarded("kbit_quantize_blockwise_8bit", [&]() -> int {
    if (int s = kbit::check_blockwise_8bit(dtype, A, absmax, out, n, blocksize)) return s;
    if (int s = kbit::check_cpu(stream, num_threads)) return s;
    switch (dtype) {
      case KBIT_F32: kbit::quantize_blocks(static_cast<const float*>(A), absmax, out, n, blocksize, num_threads); break;
      case KBIT_F16: kbit::quantize_blocks(static_cast<const kbit::f16*>(A), absmax, out, n, blocksize, num_threads); break;
      default: kbit::quantize_blocks(static_cast<const kbit::bf16*>(A), absmax, out, n, blocksize, num_threads); break;
    }
    return KBIT_OK;
  });
}

KBIT_API int kbit_dequantize_blockwise_8bit(int32_t dtype, const uint8_t* codes, const float* absmax, void* out,
                                            int64_t n, int32_t blocksize, void* stream, int32_t num_threads) {
  return kbit::guarded("kbit_dequantize_blockwise_8bit", [&]() -> int {
    if (int s = kbit::check_blockwise_8bit(dtype, codes, absmax, out, n, blocksize)) return s;
    if (int s = kbit::check_cpu(stream, num_threads)) return s;
    switch (dtype) {
      case KBIT_F32: kbit::dequantize_blocks(codes, absmax, static_cast<float*>(out), n, blocksize, num_threads); break;
      case KBIT_F16: kbit::dequantize_blocks(codes, absmax, static_cast<kbit::f16*>(out), n, blocksize, num_threads); break;
      default: kbit::dequantize_blocks(codes, absmax, static_cast<kbit::bf16*>(out), n, blocksize, num_threads); break;
    }
    return KBIT_OK;
  });
}

KBIT_API int kbit_device_count(int32_t* count) {
  return kbit::guarded("kbit_device_count", [&]() -> int {
    KBIT_CHECK(count != nullptr, KBIT_ERR_INVALID_ARGUMENT, "count is NULL");
    *count = 0;  // the CPU library drives no accelerator
    return KBIT_OK;
  });
}

}  // extern "C"
