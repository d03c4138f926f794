/* blockwise4.h: the math of 4-bit blockwise quantization (NF4, FP4) and of the 4-bit matrix-vector product,
 * written once for CPU and CUDA.
 *
 * Definitions (bitsandbytes' format; ../shared/reference/numerics.md):
 *  - absmax[b] = max |x| over block b (float32, unscaled), by numerics/absmax.h's rule (the largest magnitude
 *    bit pattern, NaN-propagating, a NaN stored as the canonical quiet NaN 0x7fc00000).
 *  - Normalisation as in the 8-bit path (blockwise8.h): inv = 1 / absmax once per block, x * inv per element;
 *    absmax == 0 gives inv = 0 (the block dequantizes to exact zeros); a subnormal absmax whose inverse
 *    overflows divides instead.
 *  - NF4: the code is the exact nearest table value to the normalised x; on an exact midpoint the lower code
 *    wins (bitsandbytes' NF4 decision tree tests `x > midpoint`). Implemented as the number of thresholds x
 *    lies above, where each threshold is the largest float32 not above the exact (float64) midpoint, so
 *    `x > t` is exactly `x > midpoint` for every float32 x. (bitsandbytes' tree compares with the midpoints
 *    rounded to nearest float32; for the 6 midpoints where that rounds up, the single float equal to the rounded
 *    midpoint gets the farther, lower code there and the nearest code here.)
 *  - FP4: bit 3 is the sign, set when x < 0 (so -0.0 gets +0's code 0b0000, and a negative x too small for
 *    any non-zero magnitude gets 0b1000, "negative zero", as in bitsandbytes' dQuantizeFP4). The magnitude bits
 *    are the exact nearest magnitude to |x| with ties to the smaller magnitude (bitsandbytes compares |x| with
 *    `>`). bitsandbytes' CUDA tree writes its FP4 midpoints with 6 to 8 digits (0.583333f for 7/12), so within
 *    3e-7 of those midpoints its codes are not the nearest; kbit's are.
 *  - Packing: element 2j in the high nibble of byte j, 2j+1 in the low nibble. Blocks have an even size and
 *    start at even indices, so a byte never spans two blocks. An odd n pads the last low nibble with the code
 *    of 0.0 (NF4 0b0111, FP4 0b0000), which is what bitsandbytes writes (it quantizes a padding 0.0).
 *  - Non-finite input: a block whose absmax is inf or NaN stores the code of 0.0 everywhere and dequantizes
 *    to the canonical quiet NaN, so inf/NaN never become finite numbers (the 8-bit path's rule).
 *  - Dequantize: value = table[code] * absmax in float32 (FP4 code 0b1000 is -0.0), rounded to the output
 *    dtype (nearest-even).
 *  - gemv: y[m, n] = sum_k A[m, k] * w[n, k] with w = table[code] * absmax (float32, not rounded to A's dtype),
 *    summed in float32 in a fixed order: 32 lanes, lane l runs over k = l, l + 32, l + 64, ... in increasing k,
 *    each step one fused multiply-add, lane = fma(A[m, k], w[n, k], lane) (the product is exact, one rounding per
 *    step; gemv_step); then the lanes are combined pairwise, l + 16 into l, then l + 8 into l, ..., l + 1 into l
 *    (a warp's xor butterfly); then the bias (if any) is added once and the sum is rounded to A's dtype. Both
 *    backends follow this order (CUDA's fmaf, the CPU's vfmadd, fused_multiply_add in portable code), so the result does not
 *    depend on the thread count, the instruction set or the backend. (Up to ABI 3 the step was a rounded
 *    product and a rounded add; ABI 4 fused it: the fused step halves the floating-point work of a batch, which is
 *    what bounds gemv once the weight is decoded in registers, and its error bound is smaller.)
 *    Error bound against float64 (w the dequantized weight, the quantization error itself not counted): with
 *    n = ceil(K / 32) + 5 and gamma_n = n u / (1 - n u), u = 2^-24, every term of y passes at most ceil(K / 32)
 *    lane roundings (its own step's and the later ones') and 5 tree levels, so
 *        |y32 - y64| <= gamma_n * sum_k |A[m, k] * w[n, k]|   without a bias;
 *    with a bias, n grows by one (the bias addition) and the bound is gamma_n * (sum_k |A w| + |bias|). The final
 *    rounding to A's dtype adds at most u_T * |y32| (u_T = 2^-11 for float16, 2^-8 for bfloat16, 0 for float32).
 *    tests/ops/test_gemv4.py checks this bound, and checks the order bit for bit against a correctly rounded
 *    fused multiply-add computed in float64 with round-to-odd.
 *  - Transposed gemv (gemv_4bit_t, Linear4bit's input gradient): y[m, k] = sum_n G[m, n] * w[n, k] over the N
 *    weight rows, w as above, summed in float32 in a fixed order: the rows are cut into kGemvTChunks = 32
 *    consecutive chunks of S = ceil(N / 32) rows (chunk c holds rows c S .. min(N, (c + 1) S) - 1, and may be
 *    empty); a chunk's sum starts at +0.0 and runs over its rows in increasing n, each step one fused multiply-add
 *    (gemv_step); the 32 chunk sums are then added in chunk order, ((s0 + s1) + s2) + ... + s31, and the total is
 *    rounded to G's dtype. Every output is one such sum, so a CPU thread owns whole outputs (columns k) and a CUDA
 *    block sums a chunk per warp; the bits do not depend on the thread count, the instruction set or the backend.
 *    Error bound against float64 (as above): n = ceil(N / 32) + 31 roundings at most per term, so
 *        |y32 - y64| <= gamma_n * sum_n |G[m, n] * w[n, k]|,
 *    plus u_T * |y32| for the final rounding to G's dtype. tests/ops/test_gemv4t.py checks both.
 * Compiled with floating-point contraction off on every path, so CPU and GPU produce the same bits.
 */
#pragma once

#include <math.h> /* fmaf */
#include <stdint.h>
#include <string.h> /* memcpy */

#include "kbit.h" /* KBIT_NF4, KBIT_FP4 */
#include "numerics/blockwise8.h"
#include "numerics/float16.h"
#include "numerics/host_device.h"
#include "numerics/quant4_tables.h" /* KBIT_NF4_VALUES, KBIT_FP4_VALUES and the thresholds (ci/gen_numerics.py) */

namespace kbit {

constexpr uint8_t kNf4ZeroCode = 7;  // the code of 0.0, also the padding nibble
constexpr uint8_t kFp4ZeroCode = 0;
constexpr int kGemvLanes = 32;
constexpr int kGemvTChunks = 32;  // chunks of weight rows in the transposed gemv's order

/* Rows per chunk of the transposed gemv (S above) for N weight rows; chunk c starts at min(N, c * S). */
KBIT_HD int64_t gemv_t_chunk_rows(int64_t N) { return (N + kGemvTChunks - 1) / kGemvTChunks; }

/* The code of 0.0 for a quant type (KBIT_NF4 or KBIT_FP4). */
KBIT_HD uint8_t zero_code_4bit(int32_t quant_type) { return quant_type == KBIT_FP4 ? kFp4ZeroCode : kNf4ZeroCode; }

/* -1 when x > t, else 0: a compare mask, summed with subtraction (vectorizers keep it in the compare's lanes). */
KBIT_HD int32_t above_mask(float x, float t) { return -static_cast<int32_t>(x > t); }

/* NF4: the number of exact midpoints x lies above (15 branch-free compares). Ties go to the lower code. */
KBIT_HD uint32_t nf4_code(float x) {
  int32_t c = 0;
#define KBIT_NF4_STEP(t) c -= above_mask(x, t);
  KBIT_NF4_THRESHOLDS(KBIT_NF4_STEP)
#undef KBIT_NF4_STEP
  return static_cast<uint32_t>(c);
}

/* FP4: sign bit from x < 0; magnitude rank r = number of exact magnitude midpoints |x| lies above (ties to the
 * smaller magnitude); the FP4 bits of rank r (magnitudes ascending: 000 001 110 111 100 101 010 011) are
 * r ^ ((r & 2) << 1). */
KBIT_HD uint32_t fp4_code(float x) {
  const float a = x < 0.0f ? -x : x;
  int32_t r = 0;
#define KBIT_FP4_STEP(t) r -= above_mask(a, t);
  KBIT_FP4_MAGNITUDE_THRESHOLDS(KBIT_FP4_STEP)
#undef KBIT_FP4_STEP
  const uint32_t rank = static_cast<uint32_t>(r);
  return (rank ^ ((rank & 2u) << 1)) | (x < 0.0f ? 8u : 0u);
}

template <int32_t QuantType>
KBIT_HD uint32_t code_4bit(float normalized) {
  return QuantType == KBIT_FP4 ? fp4_code(normalized) : nf4_code(normalized);
}

/* One byte of two codes: `hi` is the element at the even index. */
KBIT_HD uint8_t pack_4bit(uint32_t hi, uint32_t lo) { return static_cast<uint8_t>((hi << 4) | lo); }

/* The code of nibble i (flat element index) of a packed tensor. */
KBIT_HD uint32_t nibble_at(const uint8_t* packed, int64_t i) {
  const uint32_t byte = packed[i >> 1];
  return (i & 1) ? (byte & 15u) : (byte >> 4);
}

/* Dequantized value in float32; a non-finite block's values are one canonical quiet NaN. */
KBIT_HD float dequantize_4bit_value(uint32_t code, float absmax, const float* table) {
  return is_finite_scale(absmax) ? table[code] * absmax : canonical_nan();
}

/* a * b + c with one rounding, the same bits on every platform. CUDA's fmaf and a compiler that emits the hardware
 * instruction for fmaf (__FP_FAST_FMAF: aarch64, or x86 built with FMA) are used as they are. Otherwise the C
 * library's fmaf cannot be trusted (mingw-w64's rounds twice), so it is computed here: the product of two float32
 * values is exact in float64; s = RN(p + c) and its exact error e (TwoSum) give the exact sum s + e; s is rounded to
 * odd (toward zero, then the last bit set when e != 0), and rounding that to float32 is the correctly rounded
 * result (53 >= 2 * 24 + 2 bits, Boldo and Melquiond's round-to-odd). Needs float64 without extended precision
 * (SSE2 on x86-64, every aarch64, MSVC x64). */
KBIT_HD float fused_multiply_add(float a, float b, float c) {
#if defined(__CUDA_ARCH__) || defined(__FP_FAST_FMAF)
  return fmaf(a, b, c);
#else
  const double p = static_cast<double>(a) * static_cast<double>(b), cd = static_cast<double>(c);
  double s = p + cd;
  const double bp = s - p;
  const double e = (p - (s - bp)) + (cd - bp);
  if (e != 0.0 && s - s == 0.0) {  // inexact and finite (s is then non-zero)
    uint64_t bits;
    memcpy(&bits, &s, sizeof bits);
    if ((e > 0.0) != (s > 0.0)) bits -= 1;  // s was rounded away from zero: one step back toward zero
    bits |= 1u;                             // round to odd
    memcpy(&s, &bits, sizeof s);
  }
  return static_cast<float>(s);
#endif
}

/* One gemv term: the lane's running sum plus A's value times the dequantized weight, fused (one rounding). */
KBIT_HD float gemv_step(float acc, float a, float w) { return fused_multiply_add(a, w, acc); }

/* The output of one gemv dot product from its lane-0 sum: bias added once (when present), in float32. */
KBIT_HD float gemv_finish(float sum, bool has_bias, float bias) { return has_bias ? sum + bias : sum; }

}  // namespace kbit
