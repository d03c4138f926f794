/* args.h: argument checks shared by the CPU and CUDA entry points, so both refuse the same inputs with
 * the same words. */
#pragma once

#include "common/status.h"

namespace kbit {

inline bool is_blocksize_8bit(int32_t bs) { return bs >= 64 && bs <= 4096 && (bs & (bs - 1)) == 0; }

inline int check_blockwise_8bit(int32_t dtype, const void* in, const void* absmax, const void* out, int64_t n,
                                int32_t blocksize) {
  KBIT_CHECK(dtype == KBIT_F32 || dtype == KBIT_F16 || dtype == KBIT_BF16, KBIT_ERR_INVALID_ARGUMENT,
             "dtype %d is not 0 (float32), 1 (float16) or 2 (bfloat16)", dtype);
  KBIT_CHECK(is_blocksize_8bit(blocksize), KBIT_ERR_INVALID_ARGUMENT,
             "blocksize %d is not a power of two in 64..4096", blocksize);
  KBIT_CHECK(n >= 0, KBIT_ERR_INVALID_ARGUMENT, "n = %lld is negative", static_cast<long long>(n));
  KBIT_CHECK(n == 0 || (in != nullptr && absmax != nullptr && out != nullptr), KBIT_ERR_INVALID_ARGUMENT,
             "a NULL pointer was passed with n = %lld", static_cast<long long>(n));
  return KBIT_OK;
}

inline int64_t block_count(int64_t n, int32_t blocksize) { return (n + blocksize - 1) / blocksize; }

}  // namespace kbit
