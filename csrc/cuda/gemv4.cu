/* gemv4.cu: CUDA entry point of the 4-bit matrix-vector product out = A @ W.T (+ bias). The math and the
 * summation order are numerics/blockwise4.h: one warp per output feature, lane l sums k = l, l + 32, ... and
 * the warp's xor butterfly combines the lanes, which is the order the CPU library reproduces.
 *
 * Loads: when K is a multiple of 32 and the packed weight is 16-byte aligned (every row then starts on a 16-byte
 * boundary), the warp reads its row 512 bytes at a time, one 16-byte vector load per lane, into a shared staging
 * buffer; each lane then takes its own codes (k = l, l + 32, ...) from there, so the order of the sums is
 * unchanged. Rows of A are handled 8 at a time per pass over the weight row (the decoded weight is reused for
 * them). Other shapes read the codes byte by byte, in the same order.
 *
 * The transposed product (kbit_gemv_4bit_t, Linear4bit's input gradient, out = G @ W) follows blockwise4.h's
 * transposed order: a block of kGemvTChunks warps owns 32 columns of out, warp c sums chunk c of the weight rows
 * (lane l: column l, rows in increasing n, kRowsPerPass rows of G at a time), the chunk sums meet in shared memory
 * and one warp per row of G adds them in chunk order. */
#include "common/args.h"
#include "cuda/cuda_check.h"
#include "cuda/common.cuh"
#include "numerics/blockwise4.h"
#include "numerics/float16.h"

namespace kbit {
namespace {

__constant__ float c_nf4[16] = KBIT_NF4_VALUES;
__constant__ float c_fp4[16] = KBIT_FP4_VALUES;

constexpr int kWarpsPerBlock = 4;

constexpr int kRowsPerPass = 8;                 // rows of A sharing one pass over a weight row
constexpr int kChunkBytes = 16 * kGemvLanes;    // one 16-byte load per lane
constexpr int64_t kChunk = 2 * kChunkBytes;     // codes per staged chunk

/* Rows [m0, m0 + kRowsPerPass) of A against weight row j, codes read byte by byte (any K, any alignment). */
template <class T>
__device__ void rows_bytewise(const T* __restrict__ A, const uint8_t* __restrict__ packed,
                              const float* __restrict__ absmax, const float* table, int64_t m0, int64_t M, int64_t j,
                              int64_t K, int32_t log2_bs, int lane, float* acc) {
  for (int64_t k = lane; k < K; k += kGemvLanes) {
    const int64_t i = j * K + k;
    const float w = dequantize_4bit_value(nibble_at(packed, i), absmax[i >> log2_bs], table);
#pragma unroll
    for (int r = 0; r < kRowsPerPass; ++r)
      if (m0 + r < M) acc[r] = gemv_step(acc[r], to_float(A[(m0 + r) * K + k]), w);
  }
}

/* The same sums with the row staged through shared memory by 16-byte loads (K % 32 == 0, packed 16-byte aligned). */
template <class T>
__device__ void rows_vectorized(const T* __restrict__ A, const uint8_t* __restrict__ packed,
                                const float* __restrict__ absmax, const float* table, int64_t m0, int64_t M, int64_t j,
                                int64_t K, int32_t log2_bs, int lane, uint4* stage, float* acc) {
  const uint8_t* row = packed + j * (K / 2);
  const uint8_t* staged = reinterpret_cast<const uint8_t*>(stage);
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    const int64_t len = K - k0 < kChunk ? K - k0 : kChunk;  // a multiple of 32: whole 16-byte slices
    if (32 * lane < len) stage[lane] = reinterpret_cast<const uint4*>(row + k0 / 2)[lane];
    __syncwarp();
    for (int64_t c = lane; c < len; c += kGemvLanes) {
      const uint32_t byte = staged[c >> 1];
      const uint32_t code = (c & 1) ? (byte & 15u) : (byte >> 4);
      const int64_t k = k0 + c;
      const float w = dequantize_4bit_value(code, absmax[(j * K + k) >> log2_bs], table);
#pragma unroll
      for (int r = 0; r < kRowsPerPass; ++r)
        if (m0 + r < M) acc[r] = gemv_step(acc[r], to_float(A[(m0 + r) * K + k]), w);
    }
    __syncwarp();  // every lane has read the chunk before it is overwritten
  }
}

template <class T>
__global__ void gemv4_kernel(const T* __restrict__ A, const uint8_t* __restrict__ packed,
                             const float* __restrict__ absmax, const T* __restrict__ bias, T* __restrict__ out,
                             int64_t M, int64_t N, int64_t K, int32_t log2_bs, int32_t quant_type, bool vectorized) {
  __shared__ float s_table[16];
  __shared__ uint4 s_stage[kWarpsPerBlock][kGemvLanes];
  if (threadIdx.x < 16) s_table[threadIdx.x] = quant_type == KBIT_FP4 ? c_fp4[threadIdx.x] : c_nf4[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x % kGemvLanes, warp = threadIdx.x / kGemvLanes;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (j >= N) return;  // a whole warp leaves together; no block barrier follows
  const float b = bias != nullptr ? to_float(bias[j]) : 0.0f;
  for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass) {
    float acc[kRowsPerPass];
#pragma unroll
    for (int r = 0; r < kRowsPerPass; ++r) acc[r] = 0.0f;
    if (vectorized) {
      rows_vectorized(A, packed, absmax, s_table, m0, M, j, K, log2_bs, lane, s_stage[warp], acc);
    } else {
      rows_bytewise(A, packed, absmax, s_table, m0, M, j, K, log2_bs, lane, acc);
    }
#pragma unroll
    for (int r = 0; r < kRowsPerPass; ++r) {
      float sum = acc[r];
      for (int offset = kGemvLanes / 2; offset >= 1; offset >>= 1) sum = sum + __shfl_xor_sync(0xffffffffu, sum, offset);
      if (lane == 0 && m0 + r < M) out[(m0 + r) * N + j] = from_float<T>(gemv_finish(sum, bias != nullptr, b));
    }
  }
}

template <class T>
int launch_gemv4(int32_t quant_type, const void* A, const uint8_t* packed, const float* absmax, const void* bias,
                 void* out, int64_t M, int64_t N, int64_t K, int32_t bs, cudaStream_t stream) {
  const int64_t blocks = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
  KBIT_CHECK(blocks <= 0x7fffffff, KBIT_ERR_INVALID_ARGUMENT, "out_features = %lld exceeds the grid limit",
             static_cast<long long>(N));
  gemv4_kernel<T><<<static_cast<unsigned>(blocks), kWarpsPerBlock * kGemvLanes, 0, stream>>>(
      static_cast<const T*>(A), packed, absmax, static_cast<const T*>(bias), static_cast<T*>(out), M, N, K,
      log2_pow2(bs), quant_type, K % kGemvLanes == 0 && reinterpret_cast<uintptr_t>(packed) % 16 == 0);
  KBIT_CUDA_CHECK(cudaGetLastError());
  return KBIT_OK;
}

int check_gemv_pointers(const void* A, const uint8_t* packed, const float* absmax, const void* bias, const void* out,
                        int64_t K) {
  if (int s = check_device_memory(out, "out")) return s;
  if (bias != nullptr)
    if (int s = check_device_memory(bias, "bias")) return s;
  if (K == 0) return KBIT_OK;  // an empty reduction reads neither A nor the weight
  if (int s = check_device_memory(A, "A")) return s;
  if (int s = check_device_memory(packed, "packed")) return s;
  return check_device_memory(absmax, "absmax");
}


/* ---- the transposed product ---- */

constexpr int kTWarps = kGemvTChunks;  // one warp per chunk of weight rows

template <class T>
__global__ void __launch_bounds__(kTWarps * kGemvLanes)
gemv4_t_kernel(const T* __restrict__ G, const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
               T* __restrict__ out, int64_t M, int64_t N, int64_t K, int32_t log2_bs, int32_t quant_type) {
  __shared__ float s_table[16];
  __shared__ float s_sums[kRowsPerPass][kTWarps][kGemvLanes];
  if (threadIdx.x < 16) s_table[threadIdx.x] = quant_type == KBIT_FP4 ? c_fp4[threadIdx.x] : c_nf4[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x % kGemvLanes, warp = threadIdx.x / kGemvLanes;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kGemvLanes + lane;
  const int64_t S = gemv_t_chunk_rows(N);
  const int64_t n0 = warp * S < N ? warp * S : N, n1 = n0 + S < N ? n0 + S : N;
  for (int64_t m0 = static_cast<int64_t>(blockIdx.y) * kRowsPerPass; m0 < M;
       m0 += static_cast<int64_t>(gridDim.y) * kRowsPerPass) {
    float acc[kRowsPerPass];
#pragma unroll
    for (int r = 0; r < kRowsPerPass; ++r) acc[r] = 0.0f;
    if (k < K) {
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t i = n * K + k;
        const float w = dequantize_4bit_value(nibble_at(packed, i), absmax[i >> log2_bs], s_table);
#pragma unroll
        for (int r = 0; r < kRowsPerPass; ++r)
          if (m0 + r < M) acc[r] = gemv_step(acc[r], to_float(G[(m0 + r) * N + n]), w);
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerPass; ++r) s_sums[r][warp][lane] = acc[r];
    __syncthreads();
    if (warp < kRowsPerPass && m0 + warp < M && k < K) {
      float total = s_sums[warp][0][lane];
      for (int c = 1; c < kTWarps; ++c) total = total + s_sums[warp][c][lane];
      out[(m0 + warp) * K + k] = from_float<T>(total);
    }
    __syncthreads();  // the sums are read before the next pass overwrites them
  }
}

template <class T>
int launch_gemv4_t(int32_t quant_type, const void* G, const uint8_t* packed, const float* absmax, void* out,
                   int64_t M, int64_t N, int64_t K, int32_t bs, cudaStream_t stream) {
  const int64_t columns = (K + kGemvLanes - 1) / kGemvLanes;
  KBIT_CHECK(columns <= 0x7fffffff, KBIT_ERR_INVALID_ARGUMENT, "in_features = %lld exceeds the grid limit",
             static_cast<long long>(K));
  const int64_t passes = (M + kRowsPerPass - 1) / kRowsPerPass;
  const dim3 grid(static_cast<unsigned>(columns), static_cast<unsigned>(passes < 65535 ? passes : 65535));
  gemv4_t_kernel<T><<<grid, kTWarps * kGemvLanes, 0, stream>>>(static_cast<const T*>(G), packed, absmax,
                                                               static_cast<T*>(out), M, N, K, log2_pow2(bs),
                                                               quant_type);
  KBIT_CUDA_CHECK(cudaGetLastError());
  return KBIT_OK;
}

}  // namespace
}  // namespace kbit

extern "C" {

KBIT_API int kbit_gemv_4bit(int32_t dtype, int32_t quant_type, const void* A, const uint8_t* packed,
                            const float* absmax, const void* bias, void* out, int64_t rows, int64_t out_features,
                            int64_t in_features, int32_t blocksize, void* stream, int32_t /*num_threads*/) {
  return kbit::guarded("kbit_gemv_4bit", [&]() -> int {
    if (int s = kbit::check_gemv_4bit(dtype, quant_type, A, packed, absmax, out, rows, out_features, in_features,
                                      blocksize))
      return s;
    if (rows == 0 || out_features == 0) return KBIT_OK;
    if (int s = kbit::check_gemv_pointers(A, packed, absmax, bias, out, in_features)) return s;
    auto st = static_cast<cudaStream_t>(stream);
    const int64_t M = rows, N = out_features, K = in_features;
    const int32_t qt = quant_type, bs = blocksize;
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      return kbit::launch_gemv4<T>(qt, A, packed, absmax, bias, out, M, N, K, bs, st);
    });
  });
}

KBIT_API int kbit_gemv_4bit_t(int32_t dtype, int32_t quant_type, const void* G, const uint8_t* packed,
                              const float* absmax, void* out, int64_t rows, int64_t out_features, int64_t in_features,
                              int32_t blocksize, void* stream, int32_t /*num_threads*/) {
  return kbit::guarded("kbit_gemv_4bit_t", [&]() -> int {
    if (int s = kbit::check_gemv_4bit_t(dtype, quant_type, G, packed, absmax, out, rows, out_features, in_features,
                                        blocksize))
      return s;
    if (rows == 0 || in_features == 0) return KBIT_OK;
    if (int s = kbit::check_device_memory(out, "out")) return s;
    if (out_features > 0)  // out_features == 0: zeros, nothing else is read
      if (int s = kbit::check_device_pointers({{G, "G"}, {packed, "packed"}, {absmax, "absmax"}})) return s;
    auto st = static_cast<cudaStream_t>(stream);
    const int64_t M = rows, N = out_features, K = in_features;
    const int32_t qt = quant_type, bs = blocksize;
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      return kbit::launch_gemv4_t<T>(qt, G, packed, absmax, out, M, N, K, bs, st);
    });
  });
}

}  // extern "C"
