"""Gradient and update clipping of kbit's optimizers: percentile clipping (a 100-step history of gradient
norms) and the max_unorm trust ratio (LARS, LAMB), as bitsandbytes defines them.

This module owns the two scale factors and their per-parameter state ("gnorm_vec"); both are computed with
torch ops on the parameter's device before the fused native update, which then receives them as its
gnorm_scale (kbit_optim_params) and as a scaled learning rate. Definitions:
  - percentile_clipping(grad, gnorm_vec, step, percentile): gnorm_vec[step % 100] = sum(grad^2) (float32);
    current = sqrt of that; clip = sqrt(sorted(gnorm_vec)[percentile]); the gradient is scaled by
    clip / current when current > clip (bitsandbytes' percentile_clipping; the history starts at zeros, so,
    as there, the first steps are clipped hard until the history fills).
  - trust ratio: the update u the step is about to apply is computed from the current states (bitsandbytes'
    precondition pass: Momentum u = b1*s1 + g (g at step 1); Adam u = m_hat / (sqrt(v_hat) + eps) with
    m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)), unorm = ||u||, pnorm = ||p||; the update is scaled by
    (max_unorm * pnorm) / unorm when unorm > max_unorm * pnorm (one-state kinds add eps to both sides).
    For Adam's kernel the scale goes into lr and weight_decay is divided by it, so the decoupled decay
    (1 - lr * wd) is that of the unscaled step.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from kbit import _errors
from kbit.optim import _update

__all__ = ["percentile_clipping", "gnorm_scale", "trust_ratio_hyper"]

HISTORY = 100


def percentile_clipping(grad: torch.Tensor, gnorm_vec: torch.Tensor, step: int, percentile: int = 5
                        ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Record grad's squared norm in gnorm_vec (100 float32 values, updated in place) at step % 100 and return
    (current gradient norm, clip value, gnorm_scale) (bitsandbytes' percentile_clipping)."""
    if not isinstance(gnorm_vec, torch.Tensor) or gnorm_vec.numel() != HISTORY or gnorm_vec.dtype != torch.float32:
        raise _errors.KbitValueError(f"gnorm_vec must be {HISTORY} float32 values (the gradient-norm history)")
    if isinstance(percentile, bool) or not isinstance(percentile, int) or not 0 <= percentile < HISTORY:
        raise _errors.KbitValueError(f"percentile={percentile!r} must be an int in 0..99")
    gnorm_vec[step % HISTORY] = grad.detach().float().square().sum()
    current = gnorm_vec[step % HISTORY].sqrt()
    clip = torch.sort(gnorm_vec).values[percentile].sqrt()
    scale = (clip / current).item() if bool(current > clip) else 1.0
    return current, clip, scale


def gnorm_scale(g: torch.Tensor, state: dict, percentile: int) -> float:
    """The gradient scale of this step for one parameter (1.0 when percentile clipping is off, i.e. 100)."""
    if percentile >= HISTORY:
        return 1.0
    if "gnorm_vec" not in state:
        state["gnorm_vec"] = torch.zeros(HISTORY, dtype=torch.float32, device=g.device)
    return percentile_clipping(g, state["gnorm_vec"], state["step"], percentile)[2]


def _states_f32(state: dict, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """state1 (first n elements) and state2 as float32 flat tensors, dequantized when 8-bit."""
    n = p.numel()
    s1, s2 = state["state1"], state.get("state2")
    if s1.dtype == torch.float32:
        return s1.reshape(-1)[:n], (s2.reshape(-1) if s2 is not None else None)

    def deq(codes, absmax, qmap):
        scale = absmax.reshape(-1).repeat_interleave(_update.BLOCKSIZE)[:n]
        return qmap[codes.reshape(-1)[:n].long()] * scale

    s1f = deq(s1, state["absmax1"], state["qmap1"])
    s2f = deq(s2, state["absmax2"], state["qmap2"]) if s2 is not None else None
    return s1f, s2f


def _update_norm(kind: int, g: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor | None, h: _update.Hyper,
                 step: int) -> float:
    if kind == _update.MOMENTUM:
        u = g if step == 1 else s1 * h.beta1 + g
    elif kind == _update.ADAM:
        m = (s1 * h.beta1 + (1.0 - h.beta1) * g) / (1.0 - h.beta1 ** step)
        v = (s2 * h.beta2 + (1.0 - h.beta2) * g * g) / (1.0 - h.beta2 ** step)
        u = m / (v.sqrt() + h.eps)
    else:
        raise _errors.KbitValueError("max_unorm is defined for the momentum (LARS) and Adam (LAMB) updates only")
    return math.sqrt(float(u.double().square().sum()))


def trust_ratio_hyper(kind: int, p: torch.Tensor, grad: torch.Tensor, state: dict, h: _update.Hyper,
                      gnorm: float, max_unorm: float) -> _update.Hyper:
    """The step's hyperparameters with the max_unorm trust ratio folded into lr (see the module docstring)."""
    g = grad.detach().reshape(-1).float() * gnorm
    s1, s2 = _states_f32(state, p)
    unorm = _update_norm(kind, g, s1, s2, h, state["step"])
    pnorm = math.sqrt(float(p.detach().double().square().sum()))
    one_state = kind != _update.ADAM
    limit = max_unorm * pnorm + (h.eps if one_state else 0.0)
    scale = limit / unorm if unorm > limit else 1.0
    if scale == 1.0:
        return h
    wd = h.weight_decay / scale if (kind == _update.ADAM and scale > 0.0) else h.weight_decay
    return dataclasses.replace(h, lr=h.lr * scale, weight_decay=wd)
