/* optim.h: the per-element math of kbit's optimizers (32-bit and 8-bit blockwise states), written once for
 * CPU and CUDA.
 *
 * Formulas (../shared/reference/numerics.md, "8-bit blockwise optimizers"; bitsandbytes' kernels
 * kOptimizer32bit2State / kOptimizer32bit1State / kOptimizerStatic8bit{2,1}StateBlockwise):
 *   g = g * gnorm_scale
 *   Adam/AdamW  s1 = s1*b1 + (1-b1)*g ; s2 = s2*b2 + (1-b2)*(g*g)
 *               p = p + step_size * (s1 / (sqrt(s2) + eps*corr2)),  step_size = -lr*corr2/corr1
 *               then p = p * (1 - lr*wd) (decoupled, for Adam too: bnb's "adam" kernel is AdamW's)
 *   AdEMAMix    s1, s2 as Adam ; s3 = s3*b3 + (1-b3)*g
 *               p = p - lr * ((s1/corr1 + alpha*s3) / (sqrt(s2)/corr2 + eps)) ; then decoupled decay as Adam
 *   Momentum    g = g + p*wd (wd > 0) ; s1 = (step == 1) ? g : s1*b1 + g ; p = p - lr*s1
 *   RMSprop     g = g + p*wd (wd > 0) ; s1 = s1*b1 + (1-b1)*(g*g) ; p = p - lr*(g / (sqrt(s1) + eps))
 *   Adagrad     g = g + p*wd (wd > 0) ; s1 = s1 + g*g ; p = p - lr*(g / (sqrt(s1) + eps))
 *   Lion        p = p*(1 - lr*wd) (wd > 0, decoupled, first) ; u = sign(s1*b1 + (1-b1)*g)
 *               s1 = s1*b2 + (1-b2)*g ; p = p - lr*u
 * corr1 = 1 - b1^t and corr2 = sqrt(1 - b2^t) are computed once on the host (in double, rounded to float)
 * and passed in, so no pow/exp runs per element and CPU and GPU see the same scalars. Every operation here
 * is a correctly rounded float32 operation (+ - * / sqrt), compiled without contraction, so both backends
 * give identical bits. Division is IEEE division (bitsandbytes uses __fdividef, an approximation).
 *
 * 8-bit blockwise states (quant block kOptimBlock = 256 elements; state 1 and AdEMAMix's state 3 use the
 * signed dynamic map, state 2 the unsigned map):
 *   - s = map[code] * absmax[block] (dequantize_8bit of blockwise8.h);
 *   - a gradient element that is inf or NaN zeroes that element's states and leaves its parameter as is;
 *   - after the update absmax[block] = max |s| over the block (NaN-propagating, canonical NaN), then each state is
 *     requantized with nearest_code (exact nearest, ties to the lower code) of s * (1/absmax);
 *   - sign fix (signed states): when the chosen value's sign bit differs from the state's, the code steps one
 *     towards the state's sign (so a tiny negative state never rounds up to +0; bitsandbytes does the same).
 */
#pragma once

#include <math.h>
#include <stdint.h>

#include "kbit.h" /* kbit_optimizer, kbit_optim_params, KBIT_OPTIM_BLOCKSIZE */
#include "numerics/blockwise8.h"
#include "numerics/float16.h"
#include "numerics/host_device.h"

namespace kbit {

/* The quant block of the 8-bit optimizer states (bitsandbytes' blockwise optimizers use 256). */
constexpr int kOptimBlock = KBIT_OPTIM_BLOCKSIZE;

/* Short names of kbit.h's kbit_optimizer values (the numbers live there only). */
enum OptimKind : int32_t {
  kAdam = KBIT_OPTIM_ADAM,
  kMomentum = KBIT_OPTIM_MOMENTUM,
  kRmsprop = KBIT_OPTIM_RMSPROP,
  kAdagrad = KBIT_OPTIM_ADAGRAD,
  kLion = KBIT_OPTIM_LION,
  kAdemamix = KBIT_OPTIM_ADEMAMIX
};

KBIT_HD bool is_optim_kind(int32_t k) {
  return k == kAdam || k == kMomentum || k == kRmsprop || k == kAdagrad || k == kLion || k == kAdemamix;
}

/* How many states a kind keeps: the one statement of the "two states" rule (kbit.h, kbit_optimizer). AdEMAMix's
 * third state is stored after state 1 (state1 has 2n elements), so state2 exists for state_count >= 2. */
KBIT_HD constexpr int state_count(int32_t k) { return k == kAdam ? 2 : k == kAdemamix ? 3 : 1; }
KBIT_HD constexpr bool has_state2(int32_t k) { return state_count(k) >= 2; }
KBIT_HD constexpr bool has_state3(int32_t k) { return state_count(k) >= 3; }

/* The scalars of one update step, derived once per call on the host (make_optim_scalars). */
struct OptimScalars {
  float lr, beta1, beta2, beta3, alpha, eps, weight_decay, gnorm_scale;
  float correction1;  // 1 - beta1^t
  float correction2;  // sqrt(1 - beta2^t)
  float step_size;    // -lr * correction2 / correction1 (Adam)
  float eps_hat;      // eps * correction2 (Adam)
  float decay;        // 1 - lr * weight_decay (decoupled decay)
  int32_t step;       // t, 1-based
};

inline OptimScalars make_optim_scalars(const kbit_optim_params& a) {
  OptimScalars k{};
  k.lr = a.lr; k.beta1 = a.beta1; k.beta2 = a.beta2; k.beta3 = a.beta3; k.alpha = a.alpha; k.eps = a.eps;
  k.weight_decay = a.weight_decay; k.gnorm_scale = a.gnorm_scale; k.correction1 = a.correction1;
  k.correction2 = a.correction2; k.step = a.step;
  k.step_size = -a.lr * a.correction2 / a.correction1;
  k.eps_hat = a.eps * a.correction2;
  k.decay = 1.0f - a.lr * a.weight_decay;
  return k;
}

KBIT_HD bool is_finite_value(float x) { return (float_bits(x) & 0x7f800000u) != 0x7f800000u; }

KBIT_HD uint32_t sign_bit(float x) { return float_bits(x) >> 31; }

/* sign(x) in {-1, 0, +1} (NaN gives 0, as bitsandbytes' sgn); branch-free so CPU loops vectorize. */
KBIT_HD float sign_of(float x) { return static_cast<float>(x > 0.0f) - static_cast<float>(x < 0.0f); }

KBIT_HD float ema(float s, float beta, float x) { return s * beta + (1.0f - beta) * x; }

/* One element's update: reads and writes the states (s3 only for AdEMAMix), returns the new parameter.
 * `kind` is a template constant on the CPU (the switch folds away) and a uniform value on the GPU. The
 * conditions are value selects, not branches, so the CPU loops vectorize; decay is exactly 1 when
 * weight_decay is 0 and p * 1 == p, so multiplying unconditionally is bitsandbytes' `if (wd > 0)`. */
KBIT_HD float optim_element(int32_t kind, float p, float g, float& s1, float& s2, float& s3, const OptimScalars& k) {
  g = g * k.gnorm_scale;
  switch (kind) {
    case kAdam:
      s1 = ema(s1, k.beta1, g);
      s2 = ema(s2, k.beta2, g * g);
      p = p + k.step_size * (s1 / (sqrtf(s2) + k.eps_hat));
      return p * k.decay;
    case kAdemamix:
      s1 = ema(s1, k.beta1, g);
      s3 = ema(s3, k.beta3, g);
      s2 = ema(s2, k.beta2, g * g);
      p = p - k.lr * ((s1 / k.correction1 + k.alpha * s3) / (sqrtf(s2) / k.correction2 + k.eps));
      return p * k.decay;
    case kLion: {
      p = p * k.decay;  // decoupled, before the step
      const float u = sign_of(s1 * k.beta1 + (1.0f - k.beta1) * g);
      s1 = ema(s1, k.beta2, g);
      return p - k.lr * u;
    }
    default: break;
  }
  // L2 decay of the 1-state optimizers; a select (not g + p*0) so that g = -0.0 and p = inf stay as they are
  const float decayed = g + p * k.weight_decay;
  g = k.weight_decay > 0.0f ? decayed : g;
  switch (kind) {
    case kMomentum: {
      const float accumulated = s1 * k.beta1 + g;
      s1 = k.step == 1 ? g : accumulated;
      return p - k.lr * s1;
    }
    case kRmsprop:
      s1 = ema(s1, k.beta1, g * g);
      return p - k.lr * (g / (sqrtf(s1) + k.eps));
    default:  // kAdagrad
      s1 = s1 + g * g;
      return p - k.lr * (g / (sqrtf(s1) + k.eps));
  }
}

/* bitsandbytes' sign fix of a signed state's code c (finite block): when the chosen value's sign bit differs
 * from the state's, step one code towards the state's sign. */
KBIT_HD uint8_t sign_fixed(uint8_t c, float s, const MapView& map) {
  return sign_bit(map.values[c]) != sign_bit(s) ? static_cast<uint8_t>(s > 0.0f ? c + 1 : c - 1) : c;
}

/* The code of a signed state (state 1 / 3): exact nearest, then the sign fix. A non-finite block (absmax
 * inf/NaN) keeps quantize_8bit's code: it dequantizes to NaN whatever the code. */
KBIT_HD uint8_t requantize_signed(float s, float absmax, float inv, const MapView& map) {
  const uint8_t c = quantize_8bit(s, absmax, inv, map);
  return is_finite_scale(absmax) ? sign_fixed(c, s, map) : c;
}

KBIT_HD uint8_t requantize_unsigned(float s, float absmax, float inv, const MapView& map) {
  return quantize_8bit(s, absmax, inv, map);
}

}  // namespace kbit
