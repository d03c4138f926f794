/* host_maps.cpp: the host views of the 8-bit code maps, with the bucket table that makes the exact nearest
 * code one load and one comparison (see nearest_code_bucketed in numerics/blockwise8.h).
 *
 * The tables are built on first use (thread-safe static initialisation) from the generated maps, and the
 * property they rely on is verified while building them: if any bucket's value interval held two midpoints,
 * construction throws, and every exported function reports KBIT_ERR_INTERNAL instead of a wrong code. */
#include <cmath>
#include <limits>
#include <vector>

#include "common/host_tables.h"
#include "common/status.h"

namespace kbit {
namespace {

constexpr int kBuckets = 1 << 16;

/* The smallest and largest float value whose bits start with the 16 bits `u` (NaN buckets excluded). */
void bucket_range(uint32_t u, float* lo, float* hi) {
  const float first = bits_float(u << 16), last = bits_float((u << 16) | 0xFFFFu);
  const bool negative = (u & 0x8000u) != 0;  // for negative floats a larger bit pattern is a smaller value
  *lo = negative ? last : first;
  *hi = negative ? first : last;
}

/* `x > above` exactly when x > hi + lo, for every float x: lo is at most half an ulp of hi, so the midpoint
 * lies strictly between hi's neighbours. */
float threshold(float hi, float lo) { return lo < 0.0f ? std::nextafter(hi, -std::numeric_limits<float>::infinity()) : hi; }

struct BucketedMap {
  float above[256];
  std::vector<uint8_t> buckets = std::vector<uint8_t>(kBuckets);
  MapView view;

  BucketedMap(const float* values, const float* hi, const float* lo) {
    for (int c = 0; c < 255; ++c) {
      above[c] = threshold(hi[c], lo[c]);
      const float probes[3] = {above[c], std::nextafter(above[c], 2.0f), hi[c]};
      for (float x : probes)
        if ((x > above[c]) != (above_midpoint(x, hi[c], lo[c]) != 0))
          throw InternalError("a bucket-search threshold disagrees with its exact midpoint");
    }
    above[255] = std::numeric_limits<float>::infinity();  // nothing lies above code 255
    for (uint32_t u = 0; u < kBuckets; ++u) {
      const bool nan_bucket = (u & 0x7F80u) == 0x7F80u && (u & 0x7Fu) != 0;
      float first, last;
      bucket_range(u, &first, &last);
      const uint8_t c = nan_bucket ? 0 : nearest_code(first, hi, lo);
      if (!nan_bucket && nearest_code(last, hi, lo) > c + 1)
        throw InternalError("a bucket of the code map holds two midpoints; the bucketed search is not exact");
      buckets[u] = c;
    }
    view = MapView{values, hi, lo, buckets.data(), above};
  }
};

}  // namespace

const MapView& host_map(int32_t map) {
  static const BucketedMap kSigned(kSignedValues, kSignedMidHi, kSignedMidLo);
  static const BucketedMap kUnsigned(kUnsignedValues, kUnsignedMidHi, kUnsignedMidLo);
  return map == KBIT_MAP_DYNAMIC_UNSIGNED ? kUnsigned.view : kSigned.view;
}

}  // namespace kbit
