/* simd4.h: the x86 instruction-set switch of the CPU 4-bit kernels (internal to libkbit_cpu).
 * Owns: which copy of a hot loop runs (the x86-64 baseline; AVX2 when the CPU and OS have it and
 * KBIT_CPU_BASELINE is not "1"; AVX-512F for the loops where it pays, unless KBIT_CPU_NO_AVX512 is "1"), and the
 * AVX2 lookup of a block's 16 dequantized values. Every AVX2 / AVX-512 routine performs the same IEEE operations
 * (or the same table lookups; the gemv's fused multiply-adds are vfmadd there and numerics/blockwise4.h's
 * fused_multiply_add in the portable loop) as the portable loop it replaces, so results are identical bit for bit;
 * tests/ops/test_blockwise4.py and tests/ops/test_gemv4.py compare the paths. No build flag above the baseline is
 * used. GCC and Clang (x86-64) compile AVX2 and AVX-512 code per function with a target attribute and ask the CPU
 * through __builtin_cpu_supports. MSVC (x64) compiles the intrinsics in any function as they are and is asked here
 * through cpuid and xgetbv; KBIT_SIMD_PLAIN_INTRINSICS=1 selects that branch with MinGW GCC, which is how
 * ci/smoke_windows.py builds and runs it on Linux (with the ISA flags GCC needs for intrinsics outside a target). */
#pragma once

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(_MSC_VER) && defined(_M_X64) && !defined(__clang__)) || KBIT_SIMD_PLAIN_INTRINSICS
#define KBIT_X86_DISPATCH 1
#define KBIT_X86_CPUID 1
#include <immintrin.h>
#include <intrin.h>
#define KBIT_TARGET_AVX2
#define KBIT_TARGET_AVX512
#define KBIT_ALWAYS_INLINE __forceinline
#elif (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && KBIT_EMULATE_AVX512
/* Test builds only (cpu/avx512_emulated.h): the whole library compiled for AVX2 + FMA, the AVX-512 copies run on
 * SIMDe's emulation of the intrinsics whatever the CPU has. */
#define KBIT_X86_DISPATCH 1
#define KBIT_X86_CPUID 0
#include <immintrin.h>
#include "cpu/avx512_emulated.h"
#define KBIT_TARGET_AVX2
#define KBIT_TARGET_AVX512
#define KBIT_ALWAYS_INLINE inline __attribute__((always_inline))
#elif (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define KBIT_X86_DISPATCH 1
#define KBIT_X86_CPUID 0
#include <immintrin.h>
#define KBIT_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define KBIT_TARGET_AVX512 __attribute__((target("avx512f")))
#define KBIT_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define KBIT_X86_DISPATCH 0
#define KBIT_ALWAYS_INLINE inline
#endif

/* Keeps a loaded vector in a register. GCC and Clang otherwise fold the load into every instruction that uses it
 * (one multiply-add per weight row of a tile), which multiplies the loads of a loop bound by them. The empty asm
 * emits nothing. MSVC: nothing. */
#if (defined(__GNUC__) || defined(__clang__)) && !KBIT_EMULATE_AVX512
#define KBIT_IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define KBIT_IN_REGISTER(v) ((void)0)
#endif

namespace kbit {

/* Outputs of at least this many bytes are written past the cache (non-temporal stores). */
constexpr int64_t kStreamingBytes = int64_t{16} << 20;

/* The one decision to stream a dequantized output of `bytes` bytes at `out` past the cache: x86 (SSE2 stores),
 * large enough that reading the destination into the cache first would cost more than it saves, and 32-byte
 * aligned (blocks start at multiples of 32 elements, so every block's start stays aligned). The stores write the
 * same bits as plain ones. */
inline bool stream_past_cache(const void* out, int64_t bytes) {
  return KBIT_X86_DISPATCH && bytes >= kStreamingBytes && reinterpret_cast<uintptr_t>(out) % 32 == 0;
}

#if KBIT_X86_DISPATCH
#if KBIT_X86_CPUID
/* cpuid leaf `leaf` (sub-leaf 0): eax, ebx, ecx, edx. */
inline void cpuid(int leaf, int regs[4]) { __cpuidex(regs, leaf, 0); }

/* Whether the OS saves every register state in `mask` (XCR0 bits: 0x6 = xmm + ymm; 0xe6 adds the AVX-512 opmask
 * and zmm states): cpuid says OSXSAVE, then xgetbv(0). */
inline bool os_saves(unsigned long long mask) {
  int r[4];
  cpuid(1, r);
  return (r[2] & (1 << 27)) != 0 && (_xgetbv(0) & mask) == mask;
}

/* AVX2 and FMA on the CPU (cpuid 1: ecx bit 12 FMA, bit 28 AVX; cpuid 7: ebx bit 5 AVX2) with ymm state saved. */
inline bool cpu_avx2_fma() {
  int r[4];
  cpuid(0, r);
  if (r[0] < 7) return false;
  cpuid(1, r);
  const bool fma = (r[2] & (1 << 12)) != 0, avx = (r[2] & (1 << 28)) != 0;
  cpuid(7, r);
  return fma && avx && (r[1] & (1 << 5)) != 0 && os_saves(0x6);
}

/* AVX-512F on the CPU (cpuid 7: ebx bit 16) with the opmask and zmm states saved. */
inline bool cpu_avx512f() {
  int r[4];
  cpuid(0, r);
  if (r[0] < 7) return false;
  cpuid(7, r);
  return (r[1] & (1 << 16)) != 0 && os_saves(0xe6);
}
#else
/* The same questions through GCC's and Clang's cpu model (it checks the OS's xgetbv state too). */
inline bool cpu_avx2_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#if KBIT_EMULATE_AVX512
inline bool cpu_avx512f() { return true; }  // emulated (test builds)
#else
inline bool cpu_avx512f() { return __builtin_cpu_supports("avx512f"); }
#endif
#endif

/* Whether the AVX2 copies run: the CPU (and OS) support AVX2 and FMA (the gemv's fused steps; every AVX2 CPU made
 * has FMA) and KBIT_CPU_BASELINE is not "1". Read once. */
inline bool use_avx2() {
  static const bool avx2 = [] {
    const char* forced = getenv("KBIT_CPU_BASELINE");
    return cpu_avx2_fma() && !(forced != nullptr && forced[0] == '1');
  }();
  return avx2;
}

/* Whether the AVX-512 (F) copies run: the CPU and OS support AVX-512F (the OS saves the zmm and mask state), the
 * AVX2 copies run, and KBIT_CPU_NO_AVX512 is not "1" (how the tests run the AVX2 copies on an AVX-512 machine).
 * Read once. */
inline bool use_avx512() {
  static const bool avx512 = [] {
    const char* capped = getenv("KBIT_CPU_NO_AVX512");
    return use_avx2() && cpu_avx512f() && !(capped != nullptr && capped[0] == '1');
  }();
  return avx512;
}
#endif

#if KBIT_X86_DISPATCH
/* 2k nibbles of k bytes in element order (high nibble first), one per byte lane. */
KBIT_TARGET_AVX2 inline __m128i nibbles_in_order(__m128i bytes) {
  const __m128i mask = _mm_set1_epi8(15);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
  return _mm_unpacklo_epi8(hi, _mm_and_si128(bytes, mask));
}

/* AVX2 lookup of the 16 block values: 8 float32 outputs per step from 4 bytes (two 8-entry permutes, the
 * code's bit 3 choosing between them). Stream: non-temporal stores, dst 32-byte aligned. */
template <bool Stream>
KBIT_TARGET_AVX2 inline int64_t lookup_pairs_avx2(const uint8_t* src, float* dst, int64_t pairs, const float* s) {
  const __m256 low = _mm256_loadu_ps(s), high = _mm256_loadu_ps(s + 8);
  int64_t j = 0;
  for (; j + 4 <= pairs; j += 4) {
    int32_t four;
    memcpy(&four, src + j, 4);
    const __m256i idx = _mm256_cvtepu8_epi32(nibbles_in_order(_mm_cvtsi32_si128(four)));
    const __m256 pick = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  // bit 3 -> sign bit
    const __m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(low, idx), _mm256_permutevar8x32_ps(high, idx), pick);
    if (Stream) {
      _mm256_stream_ps(dst + 2 * j, v);
    } else {
      _mm256_storeu_ps(dst + 2 * j, v);
    }
  }
  return j;
}

/* AVX2 (SSSE3 byte shuffles) lookup for 16-bit outputs: 16 values per step from 8 bytes. */
template <bool Stream, class H>
KBIT_TARGET_AVX2 inline int64_t lookup_pairs_avx2(const uint8_t* src, H* dst, int64_t pairs, const H* s) {
  alignas(16) uint8_t lo_bytes[16], hi_bytes[16];
  for (int c = 0; c < 16; ++c) {
    lo_bytes[c] = static_cast<uint8_t>(s[c].bits & 0xff);
    hi_bytes[c] = static_cast<uint8_t>(s[c].bits >> 8);
  }
  const __m128i lo_table = _mm_load_si128(reinterpret_cast<const __m128i*>(lo_bytes));
  const __m128i hi_table = _mm_load_si128(reinterpret_cast<const __m128i*>(hi_bytes));
  int64_t j = 0;
  for (; j + 8 <= pairs; j += 8) {
    const __m128i idx = nibbles_in_order(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + j)));
    const __m128i lo = _mm_shuffle_epi8(lo_table, idx), hi = _mm_shuffle_epi8(hi_table, idx);
    const __m256i v = _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
    if (Stream) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + 2 * j), v);
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * j), v);
    }
  }
  return j;
}
#endif

}  // namespace kbit
