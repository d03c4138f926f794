"""Argument checks shared by kbit's operations and layers: every check that refuses a tensor, dtype, block
size, quant type or packed buffer before it reaches the C ABI, each with a message naming the problem and the
fix.

This module owns the checks and the Python-side tables of accepted values (taken from kbit._abi, the one copy
of csrc/kbit.h's constants). It is one of the explicitly shared internal modules (see __all__): kbit.nn and
kbit.optim may import these names. It calls no native code.
"""
from __future__ import annotations

import torch

from kbit import _abi, _errors

__all__ = ["DTYPE_IDS", "BLOCKSIZES_8BIT", "BLOCKSIZES_8BIT_CPU", "BLOCKSIZES_4BIT", "QUANT_TYPES", "STORAGE_DTYPES", "check_tensor",
           "memory_span", "check_no_overlap", "check_float_dtype", "check_blocksize_8bit",
           "check_blocksize_8bit_any", "check_quant_type",
           "check_blocksize_4bit", "packed_bytes"]

DTYPE_IDS = {torch.float32: _abi.F32, torch.float16: _abi.F16, torch.bfloat16: _abi.BF16}
QUANT_TYPES = {"nf4": _abi.NF4, "fp4": _abi.FP4}


def _powers_of_two(low: int, high: int) -> tuple[int, ...]:
    return tuple(2 ** k for k in range(low.bit_length() - 1, high.bit_length()))


BLOCKSIZES_8BIT = _powers_of_two(_abi.BLOCKSIZE_8BIT_MIN, _abi.BLOCKSIZE_8BIT_MAX)  # 64 .. 4096
BLOCKSIZES_8BIT_CPU = _powers_of_two(_abi.BLOCKSIZE_8BIT_MIN, _abi.BLOCKSIZE_8BIT_MAX_CPU)  # 64 .. 16384
BLOCKSIZES_4BIT = _powers_of_two(_abi.BLOCKSIZE_4BIT_MIN, _abi.BLOCKSIZE_4BIT_MAX)  # 32 .. 4096
# the dtypes a 4-bit packed tensor may be viewed as (bitsandbytes' quant_storage)
STORAGE_DTYPES = (torch.uint8, torch.int8, torch.float16, torch.bfloat16, torch.float32, torch.int16,
                  torch.int32, torch.float64, torch.int64)


def check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise _errors.KbitValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise _errors.KbitValueError(f"{name} is a {t.layout} tensor; kbit works on dense tensors.",
                                     fix=f"pass {name}.to_dense()")
    return t


def memory_span(t: torch.Tensor) -> tuple[int, int]:
    """The bytes [start, end) a tensor's elements occupy (empty for an empty tensor)."""
    if t.numel() == 0:
        return 0, 0
    extent = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
    low = t.data_ptr() + t.element_size() * sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())
                                                if stride < 0)
    return low, low + extent * t.element_size()


def check_no_overlap(out: torch.Tensor, **inputs: torch.Tensor) -> None:
    """Refuse an `out` that shares memory with an input: the kernel would read what it already overwrote."""
    o_start, o_end = memory_span(out)
    for name, t in inputs.items():
        start, end = memory_span(t)
        if o_start < end and start < o_end:
            raise _errors.KbitValueError(f"out shares memory with {name}; the result would read overwritten data.",
                                         fix="pass a separate out tensor (or none)")


def check_float_dtype(name: str, dtype: torch.dtype) -> int:
    if dtype not in DTYPE_IDS:
        raise _errors.KbitValueError(
            f"{name} has dtype {dtype}; kbit quantizes torch.float32, torch.float16 and torch.bfloat16.",
            fix=f"convert first, e.g. {name}.float()")
    return DTYPE_IDS[dtype]


def check_blocksize_8bit(blocksize: object) -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize not in BLOCKSIZES_8BIT:
        raise _errors.KbitValueError(
            f"blocksize={blocksize!r} is not supported for 8-bit blockwise quantization; "
            f"use one of {', '.join(map(str, BLOCKSIZES_8BIT))} (default 4096)")
    return blocksize


def check_blocksize_8bit_any(blocksize: object) -> int:
    """A blocksize some library accepts for 8-bit blockwise codes (64..16384; the device check comes later)."""
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize not in BLOCKSIZES_8BIT_CPU:
        raise _errors.KbitValueError(f"blocksize={blocksize!r} is not an 8-bit blocksize; use one of "
                                     f"{', '.join(map(str, BLOCKSIZES_8BIT_CPU))} (above 4096 on CPU only)")
    return blocksize


def check_quant_type(quant_type: object) -> int:
    if not isinstance(quant_type, str) or quant_type not in QUANT_TYPES:
        raise _errors.KbitValueError(f"quant_type={quant_type!r} is not supported; use 'nf4' or 'fp4'")
    return QUANT_TYPES[quant_type]


def check_blocksize_4bit(blocksize: object) -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize not in BLOCKSIZES_4BIT:
        raise _errors.KbitValueError(f"blocksize={blocksize!r} is not supported for 4-bit quantization; use one of "
                                     f"{', '.join(map(str, BLOCKSIZES_4BIT))} (default 64)")
    return blocksize


def packed_bytes(name: str, packed: object, n: int, device: torch.device | None = None) -> torch.Tensor:
    """The packed 4-bit codes of n elements as a flat uint8 tensor (any quant_storage dtype is viewed as bytes)."""
    packed = check_tensor(name, packed)
    flat = packed.detach().contiguous().reshape(-1)
    if flat.dtype != torch.uint8:
        if flat.dtype not in STORAGE_DTYPES:
            raise _errors.KbitValueError(f"{name} has dtype {packed.dtype}; pass the tensor quantize_4bit returned")
        flat = flat.view(torch.uint8)
    want = (n + 1) // 2
    if flat.numel() != want:
        raise _errors.KbitValueError(f"{name} holds {flat.numel()} bytes but the quant state describes {n} "
                                     f"elements ({want} bytes);", fix="pass the packed tensor and the state of "
                                     "the same quantize_4bit call")
    if device is not None and flat.device != device:
        raise _errors.KbitValueError(f"{name} is on {flat.device} but the quant state is on {device}; move both "
                                     f"with QuantState.to(device) and {name}.to(device)")
    return flat
