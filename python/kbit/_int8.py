"""LLM.int8 on torch tensors (bitsandbytes' names and formats): row-wise int8 quantization with outlier columns,
its inverse, the int8 product, and the dequantization of that product.

This module owns the argument checks and the mapping onto kbit_int8_vectorwise_quant / kbit_int8_mm_dequant
(numerics in csrc/numerics/int8.h), and the choice of how the int8 product is computed. The product goes
through torch, so no BLAS enters kbit's libraries:
  - torch._int_mm on CPU (any shape), and on CUDA when k and n are multiples of 8 and at least 16 (torch's
    requirements there), with fewer than 17 rows padded by zero rows (torch needs more than 16);
  - otherwise (other CUDA shapes, or a device torch._int_mm does not serve) the documented fallback: the product
    in float32 over chunks of 1024 along k, each chunk exact (|partial sum| <= 1024 * 127^2 < 2^24) and the
    chunks summed in int32. Both give the exact int32 product; tests check them against int64 arithmetic.
kbit.functional re-exports the public names; kbit.nn.Linear8bitLt is built on them.
"""
from __future__ import annotations

import torch

from kbit import _checks, _dispatch, _errors

__all__ = ["int8_vectorwise_quant", "int8_vectorwise_dequant", "int8_linear_matmul", "int8_mm_dequant",
           "int_mm_path"]

_EXACT_CHUNK = 1024  # 1024 * 127 * 127 < 2**24: a float32 sum of that many int8 products is exact


def _rows(name: str, A: torch.Tensor) -> torch.Tensor:
    if A.dim() < 1:
        raise _errors.KbitValueError(f"{name} is a 0-d tensor; LLM.int8 works on rows (at least one dimension)")
    return A.detach().contiguous().reshape(-1, A.shape[-1]) if A.numel() else A.detach().reshape(-1, A.shape[-1])


def int8_vectorwise_quant(A: torch.Tensor, threshold: float = 0.0
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise int8 quantization (bitsandbytes' int8_vectorwise_quant): for each row (the last dimension),
    row_stats = max |x| over the elements with |x| < threshold (all elements when threshold is 0) and
    code = round-half-even(x * 127 / row_stats), in float32 from A's own dtype.

    With threshold > 0, every column holding an element with |x| >= threshold is an outlier column: its codes are
    0 (the caller computes those columns in A's precision). Returns (codes int8 of A's shape, row_stats float32 of
    A.shape[:-1] flattened, outlier_cols: int64 column indices, empty when there are none; None when threshold
    is 0). A zero row stores zeros with stats 0; a row with inf/NaN (an inlier) keeps inf/NaN stats and zeros,
    so its products dequantize to NaN instead of finite numbers.
    """
    A = _checks.check_tensor("A", A)
    dtype_id = _checks.check_float_dtype("A", A.dtype)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0.0:
        raise _errors.KbitValueError(f"threshold={threshold!r} must be a number >= 0 (0 disables outlier columns; "
                                     f"LLM.int8 uses 6.0)")
    src = _rows("A", A)
    rows, cols = src.shape
    _dispatch.library_for(A, "A")
    outlier_cols, mask = None, None
    if threshold > 0.0:
        hits = (src.abs() >= threshold).any(dim=0)
        outlier_cols = hits.nonzero().reshape(-1)
        mask = hits.to(torch.uint8).contiguous() if outlier_cols.numel() else None
    out = torch.empty(A.shape, dtype=torch.int8, device=A.device)
    row_stats = torch.empty(rows, dtype=torch.float32, device=A.device)
    _dispatch.run(A, "A", "kbit_int8_vectorwise_quant", dtype_id, _dispatch.ptr(src),
                  _dispatch.ptr(mask) if mask is not None else None, float(threshold), _dispatch.ptr(out),
                  _dispatch.ptr(row_stats), rows, cols)
    return out, row_stats, outlier_cols


def int8_vectorwise_dequant(A: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """The float32 values of row-quantized int8 codes: A * stats[row] / 127 (bitsandbytes' int8_vectorwise_dequant)."""
    A = _checks.check_tensor("A", A)
    if A.dtype != torch.int8:
        raise _errors.KbitValueError(f"A has dtype {A.dtype}; pass the int8 codes of int8_vectorwise_quant")
    stats = _check_stats("stats", stats, A.numel() // max(A.shape[-1], 1) if A.dim() else 0, A.device)
    return A.float() * (stats.reshape(-1, 1) * (1.0 / 127.0)).reshape(*A.shape[:-1], 1)


def int_mm_path(A: torch.Tensor, B: torch.Tensor) -> str:
    """How int8_linear_matmul computes A @ B.T for these operands: "torch._int_mm" or "float32 chunks" (the
    documented fallback, see the module docstring)."""
    k, n = A.shape[-1], B.shape[0]
    if A.device.type == "cpu":
        return "torch._int_mm"
    if A.device.type == "cuda" and k % 8 == 0 and n % 8 == 0 and k >= 16 and n >= 16:
        return "torch._int_mm"
    return "float32 chunks"


def int8_linear_matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The exact int32 product A @ B.T of int8 A (..., k) and int8 B (n, k) (bitsandbytes' int8_linear_matmul)."""
    for name, t in (("A", A), ("B", B)):
        if _checks.check_tensor(name, t).dtype != torch.int8:
            raise _errors.KbitValueError(f"{name} has dtype {t.dtype}; int8_linear_matmul multiplies int8 tensors")
    if B.dim() != 2 or A.dim() < 1 or A.shape[-1] != B.shape[1] or A.device != B.device:
        raise _errors.KbitValueError(f"A {tuple(A.shape)} on {A.device} and B {tuple(B.shape)} on {B.device} do not "
                                     f"make A @ B.T: B must be (n, k) with k = A.shape[-1], on A's device")
    a = A.reshape(-1, A.shape[-1])
    if a.shape[0] == 0 or B.shape[0] == 0 or a.shape[1] == 0:
        return torch.zeros(*A.shape[:-1], B.shape[0], dtype=torch.int32, device=A.device)
    if int_mm_path(A, B) == "torch._int_mm":
        rows = a.shape[0]
        if A.device.type == "cuda" and rows <= 16:  # torch._int_mm needs more than 16 rows on CUDA
            a = torch.cat([a, a.new_zeros(17 - rows, a.shape[1])])
        out = torch._int_mm(a.contiguous(), B.t())[:rows]
    else:
        out = torch.zeros(a.shape[0], B.shape[0], dtype=torch.int32, device=A.device)
        for s in range(0, a.shape[1], _EXACT_CHUNK):
            part = a[:, s:s + _EXACT_CHUNK].float() @ B[:, s:s + _EXACT_CHUNK].float().t()
            out += part.to(torch.int32)
    return out.reshape(*A.shape[:-1], B.shape[0])


def _check_stats(name: str, stats: object, count: int, device: torch.device) -> torch.Tensor:
    stats = _checks.check_tensor(name, stats)
    if stats.dtype != torch.float32 or stats.numel() != count or stats.device != device:
        raise _errors.KbitValueError(f"{name} must be {count} float32 values on {device}; got {stats.numel()} "
                                     f"{stats.dtype} values on {stats.device}",
                                     fix="pass the row_stats (or SCB) int8_vectorwise_quant returned")
    return stats.detach().contiguous().reshape(-1)


def int8_mm_dequant(A: torch.Tensor, row_stats: torch.Tensor, col_stats: torch.Tensor,
                    out: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Dequantize the int32 product of two row-quantized int8 matrices (bitsandbytes' int8_mm_dequant):
    out = A * row_stats[row] * col_stats[col] / 127^2 (+ bias) in float32, rounded to `dtype` (float16 by default,
    as bitsandbytes). The scale is the exact float32 of 1/127^2; see csrc/numerics/int8.h."""
    A = _checks.check_tensor("A", A)
    if A.dtype != torch.int32 or A.dim() < 1:
        raise _errors.KbitValueError(f"A has dtype {A.dtype} and {A.dim()} dimensions; pass the int32 product of "
                                     f"int8_linear_matmul")
    dtype_id = _checks.check_float_dtype("dtype", dtype)
    src = _rows("A", A)
    rows, cols = src.shape
    row_stats = _check_stats("row_stats", row_stats, rows, A.device)
    col_stats = _check_stats("col_stats", col_stats, cols, A.device)
    if bias is not None:
        bias = _checks.check_tensor("bias", bias)
        if bias.numel() != cols or bias.device != A.device:
            raise _errors.KbitValueError(f"bias must hold {cols} values on {A.device}; got {bias.numel()} on {bias.device}")
        bias = bias.detach().to(dtype).contiguous()
    result = torch.empty(A.shape, dtype=dtype, device=A.device)
    _dispatch.run(A, "A", "kbit_int8_mm_dequant", dtype_id, _dispatch.ptr(src), _dispatch.ptr(row_stats),
                  _dispatch.ptr(col_stats), _dispatch.ptr(bias) if bias is not None else None, _dispatch.ptr(result),
                  rows, cols)
    if out is not None:
        return out.copy_(result)
    return result
