/* int8.h: the math of LLM.int8 (row-wise int8 quantization and the dequantization of an int32 product), written
 * once for CPU and CUDA.
 *
 * Definitions (bitsandbytes' format: an int8 row and its float32 absmax "row stats", SCB for weights):
 *  - row_stats[r] = max |x| over row r, skipping outliers (|x| >= threshold when threshold > 0), NaN-propagating
 *    and canonical as numerics/absmax.h.
 *  - code = rint(x * scale) with scale = (1 / row_stats) * 127 in float32: the reciprocal first, as torch
 *    evaluates bitsandbytes' `127.0 / row_stats` (Tensor.__rtruediv__ is reciprocal() * 127), so both libraries
 *    write the same codes; one multiply per element; rint is round-half-to-even, as torch.round; clamped to
 *    [-127, 127]. Elements of outlier columns store 0.
 *  - A row whose stats are 0 stores zeros; a row whose stats are not finite stores zeros and keeps its inf/NaN
 *    stats, so the product of that row dequantizes to NaN (0 * inf) instead of a finite number.
 *  - mm_dequant: out = float(acc) * (row_stats * col_stats * (1 / 127^2)) in float32, plus bias, rounded to the
 *    output dtype. The scale is the exact float32 of 1 / 16129 (bitsandbytes' CPU path multiplies by 6.200124e-05,
 *    1.8e-5 relatively too large; its CUDA kernel by 6.200012e-05).
 * Compiled with floating-point contraction off on every path. */
#pragma once

#include <math.h>
#include <stdint.h>

#include "numerics/absmax.h"
#include "numerics/host_device.h"

namespace kbit {

constexpr float kInt8Max = 127.0f;
constexpr float kInvInt8MaxSquared = 1.0f / 16129.0f;

/* Whether x takes part in its row's absmax (not an outlier). */
KBIT_HD bool int8_inlier(float x, float threshold) { return !(threshold > 0.0f) || !((x < 0.0f ? -x : x) >= threshold); }

/* The multiplier of a row: (1 / row_stats) * 127, or 0 for a zero or non-finite row (its codes are all 0). */
KBIT_HD float int8_row_scale(float row_stats) {
  return row_stats > 0.0f && row_stats <= 3.40282346638528859811704183484516925e+38f ? (1.0f / row_stats) * kInt8Max
                                                                                      : 0.0f;
}

KBIT_HD int8_t int8_code(float x, float scale) {
  float q = rintf(x * scale);
  q = q > kInt8Max ? kInt8Max : q;
  q = q < -kInt8Max ? -kInt8Max : q;
  return static_cast<int8_t>(q == q ? q : 0.0f);  // NaN (possible only for a NaN x in a finite row) stores 0
}

KBIT_HD float int8_dequant(int32_t acc, float row_stats, float col_stats) {
  return static_cast<float>(acc) * (row_stats * col_stats * kInvInt8MaxSquared);
}

}  // namespace kbit
