"""The native update step of one parameter: argument mapping onto the C ABI (csrc/kbit.h).

This module owns only the call: which function (32-bit or 8-bit blockwise states), the host-side scalars
(bias corrections, computed once per step in double precision and rounded to float32 by ctypes, so CPU and
CUDA libraries receive identical values) and the launch arguments from kbit._dispatch. Checking tensors and
hyperparameters is kbit.optim._base's job.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kbit import _dispatch

DTYPE_IDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
BLOCKSIZE = 256  # the quant block of 8-bit states (kOptimBlock in csrc/numerics/optim.h)

# bitsandbytes' Optimizer_t numbering (csrc/kbit.h)
ADAM, MOMENTUM, RMSPROP, ADAGRAD, LION, ADEMAMIX = 0, 1, 2, 4, 5, 6
TWO_STATE = (ADAM, ADEMAMIX)


@dataclass(frozen=True)
class Hyper:
    """The hyperparameters of one update, in the kernel's terms (unused ones are 0)."""

    lr: float
    beta1: float
    beta2: float
    beta3: float
    alpha: float
    eps: float
    weight_decay: float


def corrections(kind: int, h: Hyper, step: int) -> tuple[float, float]:
    """(1 - beta1^t, sqrt(1 - beta2^t)) for Adam and AdEMAMix; (1, 1) for the kinds that do not use them."""
    if kind not in TWO_STATE:
        return 1.0, 1.0
    return 1.0 - h.beta1 ** step, math.sqrt(1.0 - h.beta2 ** step)


def _scalars(kind: int, h: Hyper, step: int, gnorm_scale: float) -> tuple:
    c1, c2 = corrections(kind, h, step)
    return (h.lr, h.beta1, h.beta2, h.beta3, h.alpha, h.eps, h.weight_decay, c1, c2, gnorm_scale, step)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else _dispatch.ptr(t)


def update(kind: int, p: torch.Tensor, g: torch.Tensor, state: dict, h: Hyper, gnorm_scale: float = 1.0) -> None:
    """One step on contiguous p (updated in place) with gradient g, from the states in `state`.

    The state tensors decide the form: uint8 "state1" is the 8-bit blockwise form (with absmax1/2),
    float32 "state1" the 32-bit form. state["step"] must already count this step (1-based).
    """
    lib = _dispatch.library_for(p, "the parameter")
    s1, s2 = state["state1"], state.get("state2")
    common = (kind, DTYPE_IDS[p.dtype], _ptr(p), _ptr(g))
    tail = _scalars(kind, h, state["step"], gnorm_scale) + (_dispatch.stream_for(p), _dispatch.threads())
    if s1.dtype == torch.uint8:
        _dispatch.call(p, lib, "kbit_optimizer_update_8bit_blockwise", *common, _ptr(s1), _ptr(s2),
                       _ptr(state["absmax1"]), _ptr(state.get("absmax2")), p.numel(), *tail)
    else:
        _dispatch.call(p, lib, "kbit_optimizer_update_32bit", *common, _ptr(s1), _ptr(s2), p.numel(), *tail)
