/* kbit.h: the C ABI of every kbit library (libkbit_cpu, libkbit_cuda<NNN>), the only public header.
 *
 * Rules of this ABI (they never change within an ABI version):
 *  - The three handshake functions return values: kbit_abi_version(), kbit_build_info(), kbit_last_error().
 *  - Every other function returns a kbit_status; 0 is success. On failure, kbit_last_error() returns a
 *    thread-local text naming the failing step, with file and line. Nothing here ever ends the process.
 *  - Pointers of the CPU library are host memory; pointers of a CUDA library are device memory of the
 *    current device. CUDA functions enqueue on the caller's `stream` (NULL = legacy default stream) and do
 *    not synchronize; CPU functions use `num_threads` threads (the caller passes torch.get_num_threads()).
 *  - Sizes are int64_t element counts; an empty input (n == 0) is valid and does nothing.
 */
#ifndef KBIT_H
#define KBIT_H

#include <stdint.h>

#if defined(_WIN32)
#  if defined(KBIT_BUILDING)
#    define KBIT_API __declspec(dllexport)
#  else
#    define KBIT_API __declspec(dllimport)
#  endif
#else
#  define KBIT_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a signature or a meaning below changes; the Python loader refuses any other value. */
#define KBIT_ABI_VERSION 6

/* Every constant of this ABI is written here once. kbit._abi (python/kbit/_abi.py) holds the Python copy;
 * tests/runtime/test_abi.py parses this header and fails when the two differ (enums, defines, structs, prototypes). */

typedef enum kbit_status {
  KBIT_OK = 0,
  KBIT_ERR_INVALID_ARGUMENT = 1, /* a bad size, blocksize, dtype or pointer: the caller's mistake */
  KBIT_ERR_NO_DRIVER = 2,        /* no NVIDIA driver, or one too old for this library's toolkit */
  KBIT_ERR_NO_DEVICE = 3,        /* a driver but no usable GPU */
  KBIT_ERR_NO_KERNEL_IMAGE = 4,  /* the GPU's arch is neither in the SASS list nor reachable by PTX JIT */
  KBIT_ERR_CUDA = 5,             /* any other CUDA runtime error; the text has its name and code */
  KBIT_ERR_INTERNAL = 6          /* a bug in kbit: please report it with kbit_build_info() */
} kbit_status;

typedef enum kbit_dtype { KBIT_F32 = 0, KBIT_F16 = 1, KBIT_BF16 = 2 } kbit_dtype;

/* The code maps kbit_code_map copies: the 8-bit dynamic maps (KBIT_MAP_SIZE_8BIT values, ascending) and the
 * 4-bit tables indexed by code (KBIT_MAP_SIZE_4BIT values; FP4 code 0b1000 is -0.0). */
typedef enum kbit_map {
  KBIT_MAP_DYNAMIC_SIGNED = 0,
  KBIT_MAP_DYNAMIC_UNSIGNED = 1,
  KBIT_MAP_NF4 = 2,
  KBIT_MAP_FP4 = 3
} kbit_map;
#define KBIT_MAP_SIZE_8BIT 256
#define KBIT_MAP_SIZE_4BIT 16

/* 4-bit quantization types (kbit_quantize_4bit and friends). */
typedef enum kbit_quant4 { KBIT_NF4 = 0, KBIT_FP4 = 1 } kbit_quant4;
/* Block sizes: powers of two in [MIN, MAX]. The 8-bit optimizer states use blocks of KBIT_OPTIM_BLOCKSIZE. */
#define KBIT_BLOCKSIZE_8BIT_MIN 64
#define KBIT_BLOCKSIZE_8BIT_MAX 4096
/* The CPU library's _map functions also take 8192 and 16384 (bitsandbytes' CPU path accepts 16384). */
#define KBIT_BLOCKSIZE_8BIT_MAX_CPU 16384
#define KBIT_BLOCKSIZE_4BIT_MIN 32
#define KBIT_BLOCKSIZE_4BIT_MAX 4096
#define KBIT_OPTIM_BLOCKSIZE 256

/* Optimizer kinds: bitsandbytes' Optimizer_t numbering (3, LARS, is not provided). ADAM is also AdamW (weight
 * decay is decoupled, p *= 1 - lr*wd). ADAM and ADEMAMIX keep a second state (state2 / absmax2); ADEMAMIX
 * keeps its third state after the first: state1 holds 2n elements (absmax1 2 * ceil(n / 256) blocks in the
 * 8-bit form). Every other kind keeps state1 only. */
typedef enum kbit_optimizer {
  KBIT_OPTIM_ADAM = 0,
  KBIT_OPTIM_MOMENTUM = 1,
  KBIT_OPTIM_RMSPROP = 2,
  KBIT_OPTIM_ADAGRAD = 4,
  KBIT_OPTIM_LION = 5,
  KBIT_OPTIM_ADEMAMIX = 6
} kbit_optimizer;

/* The scalars of one optimizer step. `size` is sizeof(kbit_optim_params) as the caller compiled it: fields are
 * only ever appended within one ABI version, a library reads the fields the caller's size covers (at least up
 * to `step`, else KBIT_ERR_INVALID_ARGUMENT) and treats later ones as 0. correction1 = 1 - beta1^step and
 * correction2 = sqrt(1 - beta2^step) are computed by the caller (used by ADAM and ADEMAMIX only); step counts
 * from 1; gnorm_scale multiplies g first; unused hyperparameters are 0. */
typedef struct kbit_optim_params {
  uint32_t size;
  float lr;
  float beta1;
  float beta2;
  float beta3;
  float alpha;
  float eps;
  float weight_decay;
  float correction1;
  float correction2;
  float gnorm_scale;
  int32_t step;
} kbit_optim_params;

/* ---- handshake: return values, never change signature ---- */
KBIT_API int32_t kbit_abi_version(void);
/* JSON: {"abi", "kbit_version", "variant", "backend", "toolkit", "sass", "ptx", "compression", "min_driver",
 *        "compiler", "commit"}; static storage, never NULL. */
KBIT_API const char* kbit_build_info(void);
/* The detail of the calling thread's last failure ("" when the last call succeeded); never NULL. */
KBIT_API const char* kbit_last_error(void);

/* ---- status-returning functions ---- */
/* Number of usable devices: 0 with KBIT_OK in the CPU library; in CUDA libraries a missing driver or GPU
 * is reported as KBIT_ERR_NO_DRIVER / KBIT_ERR_NO_DEVICE with *count = 0. */
KBIT_API int kbit_device_count(int32_t* count);

/* Copy the float32 values of a code map (kbit_map) into out, which holds `capacity` floats (host memory, in
 * every library): KBIT_MAP_SIZE_8BIT values for the dynamic maps, KBIT_MAP_SIZE_4BIT for NF4 and FP4; a
 * smaller capacity is KBIT_ERR_INVALID_ARGUMENT. */
KBIT_API int kbit_code_map(int32_t map, float* out, int32_t capacity);

/* 8-bit blockwise dynamic quantization of A[n] (dtype) with the signed dynamic map:
 * absmax[b] = max |A| over block b (ceil(n / blocksize) floats); out[i] = the code nearest to
 * A[i] * (1 / absmax[b]). blocksize is a power of two in KBIT_BLOCKSIZE_8BIT_MIN..MAX. */
KBIT_API int kbit_quantize_blockwise_8bit(int32_t dtype, const void* A, float* absmax, uint8_t* out,
                                          int64_t n, int32_t blocksize, void* stream, int32_t num_threads);

/* out[i] = map[codes[i]] * absmax[i / blocksize], written in dtype. */
KBIT_API int kbit_dequantize_blockwise_8bit(int32_t dtype, const uint8_t* codes, const float* absmax, void* out,
                                            int64_t n, int32_t blocksize, void* stream, int32_t num_threads);

/* ---- 4-bit blockwise quantization and the 4-bit matrix-vector product (csrc/numerics/blockwise4.h) ----
 * quant_type: a kbit_quant4. blocksize: a power of two in KBIT_BLOCKSIZE_4BIT_MIN..MAX. dtype as above;
 * packed holds ceil(n / 2) bytes, element 2j in the high nibble of byte j (an odd n pads the last low nibble with the code
 * of 0.0); absmax holds ceil(n / blocksize) float32 values. */

/* absmax[b] = max |A| over block b (NaN if the block holds one, stored as 0x7fc00000); each element gets the
 * code nearest to A[i] * (1 / absmax[b]) (exact; NF4 ties to the lower code, FP4 to the smaller magnitude).
 * A block whose absmax is not finite stores the code of 0.0 everywhere. */
KBIT_API int kbit_quantize_4bit(int32_t dtype, int32_t quant_type, const void* A, float* absmax, uint8_t* packed,
                                int64_t n, int32_t blocksize, void* stream, int32_t num_threads);

/* out[i] = table[code(i)] * absmax[i / blocksize] in float32, rounded to dtype; a block with a non-finite absmax
 * dequantizes to NaN. */
KBIT_API int kbit_dequantize_4bit(int32_t dtype, int32_t quant_type, const uint8_t* packed, const float* absmax,
                                  void* out, int64_t n, int32_t blocksize, void* stream, int32_t num_threads);

/* out[m, j] = sum_k A[m, k] * W[j, k] (+ bias[j]) for A (rows x in_features, dtype, row-major), W
 * (out_features x in_features) quantized as one flat tensor in row-major order
 * (packed, absmax, blocksize, quant_type as above; blocks may span rows), bias (out_features, dtype, or NULL),
 * out (rows x out_features, dtype). Fused multiply-adds and sums in float32 in the order documented in
 * blockwise4.h (32 lanes over k, one fused step per term; then a pairwise lane tree), so the result does not
 * depend on num_threads, the instruction set or the backend. ABI 4: the steps became fused (ABI 3 rounded each
 * product before adding it). */
KBIT_API int kbit_gemv_4bit(int32_t dtype, int32_t quant_type, const void* A, const uint8_t* packed,
                            const float* absmax, const void* bias, void* out, int64_t rows, int64_t out_features,
                            int64_t in_features, int32_t blocksize, void* stream, int32_t num_threads);

/* The transposed product, the input gradient of a 4-bit linear layer: out[m, k] = sum_j G[m, j] * W[j, k] for G
 * (rows x out_features, dtype, row-major), W quantized as for kbit_gemv_4bit, out (rows x in_features, dtype).
 * Fused multiply-adds in float32 over 32 consecutive chunks of W's rows, the chunk sums added in order and
 * rounded once (blockwise4.h), so the result does not depend on num_threads, the instruction set or the backend.
 * out_features == 0 gives zeros. New in ABI 6. */
KBIT_API int kbit_gemv_4bit_t(int32_t dtype, int32_t quant_type, const void* G, const uint8_t* packed,
                              const float* absmax, void* out, int64_t rows, int64_t out_features, int64_t in_features,
                              int32_t blocksize, void* stream, int32_t num_threads);
/* ---- optimizers: one fused update step over n elements (numerics in csrc/numerics/optim.h) ----
 * optimizer: a kbit_optimizer; dtype is that of p and g; the update runs in float32 and p is rounded to
 * nearest-even. params: the step's scalars (kbit_optim_params, host memory, never NULL). state2 / absmax2 are
 * used by ADAM and ADEMAMIX only (pass NULL otherwise). */

/* States in float32, updated in place. The states of an element whose g is inf/NaN become NaN (as in
 * bitsandbytes' 32-bit kernels: non-finite input is never hidden). */
KBIT_API int kbit_optimizer_update_32bit(int32_t optimizer, int32_t dtype, void* p, const void* g, float* state1,
                                         float* state2, int64_t n, const kbit_optim_params* params, void* stream,
                                         int32_t num_threads);

/* States as 8-bit codes in blocks of KBIT_OPTIM_BLOCKSIZE elements with float32 absmax per block: state1 (and
 * ademamix's third state) in the signed dynamic map, state2 in the unsigned map. Each block is dequantized,
 * updated, its absmax recomputed and requantized (exact nearest code, sign fix for signed states). An element
 * whose g is inf/NaN gets zero states and keeps its parameter. */
KBIT_API int kbit_optimizer_update_8bit_blockwise(int32_t optimizer, int32_t dtype, void* p, const void* g,
                                                  uint8_t* state1, uint8_t* state2, float* absmax1, float* absmax2,
                                                  int64_t n, const kbit_optim_params* params, void* stream,
                                                  int32_t num_threads);

/* CUDA managed memory for paged optimizer states: *out = cudaMallocManaged(bytes) (NULL for 0 bytes), freed
 * with kbit_managed_free (NULL is a no-op). The CPU library refuses both with KBIT_ERR_INVALID_ARGUMENT:
 * paging needs a CUDA library. */
KBIT_API int kbit_managed_alloc(void** out, int64_t bytes);
KBIT_API int kbit_managed_free(void* ptr);

/* ---- 8-bit blockwise quantization with any sorted map (ABI 3) ----
 * As kbit_quantize_blockwise_8bit / kbit_dequantize_blockwise_8bit, with the map given by the caller: `code`
 * holds KBIT_MAP_SIZE_8BIT float32 values in ascending order (ties allowed), in this library's memory (host
 * for the CPU library, device for a CUDA library). Codes are the exact nearest map value (ties to the lower
 * code); a block whose absmax is not finite stores the code nearest 0 and dequantizes to NaN. blocksize: a
 * power of two from KBIT_BLOCKSIZE_8BIT_MIN to KBIT_BLOCKSIZE_8BIT_MAX_CPU (CPU library) or
 * KBIT_BLOCKSIZE_8BIT_MAX (CUDA). The CPU library refuses a map that is not finite, not sorted, whose
 * neighbour sums overflow or whose nonzero values lie below 2^-100 (KBIT_ERR_INVALID_ARGUMENT); a CUDA library
 * does not read the map on the host (that would synchronize), so its caller checks it. */
KBIT_API int kbit_quantize_blockwise_8bit_map(int32_t dtype, const float* code, const void* A, float* absmax,
                                              uint8_t* out, int64_t n, int32_t blocksize, void* stream,
                                              int32_t num_threads);
KBIT_API int kbit_dequantize_blockwise_8bit_map(int32_t dtype, const float* code, const uint8_t* codes,
                                                const float* absmax, void* out, int64_t n, int32_t blocksize,
                                                void* stream, int32_t num_threads);

/* ---- LLM.int8 (ABI 3; numerics in csrc/numerics/int8.h). A is rows x cols, row-major. ----
 * Row-wise int8 quantization: row_stats[r] = max |A[r, :]| over the elements with |x| < threshold (all of
 * them when threshold is 0; NaN-propagating); out[r, j] = rint(A[r, j] * (127 / row_stats[r])), clamped to
 * +-127, and 0 where outlier_cols[j] is nonzero (outlier_cols: cols bytes, or NULL for none). A row whose stats
 * are 0 or not finite stores zeros. */
KBIT_API int kbit_int8_vectorwise_quant(int32_t dtype, const void* A, const uint8_t* outlier_cols, float threshold,
                                        int8_t* out, float* row_stats, int64_t rows, int64_t cols, void* stream,
                                        int32_t num_threads);
/* out[r, j] = float(A[r, j]) * (row_stats[r] * col_stats[j] * (1 / 127^2)) (+ bias[j]) in float32, rounded to
 * dtype, for A the int32 product of two row-quantized int8 matrices (rows x cols); bias (cols, dtype) or NULL. */
KBIT_API int kbit_int8_mm_dequant(int32_t dtype, const int32_t* A, const float* row_stats, const float* col_stats,
                                  const void* bias, void* out, int64_t rows, int64_t cols, void* stream,
                                  int32_t num_threads);

/* ---- the threads of the CPU loops (ABI 5) ----
 * Which threads the library's next CPU loop runs on: *kind is a kbit_cpu_threads_kind; `where` (capacity bytes,
 * NUL-terminated, truncated to fit; NULL only with capacity 0) gets the file of the OpenMP runtime for
 * KBIT_THREADS_HOST_OPENMP and "" for the others. */
typedef enum kbit_cpu_threads_kind {
  KBIT_THREADS_HOST_OPENMP = 0, /* the process's OpenMP team (torch's), found by GOMP_parallel, not linked */
  KBIT_THREADS_OWN_TEAM = 1,    /* the library's own pthread team: no OpenMP in the process, or a forked child */
  KBIT_THREADS_PER_CALL = 2,    /* threads started per call (Windows) */
  KBIT_THREADS_NONE = 3         /* no CPU loops (a CUDA library) */
} kbit_cpu_threads_kind;
KBIT_API int kbit_cpu_threads(int32_t* kind, char* where, int32_t capacity);

#ifdef __cplusplus
}
#endif

#endif /* KBIT_H */
