/* optim.cpp: CPU entry points of the optimizer updates (libkbit_cpu).
 * The math is numerics/optim.h; this file owns the loops and their threading. The 8-bit update is one fused
 * pass per 256-element block: dequantize, update (parameter written at once), new absmax, requantize, with
 * the updated states kept in stack buffers between the last two steps (a block's states fit in L1).
 * Blocks are independent, so the results do not depend on the thread count. Paging needs CUDA: the managed
 * memory functions refuse with a message. */
#include "common/args.h"
#include "common/host_tables.h"
#include "cpu/parallel.h"
#include "numerics/float16.h"
#include "numerics/optim.h"

namespace kbit {
namespace {

constexpr int64_t kChunk32 = 16384;  // elements per parallel_for work item of the 32-bit update

template <class T, int KIND>
void update_32bit_range(T* p, const T* g, float* s1, float* s2, float* s3, int64_t begin, int64_t end,
                        const OptimScalars& scalars) {
  const OptimScalars k = scalars;  // a local copy: stores through p cannot alias it
  for (int64_t i = begin; i < end; ++i) {
    float a = s1[i];
    float b = has_state2(KIND) ? s2[i] : 0.0f;
    float c = has_state3(KIND) ? s3[i] : 0.0f;
    p[i] = from_float<T>(optim_element(KIND, to_float(p[i]), to_float(g[i]), a, b, c, k));
    s1[i] = a;
    if (has_state2(KIND)) s2[i] = b;
    if (has_state3(KIND)) s3[i] = c;
  }
}

template <class T, int KIND>
void update_32bit(void* p, const void* g, float* s1, float* s2, int64_t n, const OptimScalars& k, int32_t threads) {
  const int64_t chunks = (n + kChunk32 - 1) / kChunk32;
  float* s3 = KIND == kAdemamix ? s1 + n : nullptr;
  parallel_for(chunks, team_for(n, threads), [&](int64_t c) {
    const int64_t begin = c * kChunk32, end = begin + kChunk32 < n ? begin + kChunk32 : n;
    update_32bit_range<T, KIND>(static_cast<T*>(p), static_cast<const T*>(g), s1, s2, s3, begin, end, k);
  });
}

/* c ? a : b as a bit blend: GCC turns a plain `p[i] = c ? a : p[i]` into a conditional store, which blocks
 * vectorization without masked stores (above x86-64-v2); the blend is an unconditional store. */
inline uint32_t blend_mask32(bool c) { return 0u - static_cast<uint32_t>(c); }
inline float blend(bool c, float a, float b) {
  const uint32_t m = blend_mask32(c);
  return bits_float((float_bits(a) & m) | (float_bits(b) & ~m));
}
template <class H>
inline H blend(bool c, H a, H b) {
  const uint16_t m = static_cast<uint16_t>(0u - static_cast<unsigned>(c));
  return H{static_cast<uint16_t>((a.bits & m) | (b.bits & ~m))};
}

/* The codes and absmax of one block of one 8-bit state. */
struct QState {
  uint8_t* codes;
  float* absmax;
};

/* One state of a block, dequantized. With a finite absmax this is dequantize_8bit's multiply, without its
 * per-element check. */
inline void dequantize_codes(const uint8_t* codes, int len, float absmax, const float* values, float* out) {
  if (is_finite_scale(absmax)) {
    for (int i = 0; i < len; ++i) out[i] = values[codes[i]] * absmax;
  } else {
    for (int i = 0; i < len; ++i) out[i] = dequantize_8bit(codes[i], absmax, values);
  }
}

/* |x| as int32 bits (numerics/absmax.h): they order like the magnitudes (NaN above inf), and signed compares
 * are in SSE2. */
inline int32_t magnitude_i32(float x) { return static_cast<int32_t>(magnitude_bits(x)); }

/* Codes of one state of a block. The common case (finite absmax whose inverse is finite) runs a loop free of
 * per-element checks: there quantize_8bit is nearest_code(s * inv) (normalize's multiply branch), the same
 * function the other case calls through requantize_signed / requantize_unsigned. */
inline void requantize_codes(const float* s, int len, float absmax, float inv, const MapView& map, bool is_signed,
                             uint8_t* codes) {
  if (is_finite_scale(absmax) && !(inv > kFloatMax)) {
    // every s[i] is finite here (a NaN would have made absmax NaN), so s[i] * inv is never NaN and the
    // bucketed search needs neither its NaN select nor the halving fallback: its table load and comparison
    const uint8_t* buckets = map.buckets;
    const float* above = map.above;
    if (is_signed) {
      for (int i = 0; i < len; ++i) {
        const float x = s[i] * inv;
        const int c = buckets[float_bits(x) >> 16];
        codes[i] = sign_fixed(static_cast<uint8_t>(c + static_cast<int>(x > above[c])), s[i], map);
      }
    } else {
      for (int i = 0; i < len; ++i) {
        const float x = s[i] * inv;
        const int c = buckets[float_bits(x) >> 16];
        codes[i] = static_cast<uint8_t>(c + static_cast<int>(x > above[c]));
      }
    }
  } else if (is_signed) {
    for (int i = 0; i < len; ++i) codes[i] = requantize_signed(s[i], absmax, inv, map);
  } else {
    for (int i = 0; i < len; ++i) codes[i] = requantize_unsigned(s[i], absmax, inv, map);
  }
}

/* The NaN-propagating max |x| of a block: magnitude bits order like the magnitudes, so their max is a
 * branch-free reduction (absmax_step's branches on each state's sign mispredict half the time). Any NaN is
 * stored as the canonical one, as on the GPU. */
inline float block_absmax(const float* s, int len) {
  int32_t top = 0;
  for (int i = 0; i < len; ++i) top = magnitude_i32(s[i]) > top ? magnitude_i32(s[i]) : top;
  return magnitude_value<float>(static_cast<uint32_t>(top));
}

/* A state's new absmax, stored, and its inverse for requantization. */
struct Scale {
  float absmax, inv;
};
inline Scale rescale(const float* s, int len, QState q) {
  const float m = block_absmax(s, len);
  *q.absmax = m;
  return Scale{m, inverse_absmax(m)};
}

/* One 256-element block in four passes over L1-resident buffers: gather-dequantize the states, update
 * (straight-line and branch-free, so the compiler vectorizes it), new absmax, requantize. */
template <class T, int KIND>
void update_8bit_block(T* p, const T* g, int len, QState q1, QState q2, QState q3, const OptimScalars& scalars) {
  const OptimScalars k = scalars;  // a local copy: stores through p cannot alias it, so its fields stay in registers
  constexpr bool two = has_state2(KIND), three = has_state3(KIND);
  // local copies: the uint8 code stores may alias anything, so fields read through a reference are reloaded
  // for every element
  const MapView signed_map = host_map(KBIT_MAP_DYNAMIC_SIGNED);
  const MapView unsigned_map = host_map(KBIT_MAP_DYNAMIC_UNSIGNED);
  float b1[kOptimBlock], b2[kOptimBlock], b3[kOptimBlock];
  dequantize_codes(q1.codes, len, *q1.absmax, signed_map.values, b1);
  if (two) dequantize_codes(q2.codes, len, *q2.absmax, unsigned_map.values, b2);
  if (three) dequantize_codes(q3.codes, len, *q3.absmax, signed_map.values, b3);
  for (int i = 0; i < len; ++i) {
    const float gv = to_float(g[i]);
    const bool finite = is_finite_value(gv);  // else: zero states, keep the parameter (bitsandbytes)
    float s1 = b1[i], s2 = two ? b2[i] : 0.0f, s3 = three ? b3[i] : 0.0f;
    const T old = p[i];
    p[i] = blend(finite, from_float<T>(optim_element(KIND, to_float(old), gv, s1, s2, s3, k)), old);
    b1[i] = finite ? s1 : 0.0f;
    if (two) b2[i] = finite ? s2 : 0.0f;
    if (three) b3[i] = finite ? s3 : 0.0f;
  }
  const Scale r1 = rescale(b1, len, q1);
  const Scale r2 = two ? rescale(b2, len, q2) : Scale{0.0f, 0.0f};
  const Scale r3 = three ? rescale(b3, len, q3) : Scale{0.0f, 0.0f};
  requantize_codes(b1, len, r1.absmax, r1.inv, signed_map, true, q1.codes);
  if (two) requantize_codes(b2, len, r2.absmax, r2.inv, unsigned_map, false, q2.codes);
  if (three) requantize_codes(b3, len, r3.absmax, r3.inv, signed_map, true, q3.codes);
}

template <class T, int KIND>
void update_8bit(void* p_, const void* g_, uint8_t* c1, uint8_t* c2, float* am1, float* am2, int64_t n,
                 const OptimScalars& k, int32_t threads) {
  T* p = static_cast<T*>(p_);
  const T* g = static_cast<const T*>(g_);
  const int64_t blocks = block_count(n, kOptimBlock);
  parallel_for(blocks, team_for(n, threads), [&](int64_t b) {
    const int64_t start = b * kOptimBlock;
    const int len = static_cast<int>(n - start < kOptimBlock ? n - start : kOptimBlock);
    const QState q1{c1 + start, am1 + b};
    const QState q2{c2 == nullptr ? nullptr : c2 + start, am2 == nullptr ? nullptr : am2 + b};
    const QState q3{KIND == kAdemamix ? c1 + n + start : nullptr, KIND == kAdemamix ? am1 + blocks + b : nullptr};
    update_8bit_block<T, KIND>(p + start, g + start, len, q1, q2, q3, k);
  });
}

/* kind -> one instantiation each (6 per dtype and form; the dtype is kbit::dispatch's): the kind is a
 * compile-time constant on the CPU so each inner loop is straight-line code the compiler can vectorize. */
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
                                         float* state2, int64_t n, const kbit_optim_params* params, void* stream,
                                         int32_t num_threads) {
  return kbit::guarded("kbit_optimizer_update_32bit", [&]() -> int {
    kbit::OptimScalars k;
    if (int s = kbit::check_optimizer_call(optimizer, dtype, p, g, n, params, state1, state2, nullptr, nullptr,
                                           false, &k))
      return s;
    if (int s = kbit::check_host_launch(stream, num_threads)) return s;
    if (n == 0) return KBIT_OK;
    return kbit::dispatch(dtype, [&](auto tag) {
      return kbit::Run32<kbit::dtype_t<decltype(tag)>>::by_kind(optimizer, p, g, state1, state2, n, k, num_threads);
    });
  });
}

KBIT_API int kbit_optimizer_update_8bit_blockwise(int32_t optimizer, int32_t dtype, void* p, const void* g,
                                                  uint8_t* state1, uint8_t* state2, float* absmax1, float* absmax2,
                                                  int64_t n, const kbit_optim_params* params, void* stream,
                                                  int32_t num_threads) {
  return kbit::guarded("kbit_optimizer_update_8bit_blockwise", [&]() -> int {
    kbit::OptimScalars k;
    if (int s = kbit::check_optimizer_call(optimizer, dtype, p, g, n, params, state1, state2, absmax1, absmax2, true,
                                           &k))
      return s;
    if (int s = kbit::check_host_launch(stream, num_threads)) return s;
    if (n == 0) return KBIT_OK;
    return kbit::dispatch(dtype, [&](auto tag) {
      return kbit::Run8<kbit::dtype_t<decltype(tag)>>::by_kind(optimizer, p, g, state1, state2, absmax1, absmax2, n, k,
                                                               num_threads);
    });
  });
}

}  // extern "C"
