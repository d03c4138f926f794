/* device_maps.cuh: the 8-bit dynamic maps and their midpoints in constant memory (internal), written once for
 * the kernels that quantize to them. Each .cu file that includes it holds its own copy (the library is built
 * without separable compilation); kernels stage what they search into shared memory. */
#pragma once

#include "numerics/dynamic_maps.h"

namespace kbit {
namespace {

__constant__ float c_signed_values[256] = KBIT_DYNAMIC_SIGNED_VALUES;
__constant__ float c_signed_mid_hi[255] = KBIT_DYNAMIC_SIGNED_MID_HI;
__constant__ float c_signed_mid_lo[255] = KBIT_DYNAMIC_SIGNED_MID_LO;
__constant__ float c_unsigned_values[256] = KBIT_DYNAMIC_UNSIGNED_VALUES;
__constant__ float c_unsigned_mid_hi[255] = KBIT_DYNAMIC_UNSIGNED_MID_HI;
__constant__ float c_unsigned_mid_lo[255] = KBIT_DYNAMIC_UNSIGNED_MID_LO;

}  // namespace
}  // namespace kbit
