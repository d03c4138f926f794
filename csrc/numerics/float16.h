/* float16.h: float32 <-> float16 / bfloat16 conversions, written once for CPU and CUDA.
 *
 * Both directions are exact IEEE semantics: widening is exact, narrowing rounds to nearest-even, overflows
 * to inf, keeps subnormals (no flush to zero) and maps every NaN to one canonical quiet NaN (0x7E00 for
 * float16, 0x7FC0 for bfloat16, whatever its sign or payload). Using these on the GPU too, rather than the CUDA intrinsics, is what makes
 * the CPU tests speak for the bits the GPU writes. */
#pragma once

#include <stdint.h>
#include <string.h>

#include "numerics/host_device.h"

namespace kbit {

struct f16 { uint16_t bits; };
struct bf16 { uint16_t bits; };

KBIT_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
#endif
}

KBIT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
#endif
}

KBIT_HD float to_float(float v) { return v; }

KBIT_HD float to_float(bf16 v) { return bits_float(static_cast<uint32_t>(v.bits) << 16); }

KBIT_HD float to_float(f16 v) {
  const uint32_t h = v.bits;
  const uint32_t shifted_exp = 0x7c00u << 13;
  uint32_t o = (h & 0x7fffu) << 13;
  const uint32_t exp = o & shifted_exp;
  o += (127u - 15u) << 23;
  if (exp == shifted_exp) {
    o += (128u - 16u) << 23;  // inf / NaN keep an all-ones exponent
  } else if (exp == 0) {      // zero / subnormal: renormalise with an exact float subtraction
    o += 1u << 23;
    o = float_bits(bits_float(o) - bits_float(113u << 23));
  }
  return bits_float(o | ((h & 0x8000u) << 16));
}

template <class T> KBIT_HD T from_float(float f);

template <> KBIT_HD float from_float<float>(float f) { return f; }

template <> KBIT_HD bf16 from_float<bf16>(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{0x7fc0};
  return bf16{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

template <> KBIT_HD f16 from_float<f16>(float f) {
  uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  uint32_t o;
  if (u >= (143u << 23)) {                     // >= 65536, inf or NaN
    if (u > 0x7f800000u) return f16{0x7e00};  // NaN: canonical, sign dropped
    o = 0x7c00u;
  } else if (u < (113u << 23)) {               // result is subnormal or zero: round with one float add
    const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    o = float_bits(bits_float(u) + bits_float(magic)) - magic;
  } else {                                     // normal: round the mantissa to nearest-even
    o = (u + ((15u - 127u) << 23) + 0xfffu + ((u >> 13) & 1u)) >> 13;
  }
  return f16{static_cast<uint16_t>(o | sign)};
}

}  // namespace kbit
