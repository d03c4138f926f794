/* optim.cu: CUDA entry points of the optimizer updates. The math is numerics/optim.h, the same header the
 * CPU library runs. To keep compile time low the optimizer kind is a uniform runtime value (one kernel per
 * dtype and form: 6 kernels), not a template parameter; the branch on it costs nothing measurable next to
 * the memory traffic. Pointers may be device or managed memory (paged optimizers). */
#include "common/args.h"
#include "cuda/cuda_check.h"
#include "cuda/common.cuh"
#include "cuda/device_maps.cuh"
#include "numerics/float16.h"
#include "numerics/optim.h"

namespace kbit {
namespace {

constexpr int kThreads32 = 256;
constexpr int kMaxGrid = 4096;

template <class T>
__global__ void optim32_kernel(int32_t kind, T* __restrict__ p, const T* __restrict__ g, float* __restrict__ s1,
                               float* __restrict__ s2, int64_t n, OptimScalars k) {
  float* s3 = s1 + n;  // AdEMAMix: the slow EMA follows the fast one
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float a = s1[i];
    float b = has_state2(kind) ? s2[i] : 0.0f;
    float c = has_state3(kind) ? s3[i] : 0.0f;
    p[i] = from_float<T>(optim_element(kind, to_float(p[i]), to_float(g[i]), a, b, c, k));
    s1[i] = a;
    if (has_state2(kind)) s2[i] = b;
    if (has_state3(kind)) s3[i] = c;
  }
}

__device__ void stage_maps(float* sv, float* shi, float* slo, float* uv, float* uhi, float* ulo) {
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    sv[i] = c_signed_values[i];
    uv[i] = c_unsigned_values[i];
    if (i < 255) {
      shi[i] = c_signed_mid_hi[i];
      slo[i] = c_signed_mid_lo[i];
      uhi[i] = c_unsigned_mid_hi[i];
      ulo[i] = c_unsigned_mid_lo[i];
    }
  }
  __syncthreads();
}

/* One thread per element of a 256-element quant block; the grid strides over quant blocks. */
template <class T>
__global__ void __launch_bounds__(kOptimBlock) optim8_kernel(int32_t kind, T* __restrict__ p, const T* __restrict__ g,
                                                             uint8_t* c1, uint8_t* c2, float* am1, float* am2,
                                                             int64_t n, OptimScalars k) {
  __shared__ float sv[256], shi[255], slo[255], uv[256], uhi[255], ulo[255];
  __shared__ float scratch[3][kOptimBlock / 32];
  stage_maps(sv, shi, slo, uv, uhi, ulo);
  const MapView smap{sv, shi, slo}, umap{uv, uhi, ulo};
  const bool two = has_state2(kind), three = has_state3(kind);
  const int64_t blocks = (n + kOptimBlock - 1) / kOptimBlock;
  uint8_t* c3 = c1 + n;
  float* am3 = am1 + blocks;
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const int64_t i = b * kOptimBlock + threadIdx.x;
    const bool live = i < n;
    float s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    if (live) {
      const float gv = to_float(g[i]);
      s1 = dequantize_8bit(c1[i], am1[b], sv);
      if (two) s2 = dequantize_8bit(c2[i], am2[b], uv);
      if (three) s3 = dequantize_8bit(c3[i], am3[b], sv);
      if (is_finite_value(gv)) {
        p[i] = from_float<T>(optim_element(kind, to_float(p[i]), gv, s1, s2, s3, k));
      } else {  // a non-finite gradient element zeroes its states and skips the update
        s1 = s2 = s3 = 0.0f;
      }
    }
    const float m1 = block_absmax(absmax_step(0.0f, s1), scratch[0]);
    const float m2 = two ? block_absmax(absmax_step(0.0f, s2), scratch[1]) : 0.0f;
    const float m3 = three ? block_absmax(absmax_step(0.0f, s3), scratch[2]) : 0.0f;
    if (threadIdx.x == 0) {
      am1[b] = m1;
      if (two) am2[b] = m2;
      if (three) am3[b] = m3;
    }
    if (live) {
      c1[i] = requantize_signed(s1, m1, inverse_absmax(m1), smap);
      if (two) c2[i] = requantize_unsigned(s2, m2, inverse_absmax(m2), umap);
      if (three) c3[i] = requantize_signed(s3, m3, inverse_absmax(m3), smap);
    }
    __syncthreads();  // scratch is rewritten by the next block's reductions
  }
}

template <class T>
int launch32(int32_t kind, void* p, const void* g, float* s1, float* s2, int64_t n, const OptimScalars& k,
             cudaStream_t stream) {
  optim32_kernel<T><<<grid_for(n, kThreads32, kMaxGrid), kThreads32, 0, stream>>>(kind, static_cast<T*>(p),
                                                                        static_cast<const T*>(g), s1, s2, n, k);
  KBIT_CUDA_CHECK(cudaGetLastError());
  return KBIT_OK;
}

template <class T>
int launch8(int32_t kind, void* p, const void* g, uint8_t* c1, uint8_t* c2, float* a1, float* a2, int64_t n,
            const OptimScalars& k, cudaStream_t stream) {
  optim8_kernel<T><<<grid_for(n, kOptimBlock, kMaxGrid), kOptimBlock, 0, stream>>>(
      kind, static_cast<T*>(p), static_cast<const T*>(g), c1, c2, a1, a2, n, k);
  KBIT_CUDA_CHECK(cudaGetLastError());
  return KBIT_OK;
}

}  // namespace
}  // namespace kbit

extern "C" {

KBIT_API int kbit_optimizer_update_32bit(int32_t optimizer, int32_t dtype, void* p, const void* g, float* state1,
                                         float* state2, int64_t n, const kbit_optim_params* params, void* stream,
                                         int32_t /*num_threads*/) {
  return kbit::guarded("kbit_optimizer_update_32bit", [&]() -> int {
    kbit::OptimScalars k;
    if (int s = kbit::check_optimizer_call(optimizer, dtype, p, g, n, params, state1, state2, nullptr, nullptr,
                                           false, &k))
      return s;
    if (n == 0) return KBIT_OK;
    if (int s = kbit::check_device_pointers({{p, "p"}, {g, "g"}, {state1, "state1"}, {state2, "state2"}})) return s;
    auto st = static_cast<cudaStream_t>(stream);
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      return kbit::launch32<T>(optimizer, p, g, state1, state2, n, k, st);
    });
  });
}

KBIT_API int kbit_optimizer_update_8bit_blockwise(int32_t optimizer, int32_t dtype, void* p, const void* g,
                                                  uint8_t* state1, uint8_t* state2, float* absmax1, float* absmax2,
                                                  int64_t n, const kbit_optim_params* params, void* stream,
                                                  int32_t /*num_threads*/) {
  return kbit::guarded("kbit_optimizer_update_8bit_blockwise", [&]() -> int {
    kbit::OptimScalars k;
    if (int s = kbit::check_optimizer_call(optimizer, dtype, p, g, n, params, state1, state2, absmax1, absmax2, true,
                                           &k))
      return s;
    if (n == 0) return KBIT_OK;
    if (int s = kbit::check_device_pointers(
            {{p, "p"}, {g, "g"}, {state1, "state1"}, {state2, "state2"}, {absmax1, "absmax1"}, {absmax2, "absmax2"}}))
      return s;
    auto st = static_cast<cudaStream_t>(stream);
    return kbit::dispatch(dtype, [&](auto tag) {
      using T = kbit::dtype_t<decltype(tag)>;
      return kbit::launch8<T>(optimizer, p, g, state1, state2, absmax1, absmax2, n, k, st);
    });
  });
}

}  // extern "C"
