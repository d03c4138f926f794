"""The matmul of a 4-bit linear layer: which path serves a batch, and the dequantized-tile path.

This module owns how Linear4bit multiplies (x @ W.T + b and, for the backward pass, grad @ W): a batch of at most
GEMV_MAX_ROWS rows goes through the native gemv_4bit (which reads the 4-bit weight once and is bandwidth-bound), and
a gradient of at most GRAD_GEMV_MAX_ROWS rows through the native transposed gemv_4bit_t (the same single read of the
weight, blockwise4.h's transposed order); a larger one dequantizes the weight a tile of output rows at a time into a
reused buffer, in the compute dtype, and runs torch's matmul on each tile, so that no full dense weight is allocated
(and paged in) per call and each tile is multiplied while it is still in the cache. A tile's values are exactly
those of dequantize_4bit(W) rounded to the compute dtype, so the result is torch's F.linear(x, dequantize_4bit(W))
up to the summation order of torch's matmul. On a CPU without native float16/bfloat16 matrix instructions torch's
half-precision matmul is emulated and several times slower than its float32 one, so there the tiles and the batch
are widened to float32 (exactly) and the product is rounded to the dtype once (matmul_dtype). The functions here
take checked tensors; kbit._ops wraps them as custom ops; linear_4bit (re-exported by kbit.functional, called by
kbit.nn.Linear4bit) is the checked entry point.
"""
from __future__ import annotations

import math
import threading

import torch

from kbit import _quant4

GEMV_MAX_ROWS = 16  # rows up to which gemv_4bit beats dequantized tiles + matmul (ci/bench.py's Linear4bit rows)
# rows of the gradient up to which gemv_4bit_t beats the tiles; float32 4096x4096 on an AVX2 Zen 3 (2 threads), per
# layer: 8 rows 6.2 ms against 11.2 ms for the tiles, 16 rows ~20 ms against 17 ms (ci/bench.py's input-gradient rows)
GRAD_GEMV_MAX_ROWS = 8
TILE_BYTES = 16 << 20  # a tile of the dequantized weight: few enough torch matmul calls (each costs ~ms of thread start here)

_scratch = threading.local()


def _buffer(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reused flat buffer of at least `numel` elements (CPU: one per thread, dtype and device; it grows, never
    shrinks). CUDA takes a fresh tensor from torch's caching allocator, which is already reused memory and keeps
    the stream semantics of the caller."""
    if device.type != "cpu":
        return torch.empty(numel, dtype=dtype, device=device)
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    buf = buffers.get(dtype)
    if buf is None or buf.numel() < numel:
        buf = buffers[dtype] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


def tile_rows(out_features: int, in_features: int, blocksize: int, itemsize: int) -> int:
    """Weight rows per tile: about TILE_BYTES of dequantized values, and a multiple of the rows after which a
    tile starts on a block boundary and a whole byte (so a tile is one slice of the packed codes and absmax)."""
    unit = blocksize // math.gcd(in_features, blocksize) if in_features else 1
    rows = max(1, TILE_BYTES // max(1, in_features * itemsize)) // unit * unit
    return min(out_features, max(unit, rows))


def matmul_dtype(dtype: torch.dtype, device_type: str, native_half: bool) -> torch.dtype:
    """The dtype the dequantized tiles are multiplied in, for a compute dtype on a device: the dtype itself, except
    float16/bfloat16 on a CPU whose torch has no native matrix instructions for them (native_half False): there
    float32. Widening a half tile is exact and torch's half matmul accumulates in float32 too, so either way the
    result is the product of dequantize_4bit's values in that dtype, rounded once. Measured on an AVX2 Zen 3
    (2 threads): bfloat16 512x4096 by 4096x4096 1111 ms in bfloat16, 167 ms in float32."""
    if device_type == "cpu" and dtype in (torch.float16, torch.bfloat16) and not native_half:
        return torch.float32
    return dtype


_NATIVE_HALF: dict[torch.dtype, bool] = {}


def native_half(dtype: torch.dtype) -> bool:
    """Whether torch's CPU matmul in this half dtype runs on native instructions (AVX512-BF16 or AMX for bfloat16,
    AMX-FP16 for float16), from torch's own CPU checks; a torch without those checks counts as not native."""
    if dtype not in _NATIVE_HALF:
        cpu = torch.cpu

        def has(name: str) -> bool:
            check = getattr(cpu, name, None)
            return bool(check()) if callable(check) else False

        if dtype == torch.bfloat16:
            _NATIVE_HALF[dtype] = has("_is_avx512_bf16_supported") or has("_is_amx_tile_supported")
        else:
            _NATIVE_HALF[dtype] = has("_is_amx_fp16_supported")
    return _NATIVE_HALF[dtype]


def _product_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    half = dtype in (torch.float16, torch.bfloat16) and device.type == "cpu"
    return matmul_dtype(dtype, device.type, native_half(dtype) if half else True)


def _tiles(packed: torch.Tensor, absmax: torch.Tensor, out_features: int, in_features: int, blocksize: int,
           quant_type: str, dtype: torch.dtype, product: torch.dtype):
    """(first row, dequantized tile) over the weight, each tile in the same reused buffer: dequantize_4bit's values
    in `dtype`, widened to `product` when that differs (a second reused buffer)."""
    step = tile_rows(out_features, in_features, blocksize, torch.empty((), dtype=product).element_size())
    buf = _buffer(step * in_features, dtype, packed.device)
    wide = None if product == dtype else _buffer(step * in_features, product, packed.device)
    for r0 in range(0, out_features, step):
        r1 = min(out_features, r0 + step)
        first, count = r0 * in_features, (r1 - r0) * in_features
        tile = buf[:count]
        blocks = slice(first // blocksize, (first + count + blocksize - 1) // blocksize)
        _quant4.dequantize_into(packed[first // 2:(first + count + 1) // 2], absmax[blocks], tile, blocksize,
                                quant_type)
        if wide is not None:
            tile = wide[:count].copy_(tile)
        yield r0, tile.view(r1 - r0, in_features)


def linear(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, bias: torch.Tensor | None,
           out_features: int, blocksize: int, quant_type: str) -> torch.Tensor:
    """x @ W.T (+ bias) in x's dtype; absmax resolved (float32), packed the flat bytes."""
    in_features = x.shape[-1]
    rows = x.numel() // in_features if in_features else math.prod(x.shape[:-1])
    if rows <= GEMV_MAX_ROWS or in_features == 0:
        return _quant4.gemv_rows(x, packed, absmax, bias, out_features, blocksize, quant_type)
    product = _product_dtype(x.dtype, x.device)
    x2 = x.detach().reshape(rows, in_features).to(product)
    b = None if bias is None else bias.detach().to(x.dtype).to(product)  # the bias rounded to x's dtype first
    out = torch.empty((rows, out_features), dtype=product, device=x.device)
    tiles = _tiles(packed, absmax, out_features, in_features, blocksize, quant_type, x.dtype, product)
    for r0, w in tiles:
        r1 = r0 + w.shape[0]
        if b is None:
            torch.mm(x2, w.t(), out=out[:, r0:r1])
        else:
            torch.addmm(b[r0:r1], x2, w.t(), out=out[:, r0:r1])
    return out.to(x.dtype).reshape(*x.shape[:-1], out_features)


def grad_input(grad: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, in_features: int, blocksize: int,
               quant_type: str) -> torch.Tensor:
    """grad @ W (the gradient of x @ W.T with respect to x) in grad's dtype: gemv_4bit_t's bits up to
    GRAD_GEMV_MAX_ROWS rows, tile by tile above; never a dense W."""
    out_features = grad.shape[-1]
    rows = grad.numel() // out_features if out_features else math.prod(grad.shape[:-1])
    if rows <= GRAD_GEMV_MAX_ROWS:
        return _quant4.gemv_t_rows(grad, packed, absmax, in_features, blocksize, quant_type)
    product = _product_dtype(grad.dtype, grad.device)
    g2 = grad.reshape(rows, out_features).to(product)
    out = torch.zeros((rows, in_features), dtype=product, device=grad.device)
    for r0, w in _tiles(packed, absmax, out_features, in_features, blocksize, quant_type, grad.dtype, product):
        out.addmm_(g2[:, r0:r0 + w.shape[0]], w)
    return out.to(grad.dtype).reshape(*grad.shape[:-1], in_features)


def linear_4bit(x: torch.Tensor, B_packed: torch.Tensor, quant_state, bias: torch.Tensor | None = None
                ) -> torch.Tensor:
    """x @ W.T (+ bias) for a 4-bit weight W (out_features, in_features), the fastest way for x's batch: gemv_4bit
    (its bits) up to GEMV_MAX_ROWS rows, dequantized tiles + torch's matmul above. Gradients flow to x and bias.
    Under torch.compile / torch.export, or when a gradient is needed, this is the custom op kbit::linear_4bit."""
    packed, state, bias = _quant4.check_gemv_args(x, B_packed, quant_state, bias)
    args = (x, packed, *_quant4.absmax_parts(state), bias, state.shape[0], state.blocksize, state.quant_type)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))
    if needs_grad or torch.compiler.is_compiling():
        return torch.ops.kbit.linear_4bit(*args)  # one graph node under torch.compile; autograd in kbit._ops
    return linear(x, packed, _quant4.resolve_absmax(*args[2:6]), bias, *args[7:])
