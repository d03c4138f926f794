/* host_tables.h: host storage of the generated code maps (defined once, in abi.cpp). */
#pragma once

#include "numerics/dynamic_maps.h"

namespace kbit {
extern const float kSignedValues[256];
extern const float kSignedMidHi[255];
extern const float kSignedMidLo[255];
extern const float kUnsignedValues[256];
extern const float kUnsignedMidHi[255];
extern const float kUnsignedMidLo[255];
}  // namespace kbit
