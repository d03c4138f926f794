/* blockwise8.h: the math of 8-bit blockwise dynamic quantization, written once for CPU and CUDA.
 *
 * Definitions (bitsandbytes' format; ../shared/reference/numerics.md):
 *  - absmax[b] = max |x| over block b, as float32, unscaled.
 *  - A value is normalised by multiplying with inv = 1 / absmax (a float32 division done once per block,
 *    then one float32 multiply per element, as bitsandbytes does). Two edges are defined here:
 *      absmax == 0 (all-zero block): inv = 0, every element normalises to 0 and dequantizes to exactly 0;
 *      absmax subnormal so that 1/absmax overflows: the element is divided by absmax instead.
 *  - The code is the exact nearest map value to the normalised value; on an exact midpoint the lower code
 *    wins (bitsandbytes' `x > midpoint` decision trees and its argmin reference do the same).
 *  - Non-finite input: absmax propagates NaN (a NaN anywhere makes absmax NaN) and inf; a block whose absmax
 *    is not finite stores the zero code for every element, so the whole block dequantizes to NaN
 *    (the canonical quiet NaN). Nothing non-finite is ever hidden as a finite value.
 *  - Dequantize: value = map[code] * absmax in float32, then rounded to the output dtype (nearest-even).
 * Compiled with floating-point contraction off on every path, so CPU and GPU produce the same bits.
 */
#pragma once

#include <stdint.h>

#include "numerics/absmax.h" /* the absmax rule and its canonical NaN */
#include "numerics/float16.h"
#include "numerics/host_device.h"

namespace kbit {

constexpr float kFloatMax = 3.40282346638528859811704183484516925e+38f;
constexpr uint8_t kSignedZeroCode = 127;

/* The storage of one map as the numerics need it: values[256] and the exact midpoints mid_hi/lo[255].
 * Host maps (common/host_tables.h host_map) also carry the bucket search tables (nearest_code_bucketed):
 * buckets[65536], the candidate code for each value of a float's top 16 bits, and above[256], the largest
 * float that is not above the midpoint following each code (+inf for code 255). */
struct MapView {
  const float* values;
  const float* mid_hi;
  const float* mid_lo;
  const uint8_t* buckets = nullptr;
  const float* above = nullptr;
};

KBIT_HD bool is_finite_scale(float absmax) { return absmax <= kFloatMax; }

KBIT_HD float inverse_absmax(float absmax) { return absmax == 0.0f ? 0.0f : 1.0f / absmax; }

KBIT_HD float normalize(float x, float absmax, float inv) { return inv > kFloatMax ? x / absmax : x * inv; }

/* Exactly `x > hi + lo`, where (hi, lo) is a midpoint split into two floats (lo is 0 or half an ulp of hi). */
KBIT_HD int above_midpoint(float x, float hi, float lo) {
  // bitwise, not short-circuit: the comparisons become flag moves, not unpredictable branches (8 per element)
  return static_cast<int>(x > hi) | (static_cast<int>(x == hi) & static_cast<int>(lo < 0.0f));
}

/* The nearest code to x: the number of midpoints x lies strictly above (8 branch-free halving steps). */
KBIT_HD uint8_t nearest_code(float x, const float* mid_hi, const float* mid_lo) {
  int code = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int step = 128; step >= 1; step >>= 1) {
    const int probe = code + step - 1;  // never above 254 (see the sum of the steps)
    code += step * above_midpoint(x, mid_hi[probe], mid_lo[probe]);
  }
  return static_cast<uint8_t>(code);
}

/* The same exact answer in one table load and one comparison (host maps only). All floats sharing their
 * top 16 bits form a value interval, and host_map() checks, while building the tables, that no interval
 * holds more than one midpoint (the dynamic maps' midpoints are more than 2^-7 relative apart); so the
 * nearest code is the interval's candidate or the code after it. `x > above[c]` is exactly
 * `x > mid_hi[c] + mid_lo[c]` for every float x (above[c] is mid_hi[c], or the float below it when mid_lo[c]
 * is negative). NaN gets code 0, as the halving search gives it (all its comparisons are false). */
KBIT_HD uint8_t nearest_code_bucketed(float x, const uint8_t* buckets, const float* above) {
  const int c = buckets[float_bits(x) >> 16];
  const int code = c + static_cast<int>(x > above[c]);
  return static_cast<uint8_t>(x == x ? code : 0);
}

/* The nearest code of `map` to the normalised value x (exact; ties to the lower code). The one entry point
 * for every caller (quantization, optimizer state requantization): bucketed where the map has the tables
 * (host), halving search otherwise (device, where 64 KiB per map would not stay in fast memory). */
KBIT_HD uint8_t nearest_code(float x, const MapView& map) {
  return map.buckets ? nearest_code_bucketed(x, map.buckets, map.above) : nearest_code(x, map.mid_hi, map.mid_lo);
}

KBIT_HD uint8_t quantize_8bit(float x, float absmax, float inv, const MapView& map) {
  if (!is_finite_scale(absmax)) return kSignedZeroCode;
  return nearest_code(normalize(x, absmax, inv), map);
}

/* A non-finite block's values are one canonical quiet NaN (0 * inf would give a sign that differs by CPU). */
KBIT_HD float dequantize_8bit(uint8_t code, float absmax, const float* values) {
  return is_finite_scale(absmax) ? values[code] * absmax : canonical_nan();
}

/* ---- any sorted 256-value map (kbit_quantize_blockwise_8bit_map) ----
 * The exact midpoint of two neighbours a <= b as hi + lo: hi = fl(a + b) / 2, lo = the rounding error of that
 * sum (Knuth's two-sum) / 2. Both halvings are exact for the maps check_code_map accepts, and |lo| is at most
 * half the spacing of floats at hi, which is what above_midpoint needs to decide `x > hi + lo` exactly.
 * For the dynamic maps this reproduces the generated mid_hi / mid_lo tables bit for bit (tests check it). */
KBIT_HD void split_midpoint(float a, float b, float* hi, float* lo) {
  const float s = a + b;
  const float bv = s - a;
  const float err = (a - (s - bv)) + (b - bv);
  *hi = s * 0.5f;
  *lo = err * 0.5f;
}

/* Why a map cannot be searched exactly, or kMapOk. The map must be 256 finite values in non-decreasing
 * order whose neighbour sums are finite and whose midpoints split exactly (no magnitude below 2^-100 other
 * than zero, where halving a rounding error could lose a bit). */
enum MapProblem { kMapOk = 0, kMapNotFinite = 1, kMapNotSorted = 2, kMapTooLarge = 3, kMapTooSmall = 4 };

KBIT_HD int check_code_map(const float* values, int* where) {
  constexpr float kTiny = 0x1p-100f;
  for (int i = 0; i < 256; ++i) {
    *where = i;
    const float v = values[i];
    if (!(v - v == 0.0f)) return kMapNotFinite;
    if (v != 0.0f && (v < 0.0f ? -v : v) < kTiny) return kMapTooSmall;
    if (i > 0 && v < values[i - 1]) return kMapNotSorted;
    if (i > 0 && !((values[i - 1] + v) - (values[i - 1] + v) == 0.0f)) return kMapTooLarge;
  }
  *where = -1;
  return kMapOk;
}

/* The code nearest to 0 (the code a non-finite block stores; it dequantizes to NaN whatever it is). */
KBIT_HD uint8_t zero_code(const float* mid_hi, const float* mid_lo) { return nearest_code(0.0f, mid_hi, mid_lo); }

}  // namespace kbit
