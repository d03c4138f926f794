/* optim.cpp: CPU entry points of the optimizer updates (libkbit_cpu).
 * The math is numerics/optim.h; this file owns the loops and their threading. The 8-bit update is one fused
 * pass per 256-element block: dequantize, update (parameter written at once), new absmax, requantize, with
 * the updated states kept in stack buffers between the last two steps (a block's states fit in L1).
 * Blocks are independent, so the results do not depend on the thread count. Paging needs CUDA: the managed
 * memory functions refuse with a message. */
#include "common/args.h"
#include "common/host_tables.h"
#include "numerics/float16.h"
#include "numerics/optim.h"

namespace kbit {
namespace {

constexpr int64_t kChunk32 = 16384;  // elements per OpenMP work item of the 32-bit update

int check_cpu_call(void* stream, int32_t threads) {
  KBIT_CHECK(stream == nullptr, KBIT_ERR_INVALID_ARGUMENT,
             "a stream was passed to the CPU library; CUDA tensors must go to a CUDA variant");
  KBIT_CHECK(threads >= 1 && threads <= 4096, KBIT_ERR_INVALID_ARGUMENT,
             "num_threads = %d; pass torch.get_num_threads() (1..4096)", threads);
  return KBIT_OK;
}

template <class T, int KIND>
void update_32bit_range(T* p, const T* g, float* s1, float* s2, float* s3, int64_t begin, int64_t end,
                        const OptimScalars& k) {
  for (int64_t i = begin; i < end; ++i) {
    float a = s1[i];
    float b = KIND == kAdam || KIND == kAdemamix ? s2[i] : 0.0f;
    float c = KIND == kAdemamix ? s3[i] : 0.0f;
    p[i] = from_float<T>(optim_element(KIND, to_float(p[i]), to_float(g[i]), a, b, c, k));
    s1[i] = a;
    if (KIND == kAdam || KIND == kAdemamix) s2[i] = b;
    if (KIND == kAdemamix) s3[i] = c;
  }
}

template <class T, int KIND>
void update_32bit(void* p, const void* g, float* s1, float* s2, int64_t n, const OptimScalars& k, int32_t threads) {
  const int64_t chunks = (n + kChunk32 - 1) / kChunk32;
  float* s3 = KIND == kAdemamix ? s1 + n : nullptr;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk32, end = begin + kChunk32 < n ? begin + kChunk32 : n;
    update_32bit_range<T, KIND>(static_cast<T*>(p), static_cast<const T*>(g), s1, s2, s3, begin, end, k);
  }
}

/* The codes and absmax of one block of one 8-bit state. */
struct QState {
  uint8_t* codes;
  float* absmax;
};

/* One 256-element block: dequantize + update + absmax, then requantize from the stack buffers. */
template <class T, int KIND>
void update_8bit_block(T* p, const T* g, int len, QState q1, QState q2, QState q3, const OptimScalars& k) {
  constexpr bool two = KIND == kAdam || KIND == kAdemamix, three = KIND == kAdemamix;
  const MapView& signed_map = host_map(KBIT_MAP_DYNAMIC_SIGNED);
  const MapView& unsigned_map = host_map(KBIT_MAP_DYNAMIC_UNSIGNED);
  float b1[kOptimBlock], b2[kOptimBlock], b3[kOptimBlock];
  const float a1 = *q1.absmax, a2 = two ? *q2.absmax : 0.0f, a3 = three ? *q3.absmax : 0.0f;
  float m1 = 0.0f, m2 = 0.0f, m3 = 0.0f;
  for (int i = 0; i < len; ++i) {
    const float gv = to_float(g[i]);
    float s1 = dequantize_8bit(q1.codes[i], a1, signed_map.values);
    float s2 = two ? dequantize_8bit(q2.codes[i], a2, unsigned_map.values) : 0.0f;
    float s3 = three ? dequantize_8bit(q3.codes[i], a3, signed_map.values) : 0.0f;
    if (is_finite_value(gv)) {
      p[i] = from_float<T>(optim_element(KIND, to_float(p[i]), gv, s1, s2, s3, k));
    } else {  // bitsandbytes: a non-finite gradient element zeroes its states and skips the update
      s1 = s2 = s3 = 0.0f;
    }
    b1[i] = s1; m1 = absmax_step(m1, s1);
    if (two) { b2[i] = s2; m2 = absmax_step(m2, s2); }
    if (three) { b3[i] = s3; m3 = absmax_step(m3, s3); }
  }
  *q1.absmax = m1;
  const float inv1 = inverse_absmax(m1);
  for (int i = 0; i < len; ++i) q1.codes[i] = requantize_signed(b1[i], m1, inv1, signed_map);
  if (two) {
    *q2.absmax = m2;
    const float inv2 = inverse_absmax(m2);
    for (int i = 0; i < len; ++i) q2.codes[i] = requantize_unsigned(b2[i], m2, inv2, unsigned_map);
  }
  if (three) {
    *q3.absmax = m3;
    const float inv3 = inverse_absmax(m3);
    for (int i = 0; i < len; ++i) q3.codes[i] = requantize_signed(b3[i], m3, inv3, signed_map);
  }
}

template <class T, int KIND>
void update_8bit(void* p_, const void* g_, uint8_t* c1, uint8_t* c2, float* am1, float* am2, int64_t n,
                 const OptimScalars& k, int32_t threads) {
  T* p = static_cast<T*>(p_);
  const T* g = static_cast<const T*>(g_);
  const int64_t blocks = block_count(n, kOptimBlock);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t start = b * kOptimBlock;
    const int len = static_cast<int>(n - start < kOptimBlock ? n - start : kOptimBlock);
    const QState q1{c1 + start, am1 + b};
    const QState q2{c2 == nullptr ? nullptr : c2 + start, am2 == nullptr ? nullptr : am2 + b};
    const QState q3{KIND == kAdemamix ? c1 + n + start : nullptr, KIND == kAdemamix ? am1 + blocks + b : nullptr};
    update_8bit_block<T, KIND>(p + start, g + start, len, q1, q2, q3, k);
  }
}

/* dtype x kind -> one instantiation each (3 x 6 per form): the kind is a compile-time constant on the CPU so
 * each inner loop is straight-line code the compiler can vectorize. */
template <template <class> class Op, class... Args>
int dispatch(int32_t dtype, int32_t kind, Args&&... args) {
  switch (dtype) {
    case KBIT_F32: return Op<float>::by_kind(kind, args...);
    case KBIT_F16: return Op<f16>::by_kind(kind, args...);
    default: return Op<bf16>::by_kind(kind, args...);
  }
}

template <class T>
struct Run32 {
  static int by_kind(int32_t kind, void* p, const void* g, float* s1, float* s2, int64_t n, const OptimScalars& k,
                     int32_t t) {
    switch (kind) {
      case kAdam: update_32bit<T, kAdam>(p, g, s1, s2, n, k, t); break;
      case kAdemamix: update_32bit<T, kAdemamix>(p, g, s1, s2, n, k, t); break;
      case kMomentum: update_32bit<T, kMomentum>(p, g, s1, s2, n, k, t); break;
      case kRmsprop: update_32bit<T, kRmsprop>(p, g, s1, s2, n, k, t); break;
      case kAdagrad: update_32bit<T, kAdagrad>(p, g, s1, s2, n, k, t); break;
      default: update_32bit<T, kLion>(p, g, s1, s2, n, k, t); break;
    }
    return KBIT_OK;
  }
};

template <class T>
struct Run8 {
  static int by_kind(int32_t kind, void* p, const void* g, uint8_t* c1, uint8_t* c2, float* a1, float* a2, int64_t n,
                     const OptimScalars& k, int32_t t) {
    switch (kind) {
      case kAdam: update_8bit<T, kAdam>(p, g, c1, c2, a1, a2, n, k, t); break;
      case kAdemamix: update_8bit<T, kAdemamix>(p, g, c1, c2, a1, a2, n, k, t); break;
      case kMomentum: update_8bit<T, kMomentum>(p, g, c1, c2, a1, a2, n, k, t); break;
      case kRmsprop: update_8bit<T, kRmsprop>(p, g, c1, c2, a1, a2, n, k, t); break;
      case kAdagrad: update_8bit<T, kAdagrad>(p, g, c1, c2, a1, a2, n, k, t); break;
      default: update_8bit<T, kLion>(p, g, c1, c2, a1, a2, n, k, t); break;
    }
    return KBIT_OK;
  }
};

}  // namespace
}  // namespace kbit

extern "C" {

KBIT_API int kbit_optimizer_update_32bit(int32_t optimizer, int32_t dtype, void* p, const void* g, float* state1,
                                         float* state2, int64_t n, float lr, float beta1, float beta2, float beta3,
                                         float alpha, float eps, float weight_decay, float correction1,
                                         float correction2, float gnorm_scale, int32_t step, void* stream,
                                         int32_t num_threads) {
  return kbit::guarded("kbit_optimizer_update_32bit", [&]() -> int {
    if (int s = kbit::check_optimizer(optimizer, dtype, p, g, n, step, correction1, correction2)) return s;
    if (int s = kbit::check_optimizer_states(optimizer, n, state1, state2, "state")) return s;
    if (int s = kbit::check_cpu_call(stream, num_threads)) return s;
    if (n == 0) return KBIT_OK;
    const kbit::OptimScalars k = kbit::make_optim_scalars(lr, beta1, beta2, beta3, alpha, eps, weight_decay,
                                                          correction1, correction2, gnorm_scale, step);
    return kbit::dispatch<kbit::Run32>(dtype, optimizer, p, g, state1, state2, n, k, num_threads);
  });
}

KBIT_API int kbit_optimizer_update_8bit_blockwise(int32_t optimizer, int32_t dtype, void* p, const void* g,
                                                  uint8_t* state1, uint8_t* state2, float* absmax1, float* absmax2,
                                                  int64_t n, float lr, float beta1, float beta2, float beta3,
                                                  float alpha, float eps, float weight_decay, float correction1,
                                                  float correction2, float gnorm_scale, int32_t step, void* stream,
                                                  int32_t num_threads) {
  return kbit::guarded("kbit_optimizer_update_8bit_blockwise", [&]() -> int {
    if (int s = kbit::check_optimizer(optimizer, dtype, p, g, n, step, correction1, correction2)) return s;
    if (int s = kbit::check_optimizer_states(optimizer, n, state1, state2, "state")) return s;
    if (int s = kbit::check_optimizer_states(optimizer, n, absmax1, absmax2, "absmax")) return s;
    if (int s = kbit::check_cpu_call(stream, num_threads)) return s;
    if (n == 0) return KBIT_OK;
    const kbit::OptimScalars k = kbit::make_optim_scalars(lr, beta1, beta2, beta3, alpha, eps, weight_decay,
                                                          correction1, correction2, gnorm_scale, step);
    return kbit::dispatch<kbit::Run8>(dtype, optimizer, p, g, state1, state2, absmax1, absmax2, n, k, num_threads);
  });
}

KBIT_API int kbit_managed_alloc(void** out, int64_t bytes) {
  return kbit::guarded("kbit_managed_alloc", [&]() -> int {
    if (out != nullptr) *out = nullptr;
    return kbit::fail(KBIT_ERR_INVALID_ARGUMENT, __FILE__, __LINE__, "kbit_managed_alloc",
                      "paged optimizer states live in CUDA managed memory, which needs a CUDA library "
                      "(libkbit_cuda<NNN>); %lld bytes were requested from the CPU library",
                      static_cast<long long>(bytes));
  });
}

KBIT_API int kbit_managed_free(void* ptr) {
  return kbit::guarded("kbit_managed_free", [&]() -> int {
    KBIT_CHECK(ptr == nullptr, KBIT_ERR_INVALID_ARGUMENT,
               "the CPU library never allocates managed memory, so it cannot free %p; free it with the CUDA "
               "library that allocated it", ptr);
    return KBIT_OK;
  });
}

}  // extern "C"
