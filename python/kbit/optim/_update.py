"""The native update step of one parameter: argument mapping onto the C ABI (csrc/kbit.h).

This module owns only the call: which function (32-bit or 8-bit blockwise states) and the step's
kbit_optim_params (bias corrections computed once per step in double precision and rounded to float32 by
ctypes, so CPU and CUDA libraries receive identical values); kbit._dispatch.run adds the launch arguments.
The optimizer kinds, dtype ids and state rules are kbit._abi's. Checking tensors and hyperparameters is
kbit.optim._base's job.
"""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import torch

from kbit import _abi, _checks, _dispatch

DTYPE_IDS = _checks.DTYPE_IDS
BLOCKSIZE = _abi.OPTIM_BLOCKSIZE  # the quant block of 8-bit states
ADAM, MOMENTUM, RMSPROP, ADAGRAD, LION = _abi.OPTIM_ADAM, _abi.OPTIM_MOMENTUM, _abi.OPTIM_RMSPROP, _abi.OPTIM_ADAGRAD, _abi.OPTIM_LION
ADEMAMIX = _abi.OPTIM_ADEMAMIX
state_count = _abi.optim_state_count


def state1_copies(kind: int) -> int:
    """How many n-element states state1 holds: 2 for a kind with a third state (kept after the first), else 1."""
    return 2 if state_count(kind) >= 3 else 1


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
    if state_count(kind) < 2:
        return 1.0, 1.0
    return 1.0 - h.beta1 ** step, math.sqrt(1.0 - h.beta2 ** step)


def params(kind: int, h: Hyper, step: int, gnorm_scale: float) -> _abi.OptimParams:
    """The kbit_optim_params of one step."""
    c1, c2 = corrections(kind, h, step)
    return _abi.OptimParams(ctypes.sizeof(_abi.OptimParams), h.lr, h.beta1, h.beta2, h.beta3, h.alpha, h.eps,
                            h.weight_decay, c1, c2, gnorm_scale, step)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else _dispatch.ptr(t)


def update(kind: int, p: torch.Tensor, g: torch.Tensor, state: dict, h: Hyper, gnorm_scale: float = 1.0) -> None:
    """One step on contiguous p (updated in place) with gradient g, from the states in `state`.

    The state tensors decide the form: uint8 "state1" is the 8-bit blockwise form (with absmax1/2),
    float32 "state1" the 32-bit form. state["step"] must already count this step (1-based).
    """
    s1, s2 = state["state1"], state.get("state2")
    common = (kind, DTYPE_IDS[p.dtype], _ptr(p), _ptr(g))
    scalars = ctypes.byref(params(kind, h, state["step"], gnorm_scale))
    if s1.dtype == torch.uint8:
        _dispatch.run(p, "the parameter", "kbit_optimizer_update_8bit_blockwise", *common, _ptr(s1), _ptr(s2),
                      _ptr(state["absmax1"]), _ptr(state.get("absmax2")), p.numel(), scalars)
    else:
        _dispatch.run(p, "the parameter", "kbit_optimizer_update_32bit", *common, _ptr(s1), _ptr(s2), p.numel(),
                      scalars)
