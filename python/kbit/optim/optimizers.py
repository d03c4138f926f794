"""kbit's public optimizers: Adam, AdamW, AdEMAMix, Lion, SGD (momentum), RMSprop and Adagrad, each with
32-bit or 8-bit blockwise state, plus paged variants. Signatures and defaults are bitsandbytes'.

This module owns only which kernel each class runs and how its arguments become param-group
hyperparameters (bitsandbytes' group layout: lr, betas, eps, weight_decay). Everything else is
kbit.optim._base. Matched bitsandbytes edges (csrc/kernels.cu and bitsandbytes/optim/*.py):
  - Adam and AdamW are one kernel; weight decay is decoupled for both (p *= 1 - lr*wd after the step);
    AdamW only changes the default weight_decay to 1e-2. AdEMAMix decays the same way.
  - Lion's weight decay is decoupled and applied before the step; SGD/RMSprop/Adagrad add wd*p to g.
  - Momentum's first step sets the state to g (no dampening); SGD needs momentum > 0, as in bitsandbytes.
  - AdEMAMix keeps its slow EMA in state1 (shape (2, *p.shape)), as bitsandbytes does.
  - 8-bit state: non-finite gradient elements zero their states and keep their parameter; absmax per 256
    block is recomputed after the update; the signed states get the sign fix; parameters under
    min_8bit_size (4096) keep 32-bit state. 32-bit state: non-finite gradients propagate (as bitsandbytes'
    32-bit kernels do).
Where kbit deliberately differs from bitsandbytes' kernels (each follows numerics.md's formulas):
  - division and sqrt are IEEE (bitsandbytes uses __fdividef / __powf); codes are the exact nearest value
    (bitsandbytes' search can differ at midpoints); an all-zero block gets absmax 0 and zero codes (not 0/0).
  - Lion 32-bit decays like Lion 8-bit (decoupled); bitsandbytes' 32-bit 1-state kernel adds wd*p to g.
  - RMSprop/Adagrad 8-bit use g + wd*p in the step too; bitsandbytes' 8-bit kernel uses the raw g there.
  - the non-finite-gradient rule also applies to the 8-bit 1-state optimizers (bitsandbytes checks only in
    its 2-state kernel).
  - AdEMAMix 8-bit: the slow EMA's absmax is absmax1[1, b] (the (2, blocks) layout); bitsandbytes' kernel
    indexes (n + i) / 256, which equals that only when n is a multiple of 256.
Each matched edge is checked in tests/ops/test_optim.py against a plain-torch reference (tests/ops/optim_reference.py).
  - LARS and LAMB 8-bit keep kbit's blockwise 8-bit states (bitsandbytes' LARS8bit/LAMB8bit use its older
    non-blockwise 8-bit form, whose state_dicts therefore do not load here); their trust ratio (max_unorm) is
    computed from the same states either way (kbit.optim._clipping).
AdEMAMix's t_alpha / t_beta3 warm-up schedules are computed in Python each step, as bitsandbytes does.
Refused instead of silently ignored (bitsandbytes ignores some of them): amsgrad, nesterov, dampening != 0,
RMSprop centered/momentum, Adagrad lr_decay/initial_accumulator_value, LAMB bias_correction=False /
adam_w_mode=False.
"""
from __future__ import annotations

import dataclasses
import math

from kbit import _errors
from kbit.optim import _update
from kbit.optim._base import KbitOptimizer, check_hyper


def _as_tuple(betas: object) -> object:
    """A list of betas as a tuple; anything else unchanged, for check_betas to refuse with its message."""
    return tuple(betas) if isinstance(betas, (list, tuple)) else betas


def _refuse(condition: bool, what: str) -> None:
    if condition:
        raise _errors.KbitValueError(f"{what} is not supported by kbit's optimizers (nor run by bitsandbytes' "
                                     f"kernels);", fix="leave it at its default or use torch.optim")


class Adam(KbitOptimizer):
    """Adam (bitsandbytes' "adam" kernel; weight decay decoupled). optim_bits=8 keeps blockwise 8-bit states."""

    kind = _update.ADAM

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 optim_bits=32, min_8bit_size=4096, is_paged=False, percentile_clipping=100):
        _refuse(bool(amsgrad), "amsgrad=True")
        defaults = dict(lr=lr, betas=_as_tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults, optim_bits=optim_bits, min_8bit_size=min_8bit_size, is_paged=is_paged,
                         percentile_clipping=percentile_clipping)


class AdamW(Adam):
    """AdamW: Adam with default weight_decay 1e-2 (decoupled)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 optim_bits=32, min_8bit_size=4096, is_paged=False, percentile_clipping=100):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, optim_bits, min_8bit_size, is_paged,
                         percentile_clipping)


class AdEMAMix(KbitOptimizer):
    """AdEMAMix: Adam plus a slow EMA s3 (beta3) weighted by alpha; weight decay decoupled."""

    kind = _update.ADEMAMIX
    beta_count = 3

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha=None, t_beta3=None,
                 eps=1e-8, weight_decay=1e-2, optim_bits=32, min_8bit_size=4096, is_paged=False,
                 percentile_clipping=100):
        defaults = dict(lr=lr, betas=_as_tuple(betas), alpha=alpha, eps=eps, weight_decay=weight_decay,
                        t_alpha=t_alpha, t_beta3=t_beta3)
        super().__init__(params, defaults, optim_bits=optim_bits, min_8bit_size=min_8bit_size, is_paged=is_paged,
                         percentile_clipping=percentile_clipping)

    def check_group(self, group):
        super().check_group(group)
        check_hyper("alpha", group["alpha"])
        for name in ("t_alpha", "t_beta3"):
            t = group.get(name)
            if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
                raise _errors.KbitValueError(f"{name}={t!r} must be None (no schedule) or a step count >= 1")
        if group.get("t_beta3") and not 0 < group["betas"][0]:
            raise _errors.KbitValueError("t_beta3 needs betas[0] > 0 (the schedule interpolates log beta1 and log beta3)")

    def schedule(self, h, config, step):
        """bitsandbytes' warm-ups: alpha_t = min(t * alpha / t_alpha, alpha); beta3_t = min(exp(ln b1 * ln b3 /
        ((1 - t/T) ln b3 + (t/T) ln b1)), b3) with T = t_beta3 (in double precision, then float32)."""
        t_alpha, t_beta3 = config.get("t_alpha"), config.get("t_beta3")
        alpha, beta3 = h.alpha, h.beta3
        if t_alpha:
            alpha = min(step * h.alpha / t_alpha, h.alpha)
        if t_beta3:
            ln1, ln3 = math.log(h.beta1), math.log(h.beta3)
            frac = step / t_beta3
            beta3 = min(math.exp((ln1 * ln3) / ((1 - frac) * ln3 + frac * ln1)), h.beta3)
        return h if (alpha, beta3) == (h.alpha, h.beta3) else dataclasses.replace(h, alpha=alpha, beta3=beta3)

    def hyper(self, group):
        b1, b2, b3 = group["betas"]
        return _update.Hyper(group["lr"], b1, b2, b3, group["alpha"], group["eps"], group["weight_decay"])


class Lion(KbitOptimizer):
    """Lion: sign of the interpolated momentum; weight decay decoupled, applied first."""

    kind = _update.LION

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, optim_bits=32, min_8bit_size=4096,
                 is_paged=False, percentile_clipping=100):
        defaults = dict(lr=lr, betas=_as_tuple(betas), eps=0.0, weight_decay=weight_decay)
        super().__init__(params, defaults, optim_bits=optim_bits, min_8bit_size=min_8bit_size, is_paged=is_paged,
                         percentile_clipping=percentile_clipping)


class SGD(KbitOptimizer):
    """SGD with momentum (state = g at step 1, then momentum*state + g); weight decay added to g."""

    kind = _update.MOMENTUM

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, optim_bits=32,
                 min_8bit_size=4096, percentile_clipping=100):
        if not momentum:
            raise _errors.KbitValueError("SGD without momentum keeps no state, so kbit (like bitsandbytes) does "
                                         "not provide it;", fix="pass momentum > 0 or use torch.optim.SGD")
        check_hyper("momentum", momentum, below_one=True)
        _refuse(bool(nesterov), "nesterov=True")
        _refuse(dampening != 0, f"dampening={dampening!r}")
        defaults = dict(lr=lr, betas=(momentum, 0.0), eps=0.0, weight_decay=weight_decay)
        super().__init__(params, defaults, optim_bits=optim_bits, min_8bit_size=min_8bit_size,
                         percentile_clipping=percentile_clipping)


class RMSprop(KbitOptimizer):
    """RMSprop: state = alpha*state + (1-alpha)*g*g; p -= lr*g/(sqrt(state)+eps); weight decay added to g."""

    kind = _update.RMSPROP

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 optim_bits=32, min_8bit_size=4096, percentile_clipping=100):
        check_hyper("alpha", alpha, below_one=True)
        _refuse(alpha == 0, "alpha=0")
        _refuse(momentum != 0, f"momentum={momentum!r}")
        _refuse(bool(centered), "centered=True")
        defaults = dict(lr=lr, betas=(alpha, 0.0), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults, optim_bits=optim_bits, min_8bit_size=min_8bit_size,
                         percentile_clipping=percentile_clipping)


class LARS(KbitOptimizer):
    """LARS: SGD with momentum whose step is scaled by the trust ratio max_unorm * ||p|| / ||update||
    (bitsandbytes' LARS; momentum > 0 required, weight decay added to g)."""

    kind = _update.MOMENTUM

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, optim_bits=32, args=None,
                 min_8bit_size=4096, max_unorm=0.02, percentile_clipping=100):
        if not momentum:
            raise _errors.KbitValueError("LARS without momentum is not supported (as in bitsandbytes);",
                                         fix="pass momentum > 0, e.g. 0.9")
        check_hyper("momentum", momentum, below_one=True)
        _refuse(bool(nesterov), "nesterov=True")
        _refuse(dampening != 0, f"dampening={dampening!r}")
        _refuse(args is not None, "args (bitsandbytes' config object)")
        defaults = dict(lr=lr, betas=(momentum, 0.0), eps=0.0, weight_decay=weight_decay)
        super().__init__(params, defaults, optim_bits=optim_bits, min_8bit_size=min_8bit_size, max_unorm=max_unorm,
                         percentile_clipping=percentile_clipping)


class LAMB(KbitOptimizer):
    """LAMB: Adam (decoupled weight decay) whose step is scaled by the trust ratio max_unorm * ||p|| / ||update||
    (bitsandbytes' LAMB)."""

    kind = _update.ADAM

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, adam_w_mode=True, optim_bits=32, args=None, min_8bit_size=4096, max_unorm=1.0,
                 percentile_clipping=100):
        _refuse(not bias_correction, "bias_correction=False")
        _refuse(bool(amsgrad), "amsgrad=True")
        _refuse(not adam_w_mode, "adam_w_mode=False")
        _refuse(args is not None, "args (bitsandbytes' config object)")
        defaults = dict(lr=lr, betas=_as_tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults, optim_bits=optim_bits, min_8bit_size=min_8bit_size, max_unorm=max_unorm,
                         percentile_clipping=percentile_clipping)


class Adagrad(KbitOptimizer):
    """Adagrad: state += g*g; p -= lr*g/(sqrt(state)+eps); weight decay added to g."""

    kind = _update.ADAGRAD

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                 optim_bits=32, min_8bit_size=4096, percentile_clipping=100):
        _refuse(lr_decay != 0, f"lr_decay={lr_decay!r}")
        _refuse(initial_accumulator_value != 0, f"initial_accumulator_value={initial_accumulator_value!r}")
        defaults = dict(lr=lr, betas=(0.0, 0.0), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults, optim_bits=optim_bits, min_8bit_size=min_8bit_size,
                         percentile_clipping=percentile_clipping)


def _variant(base: type, name: str, **fixed) -> type:
    """A subclass of `base` with some keyword arguments fixed (optim_bits, is_paged), as bitsandbytes has them."""

    def __init__(self, params, *args, **kwargs):
        for key in fixed:
            if key in kwargs:
                raise TypeError(f"{name} fixes {key}={fixed[key]!r}; use {base.__name__} to choose it")
        base.__init__(self, params, *args, **kwargs, **fixed)

    setting = ", ".join(f"{k}={v!r}" for k, v in fixed.items())
    doc = f"{base.__name__} with {setting}.\n\n{base.__doc__}"
    return type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


Adam8bit = _variant(Adam, "Adam8bit", optim_bits=8)
Adam32bit = _variant(Adam, "Adam32bit", optim_bits=32)
AdamW8bit = _variant(AdamW, "AdamW8bit", optim_bits=8)
AdamW32bit = _variant(AdamW, "AdamW32bit", optim_bits=32)
AdEMAMix8bit = _variant(AdEMAMix, "AdEMAMix8bit", optim_bits=8)
AdEMAMix32bit = _variant(AdEMAMix, "AdEMAMix32bit", optim_bits=32)
Lion8bit = _variant(Lion, "Lion8bit", optim_bits=8)
Lion32bit = _variant(Lion, "Lion32bit", optim_bits=32)
SGD8bit = _variant(SGD, "SGD8bit", optim_bits=8)
SGD32bit = _variant(SGD, "SGD32bit", optim_bits=32)
RMSprop8bit = _variant(RMSprop, "RMSprop8bit", optim_bits=8)
RMSprop32bit = _variant(RMSprop, "RMSprop32bit", optim_bits=32)
Adagrad8bit = _variant(Adagrad, "Adagrad8bit", optim_bits=8)
LARS8bit = _variant(LARS, "LARS8bit", optim_bits=8)
LARS32bit = _variant(LARS, "LARS32bit", optim_bits=32)
LAMB8bit = _variant(LAMB, "LAMB8bit", optim_bits=8)
LAMB32bit = _variant(LAMB, "LAMB32bit", optim_bits=32)
Adagrad32bit = _variant(Adagrad, "Adagrad32bit", optim_bits=32)

# Paged variants (bitsandbytes has them for Adam, AdamW, Lion and AdEMAMix): states of parameters with at
# least 100,000 elements live in CUDA managed memory; on CPU they run unpaged and warn once.
PagedAdam = _variant(Adam, "PagedAdam", is_paged=True)
PagedAdam8bit = _variant(Adam, "PagedAdam8bit", optim_bits=8, is_paged=True)
PagedAdam32bit = _variant(Adam, "PagedAdam32bit", optim_bits=32, is_paged=True)
PagedAdamW = _variant(AdamW, "PagedAdamW", is_paged=True)
PagedAdamW8bit = _variant(AdamW, "PagedAdamW8bit", optim_bits=8, is_paged=True)
PagedAdamW32bit = _variant(AdamW, "PagedAdamW32bit", optim_bits=32, is_paged=True)
PagedLion = _variant(Lion, "PagedLion", is_paged=True)
PagedLion8bit = _variant(Lion, "PagedLion8bit", optim_bits=8, is_paged=True)
PagedLion32bit = _variant(Lion, "PagedLion32bit", optim_bits=32, is_paged=True)
PagedAdEMAMix = _variant(AdEMAMix, "PagedAdEMAMix", is_paged=True)
PagedAdEMAMix8bit = _variant(AdEMAMix, "PagedAdEMAMix8bit", optim_bits=8, is_paged=True)
PagedAdEMAMix32bit = _variant(AdEMAMix, "PagedAdEMAMix32bit", optim_bits=32, is_paged=True)
