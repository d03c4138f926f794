"""The code maps, read back from the CPU library (kbit_code_map): the 8-bit dynamic maps and the NF4/FP4 tables.

This module owns asking the library for them (once per map, cached) and the one difference between a kernel
table and what bitsandbytes stores as a 4-bit quant_map. The values themselves are generated once, by
ci/gen_numerics.py into csrc/numerics/; Python never writes them again.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from kbit import _abi, _checks, _native


@functools.cache
def code_map(map_id: int) -> torch.Tensor:
    """The float32 values of one kbit_map (shared and cached: clone before changing it)."""
    size = _abi.MAP_SIZE_4BIT if map_id in (_abi.MAP_NF4, _abi.MAP_FP4) else _abi.MAP_SIZE_8BIT
    out = torch.empty(size, dtype=torch.float32)
    _native.cpu().call("kbit_code_map", map_id, ctypes.cast(out.data_ptr(), ctypes.POINTER(ctypes.c_float)), size)
    return out


def dynamic_map(signed: bool) -> torch.Tensor:
    """The 256-value signed or unsigned dynamic map (shared; clone before changing it)."""
    return code_map(_abi.MAP_DYNAMIC_SIGNED if signed else _abi.MAP_DYNAMIC_UNSIGNED)


def get_4bit_type(quant_type: str, device: torch.device | str | None = None) -> torch.Tensor:
    """The 16-value float32 map of `quant_type` ("nf4" or "fp4"), as bitsandbytes stores it in quant_map.

    This is the kernels' table, except that bitsandbytes stores FP4's code 0b1000 as +0.0 (its "-0" is the
    integer 0 in [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, ...] / 12); the kernels decode that code as -0.0,
    as bitsandbytes' CUDA kernel does.
    """
    qt = _checks.check_quant_type(quant_type)
    table = code_map(_abi.MAP_FP4 if qt == _abi.FP4 else _abi.MAP_NF4).clone()
    if qt == _abi.FP4:
        table[8] = 0.0
    return table.to(device) if device is not None else table
