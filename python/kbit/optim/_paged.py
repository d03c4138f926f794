"""Paged optimizer states: zero-filled tensors in CUDA managed memory (kbit_managed_alloc).

This module owns the allocation and its lifetime: the tensor keeps the allocation object alive through
torch's __cuda_array_interface__ import, and the object frees the memory when the last tensor view dies.
Pages migrate between host and GPU on demand, so states larger than free GPU memory still work. On CPU there
is nothing to page: kbit.optim._base warns once and allocates ordinary tensors.
"""
from __future__ import annotations

import ctypes

import torch

from kbit import _dispatch

# bitsandbytes pages only states of parameters with at least this many elements (smaller ones are not worth it)
MIN_PAGED_NUMEL = 100_000


class _ManagedAllocation:
    """One cudaMallocManaged block, exposed through __cuda_array_interface__ (version 3)."""

    def __init__(self, owner: torch.Tensor, nbytes: int):
        self._lib = _dispatch.library_for(owner, "the parameter")
        out = ctypes.c_void_p()
        _dispatch.call(owner, self._lib, "kbit_managed_alloc", ctypes.byref(out), nbytes)  # on owner's GPU
        self.ptr = out.value or 0
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (self.ptr, False),
                                         "version": 3, "strides": None}

    def __del__(self):
        if getattr(self, "ptr", 0):
            self._lib.handle.kbit_managed_free(self.ptr)  # a failure here has no caller to report to
            self.ptr = 0


def managed_zeros(owner: torch.Tensor, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A zero tensor of `shape` and `dtype` in managed memory, for the CUDA parameter `owner`."""
    numel = 1
    for d in shape:
        numel *= d
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if nbytes == 0:
        return torch.zeros(shape, dtype=dtype, device=owner.device)
    raw = torch.as_tensor(_ManagedAllocation(owner, nbytes), device=owner.device)
    out = raw.view(dtype).view(shape)
    out.zero_()
    return out
