"""Plain-torch float32 reference of kbit's optimizers, written from the formulas of numerics.md
("8-bit blockwise optimizers") and bitsandbytes' kernels, independently of kbit's native code.

Every operation is one eager torch op on float32 tensors with float32 0-dim scalars, so each result is
rounded to float32 exactly as a float32 kernel without contraction rounds it. The 8-bit form dequantizes,
updates, recomputes absmax and requantizes each step with a sorted-midpoint search in float64 (code = number
of exact midpoints strictly below the normalised value: nearest, ties to the lower code), then the sign fix;
a NaN absmax is the canonical quiet NaN (0x7fc00000).
The maps come from kbit.functional.create_dynamic_map; tests check them against the published SHA-256.
"""
from __future__ import annotations

import hashlib
import math

import torch

from kbit import _abi
from kbit import functional as F

# the ABI's numbers (kbit._abi, checked against csrc/kbit.h); the math below is written independently
ADAM, MOMENTUM, RMSPROP, ADAGRAD, LION = _abi.OPTIM_ADAM, _abi.OPTIM_MOMENTUM, _abi.OPTIM_RMSPROP, _abi.OPTIM_ADAGRAD, _abi.OPTIM_LION
ADEMAMIX = _abi.OPTIM_ADEMAMIX
BLOCK = _abi.OPTIM_BLOCKSIZE
SIGNED_SHA = "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c"
UNSIGNED_SHA = "305f002cc11278fb769d13b25b9fd0c7c83c8402c40a878fe086f4039fde6398"
SMAP, UMAP = F.create_dynamic_map(True), F.create_dynamic_map(False)


def map_sha(m: torch.Tensor) -> str:
    return hashlib.sha256(m.numpy().astype("<f4").tobytes()).hexdigest()


def f32(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


class Scalars:
    """The per-step scalars, rounded to float32 as ctypes rounds them for the kernel."""

    def __init__(self, kind, lr, b1, b2, b3, alpha, eps, wd, t):
        self.kind, self.t = kind, t
        self.lr, self.b1, self.b2, self.b3 = f32(lr), f32(b1), f32(b2), f32(b3)
        self.alpha, self.eps, self.wd, self.wd_on = f32(alpha), f32(eps), f32(wd), wd > 0
        c1, c2 = (1 - b1 ** t, math.sqrt(1 - b2 ** t)) if _abi.optim_state_count(kind) >= 2 else (1.0, 1.0)
        self.c1, self.c2 = f32(c1), f32(c2)
        self.step_size = (-self.lr * self.c2) / self.c1
        self.eps_hat = self.eps * self.c2
        self.decay = f32(1.0) - self.lr * self.wd


def sqrt32(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 sqrt (torch's float32 CPU sqrt can be 1 ulp off; float64 then rounding is exact)."""
    return torch.sqrt(x.double()).float()


def ema(s, beta, x):
    return s * beta + (f32(1.0) - beta) * x


def element_update(k: Scalars, p, g, s1, s2, s3):
    """Returns (p, s1, s2, s3) after one step; all float32 tensors of one shape."""
    if k.kind == ADAM:
        s1, s2 = ema(s1, k.b1, g), ema(s2, k.b2, g * g)
        p = p + k.step_size * (s1 / (sqrt32(s2) + k.eps_hat))
        return (p * k.decay if k.wd_on else p), s1, s2, s3
    if k.kind == ADEMAMIX:
        s1, s3, s2 = ema(s1, k.b1, g), ema(s3, k.b3, g), ema(s2, k.b2, g * g)
        p = p - k.lr * ((s1 / k.c1 + k.alpha * s3) / (sqrt32(s2) / k.c2 + k.eps))
        return (p * k.decay if k.wd_on else p), s1, s2, s3
    if k.kind == LION:
        if k.wd_on:
            p = p * k.decay
        u = torch.sign(s1 * k.b1 + (f32(1.0) - k.b1) * g)
        return p - k.lr * u, ema(s1, k.b2, g), s2, s3
    if k.wd_on:
        g = g + p * k.wd
    if k.kind == MOMENTUM:
        s1 = g.clone() if k.t == 1 else s1 * k.b1 + g
        return p - k.lr * s1, s1, s2, s3
    s1 = ema(s1, k.b1, g * g) if k.kind == RMSPROP else s1 + g * g
    return p - k.lr * (g / (sqrt32(s1) + k.eps)), s1, s2, s3


# ------------------------------------------------------------------------------------------- 8-bit form

def blocks_of(x: torch.Tensor) -> torch.Tensor:
    n = x.numel()
    return torch.nn.functional.pad(x, (0, (-n) % BLOCK)).view(-1, BLOCK)


def dequantize(codes: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    n = codes.numel()
    scale = absmax.repeat_interleave(BLOCK)[:n]
    out = table[codes.long()] * scale
    return torch.where(torch.isfinite(scale), out, torch.full_like(out, float("nan")))


def quantize(s: torch.Tensor, table: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, absmax) of state s: absmax per block (NaN wins), exact nearest code of s * (1/absmax)."""
    n = s.numel()
    absmax = blocks_of(s).abs().amax(dim=1)  # amax propagates NaN
    absmax = torch.where(torch.isnan(absmax), torch.full_like(absmax, float("nan")), absmax)  # canonical NaN
    inv = torch.where(absmax == 0, torch.zeros_like(absmax), f32(1.0) / absmax)
    normed = s * inv.repeat_interleave(BLOCK)[:n]
    mids = (table.double()[:-1] + table.double()[1:]) / 2
    codes = torch.searchsorted(mids, normed.double().contiguous(), side="left")
    if signed:
        sign_differs = torch.signbit(table[codes]) != torch.signbit(s)
        codes = torch.where(sign_differs, codes + torch.where(s > 0, 1, -1), codes)
    finite = torch.isfinite(absmax).repeat_interleave(BLOCK)[:n]
    codes = torch.where(finite, codes, torch.full_like(codes, 127))
    return codes.to(torch.uint8), absmax


class Reference:
    """A reference optimizer over one flattened parameter: 32-bit (bits=32) or 8-bit blockwise state."""

    def __init__(self, kind, p: torch.Tensor, bits: int, lr, betas, eps=1e-8, wd=0.0, alpha=0.0):
        self.kind, self.bits, self.t = kind, bits, 0
        self.dtype = p.dtype
        self.p = p.detach().clone().flatten()
        b = tuple(betas) + (0.0,) * (3 - len(betas))
        self.h = (lr, b[0], b[1], b[2], alpha, eps, wd)
        n = self.p.numel()
        if bits == 32:
            self.s = [torch.zeros(n) for _ in range(3)]
        else:
            blocks = -(-n // BLOCK)
            self.codes = [torch.zeros(n, dtype=torch.uint8) for _ in range(3)]
            self.absmax = [torch.zeros(blocks) for _ in range(3)]

    def states(self) -> list[torch.Tensor]:
        if self.bits == 32:
            return self.s
        tables = (SMAP, UMAP, SMAP)
        return [dequantize(c, a, t) for c, a, t in zip(self.codes, self.absmax, tables)]

    def step(self, grad: torch.Tensor) -> None:
        self.t += 1
        k = Scalars(self.kind, *self.h, self.t)
        g = grad.detach().flatten().float()
        s1, s2, s3 = self.states()
        p_new, n1, n2, n3 = element_update(k, self.p.float(), g, s1, s2, s3)
        if self.bits == 8:  # a non-finite gradient element zeroes its states and keeps its parameter
            ok = torch.isfinite(g)
            zero = torch.zeros_like(g)
            n1, n2, n3 = (torch.where(ok, x, zero) for x in (n1, n2, n3))
            p_new = torch.where(ok, p_new, self.p.float())
            for i, (x, table, signed) in enumerate(((n1, SMAP, True), (n2, UMAP, False), (n3, SMAP, True))):
                self.codes[i], self.absmax[i] = quantize(x, table, signed)
        else:
            self.s = [n1, n2, n3]
        self.p = p_new.to(self.dtype)


# ------------------------------------------------------------------- trust ratio, schedules, clipping (issue 12)

def ademamix_schedule(step: int, alpha: float, b1: float, b3: float, t_alpha, t_beta3) -> tuple[float, float]:
    """(alpha_t, beta3_t) of AdEMAMix's warm-ups, from the paper's formulas as bitsandbytes writes them."""
    a = min(step * alpha / t_alpha, alpha) if t_alpha else alpha
    if t_beta3:
        frac = step / t_beta3
        b3 = min(math.exp(math.log(b1) * math.log(b3) / ((1 - frac) * math.log(b3) + frac * math.log(b1))), b3)
    return a, b3


def clip_scale(g: torch.Tensor, history: torch.Tensor, step: int, percentile: int) -> float:
    """bitsandbytes' percentile clipping: record |g|^2 at step % 100, scale = clip / current when above."""
    history[step % 100] = g.float().square().sum()
    current = history[step % 100].sqrt()
    clip = history.sort().values[percentile].sqrt()
    return (clip / current).item() if current > clip else 1.0


class TrustRatioReference:
    """LARS (momentum) / LAMB (Adam, decoupled decay) in float32 with 32-bit states, written from bitsandbytes'
    formulas: the update u of the step is computed first, scaled by min(1, max_unorm * ||p|| / ||u||) (one-state:
    + eps on both sides), and only the update is scaled (the decoupled decay uses the plain lr)."""

    def __init__(self, kind, p, lr, betas, eps, wd, max_unorm):
        self.kind, self.lr, self.b1, self.b2, self.eps, self.wd, self.max_unorm = kind, lr, betas[0], betas[1], eps, wd, max_unorm
        self.p = p.detach().clone().flatten().float()
        self.s1, self.s2, self.t = torch.zeros_like(self.p), torch.zeros_like(self.p), 0

    def step(self, grad: torch.Tensor) -> None:
        self.t += 1
        g = grad.detach().flatten().float()
        pnorm = self.p.double().norm().item()
        if self.kind == MOMENTUM:
            gd = g + self.p * self.wd if self.wd > 0 else g
            s1 = gd.clone() if self.t == 1 else self.s1 * self.b1 + gd
            u_pre = g if self.t == 1 else self.s1 * self.b1 + g  # bitsandbytes' norm pass ignores weight decay
            unorm = u_pre.double().norm().item()
            limit = self.max_unorm * pnorm + self.eps
            scale = limit / unorm if unorm > limit else 1.0
            self.p = self.p - (self.lr * scale) * s1
            self.s1 = s1
            return
        s1 = self.s1 * self.b1 + (1 - self.b1) * g
        s2 = self.s2 * self.b2 + (1 - self.b2) * g * g
        u = (s1 / (1 - self.b1 ** self.t)) / ((s2 / (1 - self.b2 ** self.t)).sqrt() + self.eps)
        unorm = u.double().norm().item()
        limit = self.max_unorm * pnorm
        scale = limit / unorm if unorm > limit else 1.0
        c1, c2 = 1 - self.b1 ** self.t, math.sqrt(1 - self.b2 ** self.t)
        self.p = self.p + scale * (-self.lr * c2 / c1) * (s1 / (sqrt32(s2) + self.eps * c2))
        if self.wd > 0:
            self.p = self.p * (1 - self.lr * self.wd)
        self.s1, self.s2 = s1, s2
