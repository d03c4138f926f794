"""8-bit blockwise quantization (bitsandbytes' format) with any sorted 256-value map, and its state,
BlockwiseQuantState (with bitsandbytes' dict form).

This module owns the argument checks of these two functions and the mapping of their tensors onto
kbit_quantize_blockwise_8bit / kbit_dequantize_blockwise_8bit (the signed dynamic map, blocksize <= 4096) and
their _map twins (any other map or a CPU blocksize above 4096). The numerics are native
(csrc/numerics/blockwise8.h); the maps come from kbit._maps and kbit._map_builders; kbit.functional re-exports
the public names.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

from kbit import _abi, _checks, _dispatch, _errors, _hugepages, _map_builders, _maps


@dataclass(frozen=True, eq=False)
class BlockwiseQuantState:
    """What dequantize_blockwise needs besides the codes: bitsandbytes' 8-bit blockwise state.

    absmax: float32 [ceil(n / blocksize)], the unscaled max |x| of each block; code: the 256-value map the codes
    index (float32, sorted; the signed dynamic map by default); blocksize; dtype and shape of the original
    tensor (shape None, as bitsandbytes' own 8-bit states carry it, means "the codes' shape").
    """

    absmax: torch.Tensor
    code: torch.Tensor
    blocksize: int
    dtype: torch.dtype
    shape: torch.Size | None

    def as_dict(self, packed: bool = False) -> dict[str, Any]:
        """The state as a dict with bitsandbytes' QuantState keys (quant_type None, absmax, blocksize,
        quant_map, dtype, shape). As in bitsandbytes, an 8-bit state has no packed form: `packed` is accepted
        for the same signature and returns the same dict."""
        del packed
        return {"quant_type": None, "absmax": self.absmax, "blocksize": self.blocksize, "quant_map": self.code,
                "dtype": str(self.dtype).removeprefix("torch."),
                "shape": tuple(self.shape) if self.shape is not None else None}

    @classmethod
    def from_dict(cls, qs_dict: dict[str, Any], device: torch.device | str = "cpu") -> BlockwiseQuantState:
        """Rebuild a state from as_dict's output or bitsandbytes' QuantState.as_dict() of an 8-bit state (keys
        may carry a prefix such as "weight."); tensors go to `device`. A malformed dict is a KbitValueError."""
        if not isinstance(qs_dict, dict):
            raise _errors.KbitValueError(f"an 8-bit quant state dict must be a dict, got {type(qs_dict).__name__}")
        items = {k.split(".")[-1]: v for k, v in qs_dict.items()}
        missing = [k for k in ("absmax", "quant_map", "blocksize", "dtype") if k not in items]
        if missing or items.get("quant_type") is not None or "nested_absmax" in items:
            raise _errors.KbitValueError(
                f"not an 8-bit blockwise state: found keys {sorted(items)} (quant_type "
                f"{items.get('quant_type')!r}); missing {missing or 'nothing'}",
                fix="pass BlockwiseQuantState.as_dict() output (a 4-bit state loads with QuantState.from_dict; nested "
                    "8-bit states are not supported)")
        dtype = getattr(torch, str(items["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise _errors.KbitValueError(f"dtype {items['dtype']!r} is not a torch dtype name such as 'float16'")
        shape = items.get("shape")
        absmax, code = items["absmax"], items["quant_map"]
        if not isinstance(absmax, torch.Tensor):
            raise _errors.KbitValueError(f"absmax must be a tensor, got {type(absmax).__name__}")
        code = _map_builders.check_code(code, "quant_map")
        return cls(absmax.to(device), code.to(device), _checks.check_blocksize_8bit_any(items["blocksize"]), dtype,
                   torch.Size(shape) if shape is not None else None)


def blocksizes_for(device: torch.device) -> tuple[int, ...]:
    """The 8-bit blocksizes the library serving `device` accepts: 64..4096, and on CPU up to 16384 (as
    bitsandbytes' CPU path)."""
    return _checks.BLOCKSIZES_8BIT_CPU if device.type == "cpu" else _checks.BLOCKSIZES_8BIT


def _check_blocksize(blocksize: object, device: torch.device) -> int:
    sizes = blocksizes_for(device)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize not in sizes:
        raise _errors.KbitValueError(
            f"blocksize={blocksize!r} is not supported for 8-bit blockwise quantization on {device.type}; "
            f"use one of {', '.join(map(str, sizes))} (default 4096)")
    return blocksize


# id(map tensor) -> (a weak reference to it, its _version when checked, whether it is the signed dynamic map): a
# state's map is checked once, not at every dequantize (checking reads it on the host, which on CUDA waits for
# the stream). Keyed by id, not by the tensor: tensors compare elementwise.
_CHECKED: dict[int, tuple[weakref.ref, int, bool]] = {}


def _remember(code: torch.Tensor, signed: bool) -> None:
    key = id(code)
    _CHECKED[key] = (weakref.ref(code, lambda _ref, key=key: _CHECKED.pop(key, None)), code._version, signed)


def _checked_map(code: object, name: str) -> bool:
    """Check `code` (kbit._map_builders.check_code) unless this tensor was checked unchanged before; returns
    whether it is the signed dynamic map, which the plain (non-_map) kernels serve."""
    seen = _CHECKED.get(id(code))
    if seen is not None and seen[0]() is code and seen[1] == code._version:
        return seen[2]
    host = _map_builders.check_code(code, name).cpu()
    signed = torch.equal(host, _maps.dynamic_map(True))
    _remember(code, signed)
    return signed


def _map_on(code: torch.Tensor | None, device: torch.device) -> tuple[torch.Tensor, bool]:
    """The checked map as a new contiguous float32 tensor on `device` (the signed dynamic map for None), and
    whether it is the signed dynamic map."""
    if code is None:
        table = _maps.dynamic_map(True).to(device, copy=True)
        _remember(table, True)
        return table, True
    if isinstance(code, int) and not isinstance(code, bool):
        raise _errors.KbitValueError(f"code={code!r} is an int; the second parameter of quantize_blockwise is the "
                                     f"code map (as in bitsandbytes)", fix=f"pass blocksize={code}")
    signed = _checked_map(code, "code")
    table = code.detach().to(device, copy=True).contiguous()
    _remember(table, signed)
    return table, signed


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The dynamic map (bitsandbytes' create_dynamic_map), as a new float32 tensor (kbit._map_builders)."""
    return _map_builders.create_dynamic_map(signed, max_exponent_bits, total_bits)


def quantize_blockwise(A: torch.Tensor, code: torch.Tensor | None = None, blocksize: int = 4096
                       ) -> tuple[torch.Tensor, BlockwiseQuantState]:
    """8-bit blockwise quantization (bitsandbytes' format) with any sorted 256-value map.

    A (float32, float16 or bfloat16, any shape, any device kbit serves) is split into blocks of `blocksize`
    consecutive elements in row-major order; the last block may be shorter. absmax[b] = max |x| over block b;
    each element gets the code of `code` (default: the signed dynamic map) nearest to x * (1 / absmax[b]),
    exactly (ties go to the lower code). `code` must be 256 finite float32 values in ascending order; anything
    else is refused with a KbitValueError. An all-zero block gets absmax 0 and dequantizes to exact zeros when
    the map holds 0. A block holding inf or NaN gets absmax inf or NaN (NaN wins) and dequantizes to NaN
    everywhere, so non-finite input is never turned into finite numbers. Blocksizes: 64..4096 (powers of two),
    and on CPU also 8192 and 16384. Returns (codes: uint8 tensor of A's shape, state).
    """
    A = _checks.check_tensor("A", A)
    dtype_id = _checks.check_float_dtype("A", A.dtype)
    bs = _check_blocksize(blocksize, A.device)
    _dispatch.library_for(A, "A")  # an unsupported device is refused before the map is copied there
    table, signed = _map_on(code, A.device)
    src = A.detach().contiguous()
    n = src.numel()
    out = torch.empty(A.shape, dtype=torch.uint8, device=A.device)
    absmax = torch.empty((n + bs - 1) // bs, dtype=torch.float32, device=A.device)
    if bs <= _abi.BLOCKSIZE_8BIT_MAX and signed:
        _dispatch.run(A, "A", "kbit_quantize_blockwise_8bit", dtype_id, _dispatch.ptr(src), _dispatch.ptr(absmax),
                      _dispatch.ptr(out), n, bs)
    else:
        _dispatch.run(A, "A", "kbit_quantize_blockwise_8bit_map", dtype_id, _dispatch.ptr(table), _dispatch.ptr(src),
                      _dispatch.ptr(absmax), _dispatch.ptr(out), n, bs)
    return out, BlockwiseQuantState(absmax, table, bs, A.dtype, A.shape)


def check_state(codes: torch.Tensor, state: object) -> BlockwiseQuantState:
    if not isinstance(state, BlockwiseQuantState):
        raise _errors.KbitValueError(f"state must be the BlockwiseQuantState returned by quantize_blockwise, "
                                     f"got {type(state).__name__}")
    _check_blocksize(state.blocksize, codes.device)
    _checks.check_float_dtype("the state", state.dtype)
    n = codes.numel()
    if state.shape is not None and torch.Size(state.shape).numel() != n:
        raise _errors.KbitValueError(f"codes have {n} elements but the state describes shape {tuple(state.shape)};",
                                     fix="pass the codes and the state of the same quantize_blockwise call")
    blocks = (n + state.blocksize - 1) // state.blocksize
    absmax = state.absmax
    if absmax.dtype != torch.float32 or absmax.numel() != blocks or absmax.device != codes.device:
        raise _errors.KbitValueError(
            f"state.absmax must be {blocks} float32 values on {codes.device} for {n} codes at blocksize "
            f"{state.blocksize}; it is {absmax.numel()} {absmax.dtype} values on {absmax.device}")
    _checked_map(state.code, "state.code")
    return state


def dequantize_blockwise(codes: torch.Tensor, state: BlockwiseQuantState, *, out: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Inverse of quantize_blockwise: state.code[code] * absmax[block] in float32, rounded to state.dtype.

    `out`, when given, must have state's dtype and shape on the codes' device; it is written and returned.
    """
    codes = _checks.check_tensor("codes", codes)
    if codes.dtype != torch.uint8:
        raise _errors.KbitValueError(f"codes have dtype {codes.dtype}; pass the uint8 codes from quantize_blockwise")
    state = check_state(codes, state)
    _dispatch.library_for(codes, "codes")  # an unsupported device is refused before out is looked at
    shape = torch.Size(state.shape) if state.shape is not None else codes.shape
    if out is None:
        out = _hugepages.empty(shape, state.dtype, codes.device)
    elif (_checks.check_tensor("out", out).dtype != state.dtype or out.shape != shape
          or out.device != codes.device or not out.is_contiguous()):
        raise _errors.KbitValueError(
            f"out must be a contiguous {state.dtype} tensor of shape {tuple(shape)} on {codes.device}; "
            f"got {out.dtype} {tuple(out.shape)} on {out.device} (contiguous={out.is_contiguous()})")
    else:
        _checks.check_no_overlap(out, codes=codes, absmax=state.absmax)
    src = codes.contiguous()
    absmax = state.absmax.contiguous()
    dtype_id = _checks.DTYPE_IDS[state.dtype]
    if state.blocksize <= _abi.BLOCKSIZE_8BIT_MAX and _checked_map(state.code, "state.code"):
        _dispatch.run(codes, "codes", "kbit_dequantize_blockwise_8bit", dtype_id, _dispatch.ptr(src),
                      _dispatch.ptr(absmax), _dispatch.ptr(out), src.numel(), state.blocksize)
    else:
        table = state.code.detach().to(codes.device, dtype=torch.float32).contiguous()
        _dispatch.run(codes, "codes", "kbit_dequantize_blockwise_8bit_map", dtype_id, _dispatch.ptr(table),
                      _dispatch.ptr(src), _dispatch.ptr(absmax), _dispatch.ptr(out), src.numel(), state.blocksize)
    return out
