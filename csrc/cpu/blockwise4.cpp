/* blockwise4.cpp: CPU entry points of 4-bit blockwise quantization (libkbit_cpu).
 * The math is numerics/blockwise4.h; this file owns the loops over blocks, their threading (cpu/parallel.h across
 * blocks, with the caller's thread count) and their shape for the compiler's vectorizer: the absmax is an
 * integer max, the code a sum of compares, and dequantization a lookup in a per-block table of the 16 scaled
 * values (each entry is table[code] * absmax, the same product the per-element formula computes).
 *
 * Instruction sets (x86-64 with GCC or Clang, cpu/simd4.h): the block loops are compiled for the x86-64 baseline
 * and again for AVX2, and the AVX2 copy runs when the CPU has it (no build flag above the baseline). Both copies
 * run the same IEEE operations without contraction, so they write identical bits; KBIT_CPU_BASELINE=1 in the
 * environment forces the baseline copy, which is how the tests compare them. Large dequantized outputs are
 * written with non-temporal stores (SSE2), which skip reading the destination into the cache first. */
#include <string.h>

#include "common/args.h"
#include "common/host_tables.h"
#include "cpu/parallel.h"
#include "cpu/simd4.h"
#include "numerics/blockwise4.h"
#include "numerics/float16.h"

namespace kbit {
namespace {

const float* table_4bit(int32_t quant_type) { return quant_type == KBIT_FP4 ? kFp4Values : kNf4Values; }


// ------------------------------------------------------------------------------------------ quantize

template <int32_t Q, class T>
KBIT_ALWAYS_INLINE void quantize_block_body(const T* __restrict in, float* absmax_out, uint8_t* __restrict out,
                                            int64_t len) {
  int32_t m = 0;  // abs bits are <= 0x7fffffff: a signed max is the unsigned one and vectorizes on SSE2
  for (int64_t i = 0; i < len; ++i) {
    const int32_t a = static_cast<int32_t>(magnitude_bits(to_float(in[i])));
    m = a > m ? a : m;
  }
  const float absmax = magnitude_value<float>(static_cast<uint32_t>(m));
  *absmax_out = absmax;
  const int64_t pairs = len / 2;
  if (!is_finite_scale(absmax)) {
    memset(out, pack_4bit(zero_code_4bit(Q), zero_code_4bit(Q)), static_cast<size_t>((len + 1) / 2));
    return;
  }
  const float inv = inverse_absmax(absmax);
  // codes first, in 32-bit lanes over contiguous elements (the compare chain vectorizes best so), then paired
  alignas(32) uint32_t codes[4096];
  if (inv > kFloatMax) {  // subnormal absmax: 1 / absmax overflows, divide (normalize() in blockwise8.h)
    for (int64_t i = 0; i < len; ++i) codes[i] = code_4bit<Q>(to_float(in[i]) / absmax);
  } else {
    for (int64_t i = 0; i < len; ++i) codes[i] = code_4bit<Q>(to_float(in[i]) * inv);
  }
  for (int64_t j = 0; j < pairs; ++j) out[j] = pack_4bit(codes[2 * j], codes[2 * j + 1]);
  if (len & 1) out[pairs] = pack_4bit(codes[len - 1], zero_code_4bit(Q));
}

template <int32_t Q, class T>
void quantize_block_base(const T* in, float* absmax, uint8_t* out, int64_t len) {
  quantize_block_body<Q>(in, absmax, out, len);
}

#if KBIT_X86_DISPATCH
template <int32_t Q, class T>
KBIT_TARGET_AVX2 void quantize_block_avx2(const T* in, float* absmax, uint8_t* out, int64_t len) {
  quantize_block_body<Q>(in, absmax, out, len);
}
#endif

template <int32_t Q, class T>
void quantize_all(const T* in, float* absmax, uint8_t* out, int64_t n, int32_t bs, int32_t threads) {
  auto block = &quantize_block_base<Q, T>;
#if KBIT_X86_DISPATCH
  if (use_avx2()) block = &quantize_block_avx2<Q, T>;
#endif
  const int64_t blocks = block_count(n, bs);
  parallel_for(blocks, team_for(n, threads), [&](int64_t b) {
    const int64_t start = b * bs;
    block(in + start, absmax + b, out + start / 2, n - start < bs ? n - start : bs);
  });
}

template <class T>
void quantize_typed(int32_t quant_type, const void* A, float* absmax, uint8_t* out, int64_t n, int32_t bs,
                    int32_t threads) {
  const T* in = static_cast<const T*>(A);
  if (quant_type == KBIT_FP4) {
    quantize_all<KBIT_FP4>(in, absmax, out, n, bs, threads);
  } else {
    quantize_all<KBIT_NF4>(in, absmax, out, n, bs, threads);
  }
}

// ------------------------------------------------------------------------------------------ dequantize

/* The 16 values of one block in the output type. */
template <class T>
void block_table(const float* table, float absmax, T* scaled) {
  for (uint32_t c = 0; c < 16; ++c) scaled[c] = from_float<T>(dequantize_4bit_value(c, absmax, table));
}

template <class T>
void dequantize_pairs(const uint8_t* __restrict src, T* __restrict dst, int64_t pairs, const T* scaled) {
  for (int64_t j = 0; j < pairs; ++j) {
    const uint32_t byte = src[j];
    dst[2 * j] = scaled[byte >> 4];
    dst[2 * j + 1] = scaled[byte & 15u];
  }
}

#if KBIT_X86_DISPATCH
/* The same values as dequantize_pairs, written 16 bytes at a time with non-temporal stores (SSE2); dst is
 * 16-byte aligned. Returns the number of pairs written. */
int64_t stream_pairs(const uint8_t* src, float* dst, int64_t pairs, const float* s) {
  int64_t j = 0;
  for (; j + 2 <= pairs; j += 2) {
    const uint32_t b0 = src[j], b1 = src[j + 1];
    _mm_stream_ps(dst + 2 * j, _mm_setr_ps(s[b0 >> 4], s[b0 & 15u], s[b1 >> 4], s[b1 & 15u]));
  }
  return j;
}

template <class H>  // f16 or bf16: 8 values per store
int64_t stream_pairs(const uint8_t* src, H* dst, int64_t pairs, const H* s) {
  int64_t j = 0;
  for (; j + 4 <= pairs; j += 4) {
    const uint32_t b0 = src[j], b1 = src[j + 1], b2 = src[j + 2], b3 = src[j + 3];
    const __m128i v = _mm_setr_epi16(
        static_cast<short>(s[b0 >> 4].bits), static_cast<short>(s[b0 & 15u].bits), static_cast<short>(s[b1 >> 4].bits),
        static_cast<short>(s[b1 & 15u].bits), static_cast<short>(s[b2 >> 4].bits), static_cast<short>(s[b2 & 15u].bits),
        static_cast<short>(s[b3 >> 4].bits), static_cast<short>(s[b3 & 15u].bits));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 2 * j), v);
  }
  return j;
}

/* The fastest path this CPU has for a block's leading pairs; returns how many pairs it wrote. */
template <class T>
int64_t fast_pairs(const uint8_t* src, T* dst, int64_t pairs, const T* scaled, bool streaming) {
  if (use_avx2()) {
    return streaming ? lookup_pairs_avx2<true>(src, dst, pairs, scaled)
                     : lookup_pairs_avx2<false>(src, dst, pairs, scaled);
  }
  return streaming ? stream_pairs(src, dst, pairs, scaled) : 0;
}
#endif

template <class T>
void dequantize_all(const uint8_t* packed, const float* absmax, T* out, int64_t n, int32_t bs, const float* table,
                    int32_t threads) {
  const int64_t blocks = block_count(n, bs);
  const bool streaming = stream_past_cache(out, n * static_cast<int64_t>(sizeof(T)));
  (void)streaming;  // only the x86 paths stream
  parallel_ranges(blocks, team_for(n, threads), [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int64_t start = b * bs;
      const int64_t len = n - start < bs ? n - start : bs;
      T scaled[16];
      block_table(table, absmax[b], scaled);
      const uint8_t* src = packed + start / 2;
      T* dst = out + start;
      const int64_t pairs = len / 2;
      int64_t done = 0;
#if KBIT_X86_DISPATCH
      done = fast_pairs(src, dst, pairs, scaled, streaming);
#endif
      dequantize_pairs(src + done, dst + 2 * done, pairs - done, scaled);
      if (len & 1) dst[len - 1] = scaled[src[pairs] >> 4];
    }
#if KBIT_X86_DISPATCH
    if (streaming) _mm_sfence();  // make the non-temporal stores visible before the call returns
#endif
  });
}

}  // namespace
}  // namespace kbit

extern "C" {

KBIT_API int kbit_quantize_4bit(int32_t dtype, int32_t quant_type, const void* A, float* absmax, uint8_t* packed,
                                int64_t n, int32_t blocksize, void* stream, int32_t num_threads) {
  return kbit::guarded("kbit_quantize_4bit", [&]() -> int {
    if (int s = kbit::check_blockwise_4bit(dtype, quant_type, A, absmax, packed, n, blocksize)) return s;
    if (int s = kbit::check_host_launch(stream, num_threads)) return s;
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      kbit::quantize_typed<T>(quant_type, A, absmax, packed, n, blocksize, num_threads);
      return KBIT_OK;
    });
  });
}

KBIT_API int kbit_dequantize_4bit(int32_t dtype, int32_t quant_type, const uint8_t* packed, const float* absmax,
                                  void* out, int64_t n, int32_t blocksize, void* stream, int32_t num_threads) {
  return kbit::guarded("kbit_dequantize_4bit", [&]() -> int {
    if (int s = kbit::check_blockwise_4bit(dtype, quant_type, packed, absmax, out, n, blocksize)) return s;
    if (int s = kbit::check_host_launch(stream, num_threads)) return s;
    const float* table = kbit::table_4bit(quant_type);
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      kbit::dequantize_all(packed, absmax, static_cast<T*>(out), n, blocksize, table, num_threads);
      return KBIT_OK;
    });
  });
}

}  // extern "C"
