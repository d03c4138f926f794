"""8-bit blockwise dynamic quantization (bitsandbytes' format) and its state, BlockwiseQuantState.

This module owns the argument checks of these two functions and the mapping of their tensors onto
kbit_quantize_blockwise_8bit / kbit_dequantize_blockwise_8bit. The numerics are native
(csrc/numerics/blockwise8.h); the maps come from kbit._maps; kbit.functional re-exports the public names.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kbit import _checks, _dispatch, _errors, _hugepages, _maps


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


def create_dynamic_map(signed: bool = True) -> torch.Tensor:
    """The 256-value dynamic map (bitsandbytes' create_dynamic_map(signed, 7, 8)), as a new float32 tensor."""
    return _maps.dynamic_map(bool(signed)).clone()


def quantize_blockwise(A: torch.Tensor, blocksize: int = 4096) -> tuple[torch.Tensor, BlockwiseQuantState]:
    """8-bit blockwise dynamic quantization (bitsandbytes' format).

    A (float32, float16 or bfloat16, any shape, any device kbit serves) is split into blocks of `blocksize`
    consecutive elements in row-major order; the last block may be shorter. absmax[b] = max |x| over block b;
    each element gets the code of the signed dynamic map nearest to x * (1 / absmax[b]), exactly (ties go to
    the lower code). An all-zero block gets absmax 0 and dequantizes to exact zeros. A block holding inf or
    NaN gets absmax inf or NaN (NaN wins) and dequantizes to NaN everywhere, so non-finite input is never
    turned into finite numbers. Returns (codes: uint8 tensor of A's shape, state).
    """
    A = _checks.check_tensor("A", A)
    dtype_id = _checks.check_float_dtype("A", A.dtype)
    bs = _checks.check_blocksize_8bit(blocksize)
    src = A.detach().contiguous()
    n = src.numel()
    codes = torch.empty(A.shape, dtype=torch.uint8, device=A.device)
    absmax = torch.empty((n + bs - 1) // bs, dtype=torch.float32, device=A.device)
    _dispatch.run(A, "A", "kbit_quantize_blockwise_8bit", dtype_id, _dispatch.ptr(src), _dispatch.ptr(absmax),
                  _dispatch.ptr(codes), n, bs)
    return codes, BlockwiseQuantState(absmax, _maps.dynamic_map(True).to(A.device, copy=True), bs, A.dtype, A.shape)


def check_state(codes: torch.Tensor, state: object) -> BlockwiseQuantState:
    if not isinstance(state, BlockwiseQuantState):
        raise _errors.KbitValueError(f"state must be the BlockwiseQuantState returned by quantize_blockwise, "
                                     f"got {type(state).__name__}")
    _checks.check_blocksize_8bit(state.blocksize)
    _checks.check_float_dtype("the state", state.dtype)
    n = codes.numel()
    if torch.Size(state.shape).numel() != n:
        raise _errors.KbitValueError(f"codes have {n} elements but the state describes shape {tuple(state.shape)};",
                                     fix="pass the codes and the state of the same quantize_blockwise call")
    blocks = (n + state.blocksize - 1) // state.blocksize
    absmax = state.absmax
    if absmax.dtype != torch.float32 or absmax.numel() != blocks or absmax.device != codes.device:
        raise _errors.KbitValueError(
            f"state.absmax must be {blocks} float32 values on {codes.device} for {n} codes at blocksize "
            f"{state.blocksize}; it is {absmax.numel()} {absmax.dtype} values on {absmax.device}")
    if state.code is not None and not torch.equal(state.code.detach().cpu().float(), _maps.dynamic_map(True)):
        raise _errors.KbitValueError("state.code is not the signed dynamic map; kbit's kernels quantize with that "
                                     "map only (custom maps are not supported)")
    return state


def dequantize_blockwise(codes: torch.Tensor, state: BlockwiseQuantState, *, out: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Inverse of quantize_blockwise: map[code] * absmax[block] in float32, rounded to state.dtype.

    `out`, when given, must have state's dtype and shape on the codes' device; it is written and returned.
    """
    codes = _checks.check_tensor("codes", codes)
    if codes.dtype != torch.uint8:
        raise _errors.KbitValueError(f"codes have dtype {codes.dtype}; pass the uint8 codes from quantize_blockwise")
    state = check_state(codes, state)
    _dispatch.library_for(codes, "codes")  # an unsupported device is refused before out is looked at
    if out is None:
        out = _hugepages.empty(torch.Size(state.shape), state.dtype, codes.device)
    elif (_checks.check_tensor("out", out).dtype != state.dtype or out.shape != torch.Size(state.shape)
          or out.device != codes.device or not out.is_contiguous()):
        raise _errors.KbitValueError(
            f"out must be a contiguous {state.dtype} tensor of shape {tuple(state.shape)} on {codes.device}; "
            f"got {out.dtype} {tuple(out.shape)} on {out.device} (contiguous={out.is_contiguous()})")
    else:
        _checks.check_no_overlap(out, codes=codes, absmax=state.absmax)
    src = codes.contiguous()
    absmax = state.absmax.contiguous()
    _dispatch.run(codes, "codes", "kbit_dequantize_blockwise_8bit", _checks.DTYPE_IDS[state.dtype], _dispatch.ptr(src),
                  _dispatch.ptr(absmax), _dispatch.ptr(out), src.numel(), state.blocksize)
    return out
