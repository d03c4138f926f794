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

/* ---- optimizers (csrc/numerics/optim.h) ---- */
namespace kbit {

/* The checks shared by kbit_optimizer_update_32bit and _8bit_blockwise (state pointers checked by caller). */
inline int check_optimizer(int32_t kind, int32_t dtype, const void* p, const void* g, int64_t n, int32_t step,
                           float correction1, float correction2) {
  KBIT_CHECK(kind == 0 || kind == 1 || kind == 2 || kind == 4 || kind == 5 || kind == 6, KBIT_ERR_INVALID_ARGUMENT,
             "optimizer %d is not 0 (adam), 1 (momentum), 2 (rmsprop), 4 (adagrad), 5 (lion) or 6 (ademamix)", kind);
  KBIT_CHECK(dtype == KBIT_F32 || dtype == KBIT_F16 || dtype == KBIT_BF16, KBIT_ERR_INVALID_ARGUMENT,
             "dtype %d is not 0 (float32), 1 (float16) or 2 (bfloat16)", dtype);
  KBIT_CHECK(n >= 0, KBIT_ERR_INVALID_ARGUMENT, "n = %lld is negative", static_cast<long long>(n));
  KBIT_CHECK(step >= 1, KBIT_ERR_INVALID_ARGUMENT, "step = %d; steps count from 1", step);
  KBIT_CHECK(n == 0 || (p != nullptr && g != nullptr), KBIT_ERR_INVALID_ARGUMENT,
             "p or g is NULL with n = %lld", static_cast<long long>(n));
  const bool two_state = kind == 0 || kind == 6;
  KBIT_CHECK(!two_state || (correction1 > 0.0f && correction2 > 0.0f), KBIT_ERR_INVALID_ARGUMENT,
             "correction1 = %g and correction2 = %g must be > 0 (1 - beta1^t and sqrt(1 - beta2^t))",
             static_cast<double>(correction1), static_cast<double>(correction2));
  return KBIT_OK;
}

/* state2 (and absmax2) exist exactly for the two-state kinds (adam, ademamix). */
inline int check_optimizer_states(int32_t kind, int64_t n, const void* state1, const void* state2, const char* what) {
  const bool two_state = kind == 0 || kind == 6;
  KBIT_CHECK(n == 0 || state1 != nullptr, KBIT_ERR_INVALID_ARGUMENT, "%s1 is NULL", what);
  KBIT_CHECK(n == 0 || !two_state || state2 != nullptr, KBIT_ERR_INVALID_ARGUMENT,
             "%s2 is NULL but optimizer %d keeps two states", what, kind);
  return KBIT_OK;
}

}  // namespace kbit
