"""Builders of 8-bit code maps with bitsandbytes' names, parameters and exact float32 values, and the check
that a map can be searched exactly (check_code).

This module owns the definitions of the map families (dynamic, linear, fp8) as published by bitsandbytes,
computed with torch's float32 arithmetic so that every value matches bit for bit (tests/ops/test_code_maps.py
checks SHA-256 sums and bitsandbytes' own functions). The default dynamic maps are the generated tables the
kernels use (kbit._maps); the builders return those for the default parameters and compute every other
member of the family here. It calls no kernel.
"""
from __future__ import annotations

import itertools

import torch

from kbit import _abi, _errors, _maps

__all__ = ["create_dynamic_map", "create_linear_map", "create_fp8_map", "check_code"]

_SIZE = _abi.MAP_SIZE_8BIT


def _pad_sorted(values: list[float]) -> torch.Tensor:
    """A list of at most 256 values padded with zeros to 256 and sorted, as float32."""
    if len(values) > _SIZE:
        raise _errors.KbitValueError(f"the map parameters give {len(values)} values; at most {_SIZE} fit in 8 bits")
    out = torch.tensor(values + [0.0] * (_SIZE - len(values)), dtype=torch.float32)
    return out.sort().values


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The dynamic (exponent + linear fraction) map (bitsandbytes' create_dynamic_map), a new float32 tensor.

    For each exponent i < max_exponent_bits, the midpoints of a float32 torch.linspace(0.1, 1) with
    2**(i + total_bits - 1 - max_exponent_bits) + 1 points (twice as many minus one when unsigned), times
    10**(i - max_exponent_bits + 1), negated as well when signed; the fraction bits left over by a small
    max_exponent_bits add one more decade at the last exponent; then 0 and 1, zero padding, sorted.
    """
    if (signed, max_exponent_bits, total_bits) == (True, 7, 8) or (signed, max_exponent_bits, total_bits) == (
            False, 7, 8):
        return _maps.dynamic_map(bool(signed)).clone()  # the kernels' tables (identical values, tested)
    _check_bits("total_bits", total_bits, 2, 8)
    _check_bits("max_exponent_bits", max_exponent_bits, 1, 7)
    non_sign = total_bits - 1
    data: list[float] = []

    def decade(i: int, points: int) -> None:
        bounds = torch.linspace(0.1, 1, points, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data.extend(((10 ** (i - max_exponent_bits + 1)) * means).tolist())
        if signed:
            data.extend((-(10 ** (i - max_exponent_bits + 1)) * means).tolist())

    for i in range(max_exponent_bits):
        decade(i, int(2 ** (i + non_sign - max_exponent_bits) + 1 if signed
                      else 2 ** (i + non_sign - max_exponent_bits + 1) + 1))
    extra = 2 ** (non_sign - max_exponent_bits) - 1
    if extra > 0:
        decade(max_exponent_bits - 1, extra + 1)
    data += [0.0, 1.0]
    if len(data) != 2 ** total_bits:
        raise _errors.KbitValueError(
            f"create_dynamic_map(signed={signed}, max_exponent_bits={max_exponent_bits}, total_bits={total_bits}) "
            f"gives {len(data)} values, not 2**total_bits = {2 ** total_bits} (bitsandbytes refuses it too)",
            fix="use max_exponent_bits = total_bits - 1 for the signed map (7 for 8 bits)")
    return _pad_sorted(data)


def create_linear_map(signed: bool = True, total_bits: int = 8, add_zero: bool = True) -> torch.Tensor:
    """The linear map (bitsandbytes' create_linear_map): torch.linspace(-1 or 0, 1) with 2**total_bits points
    (one fewer when signed and add_zero, or total_bits < 8), and the 256 - that many missing values inserted as
    zeros in the middle. A float32 tensor of 256 non-decreasing values."""
    _check_bits("total_bits", total_bits, 1, 8)
    count = 2 ** total_bits
    if add_zero or total_bits < 8:
        count = 2 ** total_bits - 1 if signed else 2 ** total_bits
    values = torch.linspace(-1.0 if signed else 0.0, 1.0, count, dtype=torch.float32)
    half = values.numel() // 2
    return torch.cat([values[:half], torch.zeros(_SIZE - count, dtype=torch.float32), values[half:]])


def create_fp8_map(signed: bool = True, exponent_bits: int = 5, precision_bits: int = 2, total_bits: int = 8
                   ) -> torch.Tensor:
    """A small-float map (bitsandbytes' create_fp8_map): every value of a float with `exponent_bits` exponent
    and `precision_bits` mantissa bits (bias 2**(exponent_bits - 1), exponent 0 subnormal), negated too when
    signed, zero-padded to 256, sorted and divided by its largest value. exponent_bits + precision_bits must
    equal total_bits - 1 when signed, total_bits otherwise."""
    _check_bits("total_bits", total_bits, 2, 8)
    if exponent_bits + precision_bits != total_bits - int(bool(signed)) or exponent_bits < 1 or precision_bits < 0:
        raise _errors.KbitValueError(
            f"exponent_bits={exponent_bits} + precision_bits={precision_bits} must equal total_bits={total_bits}"
            f"{' - 1 (the sign bit)' if signed else ''}", fix="e.g. create_fp8_map(True, 4, 3, 8) or (True, 5, 2, 8)")
    bias = 2 ** (exponent_bits - 1)
    values: list[float] = []
    for exponent in range(2 ** exponent_bits):
        for bits in itertools.product((0, 1), repeat=precision_bits):
            mantissa = (0.0 if exponent == 0 else 1.0) + sum(b * 2.0 ** -(k + 1) for k, b in enumerate(bits))
            value = mantissa * 2.0 ** (-bias if exponent == 0 else -(exponent - bias - 1))
            values += [value, -value] if signed else [value]
    code = _pad_sorted(values)
    return code / code.max()


def _check_bits(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _errors.KbitValueError(f"{name}={value!r} is not an integer in {low}..{high}")


def check_code(code: object, name: str = "code") -> torch.Tensor:
    """`code` as a contiguous float32 tensor when it is a map kbit can search exactly, else a KbitValueError
    naming the first bad entry: 256 finite float32 values in ascending order (ties allowed), neighbour sums
    finite, nonzero magnitudes at least 2**-100 (csrc/numerics/blockwise8.h check_code_map, the same rules)."""
    if not isinstance(code, torch.Tensor):
        raise _errors.KbitValueError(f"{name} must be a torch.Tensor of {_SIZE} float32 values, got "
                                     f"{type(code).__name__}", fix="build one with kbit.functional.create_dynamic_map()")
    if code.dtype != torch.float32 or code.numel() != _SIZE or code.dim() != 1:
        raise _errors.KbitValueError(f"{name} is a {code.dtype} tensor of shape {tuple(code.shape)}; an 8-bit map "
                                     f"is {_SIZE} float32 values (one dimension)",
                                     fix=f"pass e.g. {name}.float().reshape(-1) if it has {_SIZE} values")
    host = code.detach().cpu()
    bad = ~torch.isfinite(host)
    if bad.any():
        raise _errors.KbitValueError(f"{name}[{int(bad.nonzero()[0])}] = {host[bad][0].item()} is not finite; "
                                     f"a code map holds finite values")
    down = (host[1:] < host[:-1]).nonzero()
    if down.numel():
        i = int(down[0]) + 1
        raise _errors.KbitValueError(f"{name} is not sorted: {name}[{i}] = {host[i].item()} < {name}[{i - 1}] = "
                                     f"{host[i - 1].item()}", fix=f"pass {name}.sort().values (codes index the sorted map)")
    if not torch.isfinite(host[1:] + host[:-1]).all():
        raise _errors.KbitValueError(f"neighbouring values of {name} sum beyond float32's range",
                                     fix=f"scale the map into [-1, 1], e.g. {name} / {name}.abs().max()")
    tiny = (host != 0) & (host.abs() < 2.0 ** -100)
    if tiny.any():
        raise _errors.KbitValueError(f"{name}[{int(tiny.nonzero()[0])}] is nonzero but below 2**-100 in magnitude; "
                                     f"midpoints that small cannot be split exactly", fix="round it to 0")
    return code.detach().contiguous()
