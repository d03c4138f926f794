/* blockwise8.cpp: CPU entry points of 8-bit blockwise quantization (libkbit_cpu).
 * The math is numerics/blockwise8.h; this file owns only the loops over blocks and their threading
 * (cpu/parallel.h across blocks, with the thread count the caller passes). */
#include <string.h>

#include <type_traits>

#include "common/args.h"
#include "common/host_tables.h"
#include "cpu/parallel.h"
#include "cpu/simd4.h"
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
void quantize_block(const T* in, uint8_t* out, int64_t len, float absmax, const MapView& map, uint8_t zero) {
  if (!is_finite_scale(absmax)) {
    for (int64_t i = 0; i < len; ++i) out[i] = zero;
    return;
  }
  const float inv = inverse_absmax(absmax);
  if (inv > kFloatMax || map.buckets == nullptr) {  // subnormal absmax or a map without bucket tables
    for (int64_t i = 0; i < len; ++i) out[i] = nearest_code(normalize(to_float(in[i]), absmax, inv), map);
    return;
  }
  // a finite absmax means no NaN in the block, so x is never NaN: the table load and the comparison suffice
  const uint8_t* buckets = map.buckets;
  const float* above = map.above;
  for (int64_t i = 0; i < len; ++i) {
    const float x = to_float(in[i]) * inv;
    const int c = buckets[float_bits(x) >> 16];
    out[i] = static_cast<uint8_t>(c + static_cast<int>(x > above[c]));
  }
}

template <class T>
void quantize_blocks(const T* in, float* absmax, uint8_t* out, int64_t n, int32_t bs, int32_t threads,
                     const MapView& map, uint8_t zero) {
  const int64_t blocks = block_count(n, bs);
  parallel_for(blocks, team_for(n, threads), [&](int64_t b) {
    const int64_t start = b * bs;
    const int64_t len = n - start < bs ? n - start : bs;
    const float m = block_absmax(in + start, len);
    absmax[b] = m;
    quantize_block(in + start, out + start, len, m, map, zero);
  });
}

#if KBIT_X86_DISPATCH
/* The finite-scale part of a float block with non-temporal stores (SSE, in the x86-64 baseline): a large
 * output is not read into the cache before it is written, which is what holds a plain loop below copy speed.
 * Blocks of 256 or more first tabulate their 256 possible outputs (values[c] * scale, the multiply of
 * dequantize_8bit, so the same bits) and then only look up; shorter blocks multiply per element.
 * Returns how many elements it wrote; the caller's loop does the rest. */
int64_t stream_block(const uint8_t* codes, float* out, int64_t len, float scale, const float* values) {
  if (!is_finite_scale(scale)) return 0;
  int64_t i = 0;
  for (; i < len && (reinterpret_cast<uintptr_t>(out + i) & 15u) != 0; ++i)
    out[i] = dequantize_8bit(codes[i], scale, values);
  if (len < 256) {
    const __m128 s = _mm_set1_ps(scale);
    for (; i + 4 <= len; i += 4) {
      const uint8_t* k = codes + i;
      const __m128 v = _mm_setr_ps(values[k[0]], values[k[1]], values[k[2]], values[k[3]]);
      _mm_stream_ps(out + i, _mm_mul_ps(v, s));
    }
    return i;
  }
  alignas(64) float scaled[256];
  for (int c = 0; c < 256; ++c) scaled[c] = values[c] * scale;
  for (; i + 8 <= len; i += 8) {
    const uint8_t* k = codes + i;
    _mm_stream_ps(out + i, _mm_setr_ps(scaled[k[0]], scaled[k[1]], scaled[k[2]], scaled[k[3]]));
    _mm_stream_ps(out + i + 4, _mm_setr_ps(scaled[k[4]], scaled[k[5]], scaled[k[6]], scaled[k[7]]));
  }
  return i;
}
#endif

template <class T>
void dequantize_blocks(const uint8_t* codes, const float* absmax, T* out, int64_t n, int32_t bs, int32_t threads,
                       const float* values) {
  const int64_t blocks = block_count(n, bs);
  // stream_block writes float outputs only
  const bool streaming = std::is_same<T, float>::value && stream_past_cache(out, n * static_cast<int64_t>(sizeof(T)));
  (void)streaming;  // only the x86 path streams
  parallel_ranges(blocks, team_for(n, threads), [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int64_t start = b * bs;
      const int64_t len = n - start < bs ? n - start : bs;
      const float scale = absmax[b];
      int64_t i = 0;
#if KBIT_X86_DISPATCH
      if constexpr (std::is_same<T, float>::value) {
        if (streaming) i = stream_block(codes + start, out + start, len, scale, values);
      }
#endif
      for (; i < len; ++i) out[start + i] = from_float<T>(dequantize_8bit(codes[start + i], scale, values));
    }
#if KBIT_X86_DISPATCH
    if (streaming) _mm_sfence();  // this thread's streamed stores are visible before the region ends
#endif
  });
}

/* The search view of a caller's map: the dynamic maps (compared bit for bit) get their bucket tables, which
 * give the same exact codes in one load; any other map gets its midpoints computed here (split_midpoint). */
struct CallerMap {
  float mid_hi[255], mid_lo[255];
  MapView view;
  uint8_t zero;

  explicit CallerMap(const float* values) {
    for (int32_t id : {KBIT_MAP_DYNAMIC_SIGNED, KBIT_MAP_DYNAMIC_UNSIGNED}) {
      const MapView& known = host_map(id);
      if (memcmp(values, known.values, 256 * sizeof(float)) == 0) {
        view = known;
        zero = zero_code(known.mid_hi, known.mid_lo);
        return;
      }
    }
    for (int c = 0; c < 255; ++c) split_midpoint(values[c], values[c + 1], &mid_hi[c], &mid_lo[c]);
    view = MapView{values, mid_hi, mid_lo};
    zero = zero_code(mid_hi, mid_lo);
  }
};

}  // namespace
}  // namespace kbit

extern "C" {

KBIT_API int kbit_quantize_blockwise_8bit(int32_t dtype, const void* A, float* absmax, uint8_t* out, int64_t n,
                                          int32_t blocksize, void* stream, int32_t num_threads) {
  return kbit::guarded("kbit_quantize_blockwise_8bit", [&]() -> int {
    if (int s = kbit::check_blockwise_8bit(dtype, A, absmax, out, n, blocksize)) return s;
    if (int s = kbit::check_host_launch(stream, num_threads)) return s;
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      kbit::quantize_blocks(static_cast<const T*>(A), absmax, out, n, blocksize, num_threads,
                            kbit::host_map(KBIT_MAP_DYNAMIC_SIGNED), kbit::kSignedZeroCode);
      return KBIT_OK;
    });
  });
}

KBIT_API int kbit_dequantize_blockwise_8bit(int32_t dtype, const uint8_t* codes, const float* absmax, void* out,
                                            int64_t n, int32_t blocksize, void* stream, int32_t num_threads) {
  return kbit::guarded("kbit_dequantize_blockwise_8bit", [&]() -> int {
    if (int s = kbit::check_blockwise_8bit(dtype, codes, absmax, out, n, blocksize)) return s;
    if (int s = kbit::check_host_launch(stream, num_threads)) return s;
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      kbit::dequantize_blocks(codes, absmax, static_cast<T*>(out), n, blocksize, num_threads, kbit::kSignedValues);
      return KBIT_OK;
    });
  });
}

KBIT_API int kbit_quantize_blockwise_8bit_map(int32_t dtype, const float* code, const void* A, float* absmax,
                                              uint8_t* out, int64_t n, int32_t blocksize, void* stream,
                                              int32_t num_threads) {
  return kbit::guarded("kbit_quantize_blockwise_8bit_map", [&]() -> int {
    if (int s = kbit::check_blockwise_8bit_map(dtype, code, A, absmax, out, n, blocksize, KBIT_BLOCKSIZE_8BIT_MAX_CPU)) return s;
    if (int s = kbit::check_host_launch(stream, num_threads)) return s;
    if (int s = kbit::check_map_values(code)) return s;
    const kbit::CallerMap map(code);
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      kbit::quantize_blocks(static_cast<const T*>(A), absmax, out, n, blocksize, num_threads, map.view, map.zero);
      return KBIT_OK;
    });
  });
}

KBIT_API int kbit_dequantize_blockwise_8bit_map(int32_t dtype, const float* code, const uint8_t* codes,
                                                const float* absmax, void* out, int64_t n, int32_t blocksize,
                                                void* stream, int32_t num_threads) {
  return kbit::guarded("kbit_dequantize_blockwise_8bit_map", [&]() -> int {
    if (int s = kbit::check_blockwise_8bit_map(dtype, code, codes, absmax, out, n, blocksize, KBIT_BLOCKSIZE_8BIT_MAX_CPU)) return s;
    if (int s = kbit::check_host_launch(stream, num_threads)) return s;
    if (int s = kbit::check_map_values(code)) return s;
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      kbit::dequantize_blocks(codes, absmax, static_cast<T*>(out), n, blocksize, num_threads, code);
      return KBIT_OK;
    });
  });
}

}  // extern "C"
