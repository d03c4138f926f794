/* avx512_emulated.h: AVX-512F intrinsics in portable code (SIMDe), for test builds only (cmake
 * -DKBIT_EMULATE_AVX512=ON; tests/ops/test_avx512_emulated.py). Owns nothing a release library uses.
 *
 * The library's AVX-512 copies (the *_avx512 loops of cpu/gemv4.cpp) can only run on a CPU with AVX-512F; this
 * header lets a machine without it run them: simd4.h includes it instead of asking the CPU, SIMDe's native
 * aliases turn every _mm512_* intrinsic into its own implementation, and the build passes -mavx2 -mfma so that
 * SIMDe computes a 512-bit fused multiply-add as two 256-bit vfmadd (one rounding, as AVX-512's). Every emulated
 * intrinsic performs the same IEEE operation per lane, so the bits are those of the real instructions, and the
 * test compares them with the AVX2 and baseline copies. Intrinsics SIMDe 0.7.4 lacks are written below from
 * Intel's definitions. */
#pragma once

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

/* vpmovzxbd zmm: 16 unsigned bytes zero-extended to 16 int32 lanes, in order. */
static inline simde__m512i kbit_emulated_mm512_cvtepu8_epi32(simde__m128i a) {
  return simde_mm512_inserti64x4(simde_mm512_castsi256_si512(simde_mm256_cvtepu8_epi32(a)),
                                 simde_mm256_cvtepu8_epi32(simde_mm_srli_si128(a, 8)), 1);
}
#define _mm512_cvtepu8_epi32(a) kbit_emulated_mm512_cvtepu8_epi32(a)
