/* args.h: argument checks shared by the CPU and CUDA entry points, so both refuse the same inputs with
 * the same words. */
#pragma once

#include <stddef.h>
#include <string.h>

#include "common/dispatch.h"
#include "common/status.h"
#include "numerics/blockwise8.h"
#include "numerics/optim.h"

namespace kbit {

inline bool is_power_of_two_in(int32_t bs, int32_t lo, int32_t hi) { return bs >= lo && bs <= hi && (bs & (bs - 1)) == 0; }
inline bool is_blocksize_8bit(int32_t bs) { return is_power_of_two_in(bs, KBIT_BLOCKSIZE_8BIT_MIN, KBIT_BLOCKSIZE_8BIT_MAX); }

inline int check_dtype(int32_t dtype) {
  KBIT_CHECK(dtype == KBIT_F32 || dtype == KBIT_F16 || dtype == KBIT_BF16, KBIT_ERR_INVALID_ARGUMENT,
             "dtype %d is not %d (float32), %d (float16) or %d (bfloat16)", dtype, KBIT_F32, KBIT_F16, KBIT_BF16);
  return KBIT_OK;
}

inline int check_blockwise_8bit(int32_t dtype, const void* in, const void* absmax, const void* out, int64_t n,
                                int32_t blocksize) {
  if (int s = check_dtype(dtype)) return s;
  KBIT_CHECK(is_blocksize_8bit(blocksize), KBIT_ERR_INVALID_ARGUMENT, "blocksize %d is not a power of two in %d..%d",
             blocksize, KBIT_BLOCKSIZE_8BIT_MIN, KBIT_BLOCKSIZE_8BIT_MAX);
  KBIT_CHECK(n >= 0, KBIT_ERR_INVALID_ARGUMENT, "n = %lld is negative", static_cast<long long>(n));
  KBIT_CHECK(n == 0 || (in != nullptr && absmax != nullptr && out != nullptr), KBIT_ERR_INVALID_ARGUMENT,
             "a NULL pointer was passed with n = %lld", static_cast<long long>(n));
  return KBIT_OK;
}

inline int64_t block_count(int64_t n, int32_t blocksize) { return (n + blocksize - 1) / blocksize; }

/* The checks of the _map entry points: those above with this library's largest blocksize, and the map pointer. */
inline int check_blockwise_8bit_map(int32_t dtype, const float* code, const void* in, const void* absmax,
                                    const void* out, int64_t n, int32_t blocksize, int32_t max_blocksize) {
  KBIT_CHECK(code != nullptr, KBIT_ERR_INVALID_ARGUMENT, "code is NULL; pass the 256 float32 values of the map");
  KBIT_CHECK(is_power_of_two_in(blocksize, KBIT_BLOCKSIZE_8BIT_MIN, max_blocksize), KBIT_ERR_INVALID_ARGUMENT,
             "blocksize %d is not a power of two in %d..%d", blocksize, KBIT_BLOCKSIZE_8BIT_MIN, max_blocksize);
  return check_blockwise_8bit(dtype, in, absmax, out, n, KBIT_BLOCKSIZE_8BIT_MIN);
}

/* A map in host memory that nearest_code cannot search exactly (numerics/blockwise8.h check_code_map). */
inline int check_map_values(const float* code) {
  int where = -1;
  const int problem = check_code_map(code, &where);
  KBIT_CHECK(problem != kMapNotFinite, KBIT_ERR_INVALID_ARGUMENT, "code[%d] is not finite", where);
  KBIT_CHECK(problem != kMapNotSorted, KBIT_ERR_INVALID_ARGUMENT,
             "code[%d] < code[%d]: the map must be sorted in ascending order", where, where - 1);
  KBIT_CHECK(problem != kMapTooLarge, KBIT_ERR_INVALID_ARGUMENT,
             "code[%d - 1] + code[%d] overflows float32; scale the map into [-1, 1]", where, where);
  KBIT_CHECK(problem != kMapTooSmall, KBIT_ERR_INVALID_ARGUMENT,
             "|code[%d]| is below 2^-100 but not 0; midpoints that small are not split exactly", where);
  return KBIT_OK;
}

}  // namespace kbit

/* ---- 4-bit quantization and gemv (csrc/numerics/blockwise4.h) ---- */
namespace kbit {

inline bool is_blocksize_4bit(int32_t bs) { return is_power_of_two_in(bs, KBIT_BLOCKSIZE_4BIT_MIN, KBIT_BLOCKSIZE_4BIT_MAX); }

/* log2 of a power of two (a blocksize these checks accepted), so both backends' kernels shift instead of dividing. */
inline int32_t log2_pow2(int32_t pow2) {
  int32_t r = 0;
  while ((int32_t{1} << r) < pow2) ++r;
  return r;
}

inline int check_4bit_format(int32_t dtype, int32_t quant_type, int32_t blocksize) {
  if (int s = check_dtype(dtype)) return s;
  KBIT_CHECK(quant_type == KBIT_NF4 || quant_type == KBIT_FP4, KBIT_ERR_INVALID_ARGUMENT,
             "quant_type %d is not %d (nf4) or %d (fp4)", quant_type, KBIT_NF4, KBIT_FP4);
  KBIT_CHECK(is_blocksize_4bit(blocksize), KBIT_ERR_INVALID_ARGUMENT, "blocksize %d is not a power of two in %d..%d",
             blocksize, KBIT_BLOCKSIZE_4BIT_MIN, KBIT_BLOCKSIZE_4BIT_MAX);
  return KBIT_OK;
}

inline int check_blockwise_4bit(int32_t dtype, int32_t quant_type, const void* in, const void* absmax,
                                const void* out, int64_t n, int32_t blocksize) {
  if (int s = check_4bit_format(dtype, quant_type, blocksize)) return s;
  KBIT_CHECK(n >= 0, KBIT_ERR_INVALID_ARGUMENT, "n = %lld is negative", static_cast<long long>(n));
  KBIT_CHECK(n == 0 || (in != nullptr && absmax != nullptr && out != nullptr), KBIT_ERR_INVALID_ARGUMENT,
             "a NULL pointer was passed with n = %lld", static_cast<long long>(n));
  return KBIT_OK;
}

/* The format and sizes shared by gemv_4bit and gemv_4bit_t: a weight of out_features x in_features. */
inline int check_gemv_shape(int32_t dtype, int32_t quant_type, int64_t rows, int64_t out_features, int64_t in_features,
                            int32_t blocksize) {
  if (int s = check_4bit_format(dtype, quant_type, blocksize)) return s;
  KBIT_CHECK(rows >= 0 && out_features >= 0 && in_features >= 0, KBIT_ERR_INVALID_ARGUMENT,
             "negative size: rows = %lld, out_features = %lld, in_features = %lld", static_cast<long long>(rows),
             static_cast<long long>(out_features), static_cast<long long>(in_features));
  KBIT_CHECK(in_features == 0 || out_features <= INT64_MAX / in_features, KBIT_ERR_INVALID_ARGUMENT,
             "out_features * in_features overflows int64");
  return KBIT_OK;
}

inline int check_gemv_4bit(int32_t dtype, int32_t quant_type, const void* A, const void* packed, const void* absmax,
                           const void* out, int64_t rows, int64_t out_features, int64_t in_features,
                           int32_t blocksize) {
  if (int s = check_gemv_shape(dtype, quant_type, rows, out_features, in_features, blocksize)) return s;
  const bool weights = out_features * in_features > 0;
  KBIT_CHECK(rows * out_features == 0 || out != nullptr, KBIT_ERR_INVALID_ARGUMENT, "out is NULL");
  KBIT_CHECK(rows * out_features == 0 || !weights || (A != nullptr && packed != nullptr && absmax != nullptr),
             KBIT_ERR_INVALID_ARGUMENT, "A, packed or absmax is NULL with a non-empty product");
  return KBIT_OK;
}

/* kbit_gemv_4bit_t: G (rows x out_features), out (rows x in_features). */
inline int check_gemv_4bit_t(int32_t dtype, int32_t quant_type, const void* G, const void* packed, const void* absmax,
                             const void* out, int64_t rows, int64_t out_features, int64_t in_features,
                             int32_t blocksize) {
  if (int s = check_gemv_shape(dtype, quant_type, rows, out_features, in_features, blocksize)) return s;
  KBIT_CHECK(rows * in_features == 0 || out != nullptr, KBIT_ERR_INVALID_ARGUMENT, "out is NULL");
  KBIT_CHECK(rows * in_features == 0 || out_features == 0 || (G != nullptr && packed != nullptr && absmax != nullptr),
             KBIT_ERR_INVALID_ARGUMENT, "G, packed or absmax is NULL with a non-empty product");
  return KBIT_OK;
}

/* LLM.int8 (numerics/int8.h): rows x cols, row-major. */
inline int check_int8_sizes(int64_t rows, int64_t cols) {
  KBIT_CHECK(rows >= 0 && cols >= 0, KBIT_ERR_INVALID_ARGUMENT, "negative size: rows = %lld, cols = %lld",
             static_cast<long long>(rows), static_cast<long long>(cols));
  KBIT_CHECK(cols == 0 || rows <= INT64_MAX / cols, KBIT_ERR_INVALID_ARGUMENT, "rows * cols overflows int64");
  return KBIT_OK;
}

inline int check_int8_quant(int32_t dtype, const void* A, const void* out, const void* row_stats, int64_t rows,
                            int64_t cols, float threshold) {
  if (int s = check_dtype(dtype)) return s;
  if (int s = check_int8_sizes(rows, cols)) return s;
  KBIT_CHECK(threshold >= 0.0f, KBIT_ERR_INVALID_ARGUMENT, "threshold = %g; pass 0 (no outliers) or a positive value",
             static_cast<double>(threshold));
  KBIT_CHECK(rows == 0 || row_stats != nullptr, KBIT_ERR_INVALID_ARGUMENT, "row_stats is NULL with rows = %lld",
             static_cast<long long>(rows));
  KBIT_CHECK(rows * cols == 0 || (A != nullptr && out != nullptr), KBIT_ERR_INVALID_ARGUMENT,
             "A or out is NULL with %lld elements", static_cast<long long>(rows * cols));
  return KBIT_OK;
}

inline int check_int8_mm_dequant(int32_t dtype, const void* A, const void* row_stats, const void* col_stats,
                                 const void* out, int64_t rows, int64_t cols) {
  if (int s = check_dtype(dtype)) return s;
  if (int s = check_int8_sizes(rows, cols)) return s;
  KBIT_CHECK(rows * cols == 0 || (A != nullptr && row_stats != nullptr && col_stats != nullptr && out != nullptr),
             KBIT_ERR_INVALID_ARGUMENT, "A, row_stats, col_stats or out is NULL with %lld elements",
             static_cast<long long>(rows * cols));
  return KBIT_OK;
}

/* kbit_cpu_threads: a place for the kind, and a buffer with its size (or NULL and 0). */
inline int check_cpu_threads(const int32_t* kind, const char* where, int32_t capacity) {
  KBIT_CHECK(kind != nullptr, KBIT_ERR_INVALID_ARGUMENT, "kind is NULL");
  KBIT_CHECK(capacity >= 0 && (where != nullptr || capacity == 0), KBIT_ERR_INVALID_ARGUMENT,
             "where is NULL or capacity (%d) is negative; pass a buffer and its size, or NULL and 0",
             static_cast<int>(capacity));
  return KBIT_OK;
}

/* The CPU library's launch arguments: no stream, and the thread count torch uses. */
inline int check_host_launch(void* stream, int32_t threads) {
  KBIT_CHECK(stream == nullptr, KBIT_ERR_INVALID_ARGUMENT,
             "a stream was passed to the CPU library; CUDA tensors must go to a CUDA variant");
  KBIT_CHECK(threads >= 1 && threads <= 4096, KBIT_ERR_INVALID_ARGUMENT,
             "num_threads = %d; pass torch.get_num_threads() (1..4096)", threads);
  return KBIT_OK;
}

}  // namespace kbit

/* ---- optimizers (csrc/numerics/optim.h) ---- */
namespace kbit {

/* The step's scalars from the caller's kbit_optim_params: the fields its `size` covers (at least through
 * `step`, the fields of ABI 2), later fields 0. */
inline int read_optim_params(const kbit_optim_params* params, kbit_optim_params* out) {
  KBIT_CHECK(params != nullptr, KBIT_ERR_INVALID_ARGUMENT, "params is NULL; pass a kbit_optim_params");
  constexpr uint32_t kMinSize = offsetof(kbit_optim_params, step) + sizeof(int32_t);
  KBIT_CHECK(params->size >= kMinSize, KBIT_ERR_INVALID_ARGUMENT,
             "params->size = %u, smaller than the %u bytes of kbit_optim_params in ABI %d; set it to "
             "sizeof(kbit_optim_params)", params->size, kMinSize, KBIT_ABI_VERSION);
  memset(out, 0, sizeof(*out));
  memcpy(out, params, params->size < sizeof(*out) ? params->size : sizeof(*out));
  out->size = sizeof(*out);
  return KBIT_OK;
}

/* The checks shared by kbit_optimizer_update_32bit and _8bit_blockwise (state pointers checked by caller). */
inline int check_optimizer(int32_t kind, int32_t dtype, const void* p, const void* g, int64_t n,
                           const kbit_optim_params& k) {
  KBIT_CHECK(is_optim_kind(kind), KBIT_ERR_INVALID_ARGUMENT,
             "optimizer %d is not %d (adam), %d (momentum), %d (rmsprop), %d (adagrad), %d (lion) or %d (ademamix)",
             kind, kAdam, kMomentum, kRmsprop, kAdagrad, kLion, kAdemamix);
  if (int s = check_dtype(dtype)) return s;
  KBIT_CHECK(n >= 0, KBIT_ERR_INVALID_ARGUMENT, "n = %lld is negative", static_cast<long long>(n));
  KBIT_CHECK(k.step >= 1, KBIT_ERR_INVALID_ARGUMENT, "step = %d; steps count from 1", k.step);
  KBIT_CHECK(n == 0 || (p != nullptr && g != nullptr), KBIT_ERR_INVALID_ARGUMENT,
             "p or g is NULL with n = %lld", static_cast<long long>(n));
  KBIT_CHECK(!has_state2(kind) || (k.correction1 > 0.0f && k.correction2 > 0.0f), KBIT_ERR_INVALID_ARGUMENT,
             "correction1 = %g and correction2 = %g must be > 0 (1 - beta1^t and sqrt(1 - beta2^t))",
             static_cast<double>(k.correction1), static_cast<double>(k.correction2));
  return KBIT_OK;
}

/* state2 (and absmax2) exist exactly for the kinds with state_count >= 2 (adam, ademamix). */
inline int check_optimizer_states(int32_t kind, int64_t n, const void* state1, const void* state2, const char* what) {
  KBIT_CHECK(n == 0 || state1 != nullptr, KBIT_ERR_INVALID_ARGUMENT, "%s1 is NULL", what);
  KBIT_CHECK(n == 0 || !has_state2(kind) || state2 != nullptr, KBIT_ERR_INVALID_ARGUMENT,
             "%s2 is NULL but optimizer %d keeps two states", what, kind);
  return KBIT_OK;
}

/* Everything both backends check before an optimizer step, in this order: the params (read into *k), kind,
 * dtype, sizes and step, the states and, for the 8-bit blockwise form, the absmax arrays. */
inline int check_optimizer_call(int32_t kind, int32_t dtype, const void* p, const void* g, int64_t n,
                                const kbit_optim_params* params, const void* state1, const void* state2,
                                const void* absmax1, const void* absmax2, bool blockwise, OptimScalars* k) {
  kbit_optim_params a;
  if (int s = read_optim_params(params, &a)) return s;
  if (int s = check_optimizer(kind, dtype, p, g, n, a)) return s;
  if (int s = check_optimizer_states(kind, n, state1, state2, "state")) return s;
  if (blockwise)
    if (int s = check_optimizer_states(kind, n, absmax1, absmax2, "absmax")) return s;
  *k = make_optim_scalars(a);
  return KBIT_OK;
}

}  // namespace kbit
