/* absmax.h: the NaN-propagating absmax of a block and its canonical NaN, written once for every path (8-bit and
 * 4-bit quantization, 8-bit optimizer states; CPU and CUDA).
 *
 * Rule: absmax = max |x| over the block; any NaN in the block makes it NaN, stored as the canonical quiet NaN
 * 0x7fc00000 whichever NaN was met, so every path and thread count stores the same bits. Two equivalent forms:
 *  - magnitude bits: |x|'s bit pattern (sign cleared) orders like |x| within one format and puts every NaN
 *    above inf, so an integer max over a block is the bit pattern of the absmax (order-free, and it vectorizes
 *    where a float max may not be reordered); magnitude_value turns it into the stored float;
 *  - absmax_step: one step of the same max on float values (warp shuffles reduce floats).
 * Both end in canonical_absmax. */
#pragma once

#include <stdint.h>

#include "numerics/float16.h"
#include "numerics/host_device.h"

namespace kbit {

constexpr uint32_t kCanonicalNaNBits = 0x7fc00000u;

KBIT_HD float canonical_nan() { return bits_float(kCanonicalNaNBits); }

/* The absmax a block stores: any NaN becomes the canonical quiet NaN. */
KBIT_HD float canonical_absmax(float m) { return m != m ? canonical_nan() : m; }

KBIT_HD uint32_t magnitude_bits(float v) { return float_bits(v) & 0x7FFFFFFFu; }
KBIT_HD uint32_t magnitude_bits(f16 v) { return v.bits & 0x7FFFu; }
KBIT_HD uint32_t magnitude_bits(bf16 v) { return v.bits & 0x7FFFu; }

/* The stored absmax from the largest magnitude_bits of a block of T. */
template <class T>
KBIT_HD float magnitude_value(uint32_t bits) {
  T v;
  v.bits = static_cast<uint16_t>(bits);
  return canonical_absmax(to_float(v));
}
template <>
KBIT_HD float magnitude_value<float>(uint32_t bits) { return canonical_absmax(bits_float(bits)); }

/* One step of the NaN-propagating max of |x| on floats. */
KBIT_HD float absmax_step(float m, float x) {
  const float a = x < 0.0f ? -x : x;
  return (a > m || a != a) ? a : m;
}

}  // namespace kbit
