"""Transparent huge pages for large fresh CPU outputs (Linux).

This module owns one hint: a user-form call that allocates a large CPU output (dequantize_4bit or
dequantize_blockwise without out=) asks Linux to back the output's 2 MiB-aligned interior with transparent huge
pages (madvise MADV_HUGEPAGE) before the kernel writes it. A fresh output's first touch is page faults, one per
4 KiB page, and on machines whose THP setting is "madvise" (Debian's default) those faults, not the kernel, set
the speed of the call (ci/bench.py's "empty + first touch" row); a 2 MiB page is one fault. The hint changes no
value: when the kernel refuses it, or on another OS, the output is written the same way on ordinary pages.
"""
from __future__ import annotations

import ctypes
import sys

import torch

MIN_BYTES = 8 << 20  # below this the faults are a small part of the call
_HUGE = 2 << 20
_MADV_HUGEPAGE = 14
_madvise = None


def _libc_madvise():
    global _madvise
    if _madvise is None:
        fn = ctypes.CDLL(None, use_errno=True).madvise
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
        _madvise = fn
    return _madvise


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.empty(shape, dtype, device), on huge pages where Linux grants them (large CPU tensors only)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    nbytes = out.numel() * out.element_size()
    if out.device.type == "cpu" and sys.platform.startswith("linux") and nbytes >= MIN_BYTES:
        start = (out.data_ptr() + _HUGE - 1) & ~(_HUGE - 1)
        end = (out.data_ptr() + nbytes) & ~(_HUGE - 1)
        if end > start:
            _libc_madvise()(start, end - start, _MADV_HUGEPAGE)  # a hint: a refusal leaves ordinary pages
    return out
