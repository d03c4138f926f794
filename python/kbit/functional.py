"""kbit.functional: quantization functions on torch tensors.

This module owns argument checking and the mapping of tensors onto the C ABI. The numerics are native
(csrc/numerics/), the library choice is kbit._native's. Formats are bitsandbytes' (see the docstrings).
The 4-bit functions (quantize_4bit, dequantize_4bit, gemv_4bit, QuantState) live in kbit._quant4 and are
re-exported here.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from kbit import _dispatch, _errors, _native

_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_BLOCKSIZES_8BIT = tuple(2 ** k for k in range(6, 13))  # 64 .. 4096


@dataclass(frozen=True, eq=False)
class BlockwiseQuantState:
    """What dequantize_blockwise needs besides the codes: bitsandbytes' 8-bit blockwise state.

    absmax: float32 [ceil(n / blocksize)], the unscaled max |x| of each block; code: the 256-value signed
    dynamic map (float32, for interchange: kbit always quantizes with it); blocksize; dtype and shape of the
    original tensor.
    """

    absmax: torch.Tensor
    code: torch.Tensor
    blocksize: int
    dtype: torch.dtype
    shape: torch.Size


@functools.cache
def _map(signed: bool) -> torch.Tensor:
    out = torch.empty(256, dtype=torch.float32)
    _native.cpu().call("kbit_code_map", 0 if signed else 1, ctypes.cast(out.data_ptr(), ctypes.POINTER(ctypes.c_float)))
    return out


def create_dynamic_map(signed: bool = True) -> torch.Tensor:
    """The 256-value dynamic map (bitsandbytes' create_dynamic_map(signed, 7, 8)), as a new float32 tensor."""
    return _map(bool(signed)).clone()


# ---------------------------------------------------------------------------------------- checks

def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise _errors.KbitValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise _errors.KbitValueError(f"{name} is a {t.layout} tensor; kbit works on dense tensors. "
                                     f"fix: pass {name}.to_dense()")
    return t


def _memory_span(t: torch.Tensor) -> tuple[int, int]:
    """The bytes [start, end) a tensor's elements occupy (empty for an empty tensor)."""
    if t.numel() == 0:
        return 0, 0
    extent = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
    low = t.data_ptr() + t.element_size() * sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if stride < 0)
    return low, low + extent * t.element_size()


def _check_no_overlap(out: torch.Tensor, **inputs: torch.Tensor) -> None:
    """Refuse an `out` that shares memory with an input: the kernel would read what it already overwrote."""
    o_start, o_end = _memory_span(out)
    for name, t in inputs.items():
        start, end = _memory_span(t)
        if o_start < end and start < o_end:
            raise _errors.KbitValueError(f"out shares memory with {name}; the result would read overwritten data. "
                                         f"fix: pass a separate out tensor (or none)")


def _check_float_dtype(name: str, dtype: torch.dtype) -> int:
    if dtype not in _DTYPES:
        raise _errors.KbitValueError(
            f"{name} has dtype {dtype}; kbit quantizes torch.float32, torch.float16 and torch.bfloat16. "
            f"fix: convert first, e.g. {name}.float()")
    return _DTYPES[dtype]


def _check_blocksize(blocksize: object) -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize not in _BLOCKSIZES_8BIT:
        raise _errors.KbitValueError(
            f"blocksize={blocksize!r} is not supported for 8-bit blockwise quantization; "
            f"use one of {', '.join(map(str, _BLOCKSIZES_8BIT))} (default 4096)")
    return blocksize


# ---------------------------------------------------------------------------------------- 8-bit blockwise

def quantize_blockwise(A: torch.Tensor, blocksize: int = 4096) -> tuple[torch.Tensor, BlockwiseQuantState]:
    """8-bit blockwise dynamic quantization (bitsandbytes' format).

    A (float32, float16 or bfloat16, any shape, any device kbit serves) is split into blocks of `blocksize`
    consecutive elements in row-major order; the last block may be shorter. absmax[b] = max |x| over block b;
    each element gets the code of the signed dynamic map nearest to x * (1 / absmax[b]), exactly (ties go to
    the lower code). An all-zero block gets absmax 0 and dequantizes to exact zeros. A block holding inf or
    NaN gets absmax inf or NaN (NaN wins) and dequantizes to NaN everywhere, so non-finite input is never
    turned into finite numbers. Returns (codes: uint8 tensor of A's shape, state).
    """
    A = _check_tensor("A", A)
    dtype_id = _check_float_dtype("A", A.dtype)
    bs = _check_blocksize(blocksize)
    lib = _dispatch.library_for(A, "A")
    src = A.detach().contiguous()
    n = src.numel()
    codes = torch.empty(A.shape, dtype=torch.uint8, device=A.device)
    absmax = torch.empty((n + bs - 1) // bs, dtype=torch.float32, device=A.device)
    _dispatch.call(A, lib, "kbit_quantize_blockwise_8bit", dtype_id, _dispatch.ptr(src), _dispatch.ptr(absmax),
             _dispatch.ptr(codes), n, bs, _dispatch.stream_for(A), _dispatch.threads())
    return codes, BlockwiseQuantState(absmax, _map(True).to(A.device, copy=True), bs, A.dtype, A.shape)


def _check_state(codes: torch.Tensor, state: object) -> BlockwiseQuantState:
    if not isinstance(state, BlockwiseQuantState):
        raise _errors.KbitValueError(f"state must be the BlockwiseQuantState returned by quantize_blockwise, "
                                     f"got {type(state).__name__}")
    _check_blocksize(state.blocksize)
    _check_float_dtype("the state", state.dtype)
    n = codes.numel()
    if torch.Size(state.shape).numel() != n:
        raise _errors.KbitValueError(f"codes have {n} elements but the state describes shape {tuple(state.shape)}; "
                                     f"fix: pass the codes and the state of the same quantize_blockwise call")
    blocks = (n + state.blocksize - 1) // state.blocksize
    absmax = state.absmax
    if absmax.dtype != torch.float32 or absmax.numel() != blocks or absmax.device != codes.device:
        raise _errors.KbitValueError(
            f"state.absmax must be {blocks} float32 values on {codes.device} for {n} codes at blocksize "
            f"{state.blocksize}; it is {absmax.numel()} {absmax.dtype} values on {absmax.device}")
    if state.code is not None and not torch.equal(state.code.detach().cpu().float(), _map(True)):
        raise _errors.KbitValueError("state.code is not the signed dynamic map; kbit's kernels quantize with that "
                                     "map only (custom maps are not supported)")
    return state


def dequantize_blockwise(codes: torch.Tensor, state: BlockwiseQuantState, *, out: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Inverse of quantize_blockwise: map[code] * absmax[block] in float32, rounded to state.dtype.

    `out`, when given, must have state's dtype and shape on the codes' device; it is written and returned.
    """
    codes = _check_tensor("codes", codes)
    if codes.dtype != torch.uint8:
        raise _errors.KbitValueError(f"codes have dtype {codes.dtype}; pass the uint8 codes from quantize_blockwise")
    state = _check_state(codes, state)
    lib = _dispatch.library_for(codes, "codes")
    if out is None:
        out = torch.empty(torch.Size(state.shape), dtype=state.dtype, device=codes.device)
    elif (_check_tensor("out", out).dtype != state.dtype or out.shape != torch.Size(state.shape) or out.device != codes.device
          or not out.is_contiguous()):
        raise _errors.KbitValueError(
            f"out must be a contiguous {state.dtype} tensor of shape {tuple(state.shape)} on {codes.device}; "
            f"got {out.dtype} {tuple(out.shape)} on {out.device} (contiguous={out.is_contiguous()})")
    else:
        _check_no_overlap(out, codes=codes, absmax=state.absmax)
    src = codes.contiguous()
    absmax = state.absmax.contiguous()
    _dispatch.call(codes, lib, "kbit_dequantize_blockwise_8bit", _DTYPES[state.dtype], _dispatch.ptr(src), _dispatch.ptr(absmax),
             _dispatch.ptr(out), src.numel(), state.blocksize, _dispatch.stream_for(codes), _dispatch.threads())
    return out


# ---------------------------------------------------------------------------------------- 4-bit (kbit._quant4)

from kbit._quant4 import QuantState, dequantize_4bit, gemv_4bit, get_4bit_type, quantize_4bit  # noqa: E402

__all__ = ["BlockwiseQuantState", "create_dynamic_map", "quantize_blockwise", "dequantize_blockwise", "QuantState",
           "get_4bit_type", "quantize_4bit", "dequantize_4bit", "gemv_4bit"]
