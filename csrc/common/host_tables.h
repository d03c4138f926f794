/* host_tables.h: host storage of the generated code maps (defined once, in abi.cpp). */
#pragma once

#include "kbit.h"
#include "numerics/blockwise8.h"
#include "numerics/dynamic_maps.h"

namespace kbit {
extern const float kSignedValues[256];
extern const float kSignedMidHi[255];
extern const float kSignedMidLo[255];
extern const float kUnsignedValues[256];
extern const float kUnsignedMidHi[255];
extern const float kUnsignedMidLo[255];
extern const float kNf4Values[KBIT_MAP_SIZE_4BIT];
extern const float kFp4Values[KBIT_MAP_SIZE_4BIT];

/* The complete host view of a map (KBIT_MAP_DYNAMIC_SIGNED or _UNSIGNED): what CPU code passes to
 * nearest_code / quantize_8bit. */
const MapView& host_map(int32_t map);
}  // namespace kbit
