"""Which native library serves a tensor, and the launch arguments that go with it.

This module owns the mapping tensor -> (library, stream, thread count) used by kbit's operations, kbit.optim
and kbit.nn, and making the tensor's GPU the current device for the call (the C ABI works on the current
device; torch's current device may be another, e.g. cuda:0 while a model lives on cuda:1). CPU tensors
always go to libkbit_cpu; CUDA tensors go to the CUDA variant kbit._runtime selects (which also checks that
the tensor's GPU is covered). It does not gather facts or choose variants itself. Every kernel call goes
through run(); it is one of the explicitly shared internal modules (see __all__).
"""
from __future__ import annotations

import torch

from kbit import _errors, _native

__all__ = ["library_for", "stream_for", "threads", "ptr", "call", "run"]


def library_for(t: torch.Tensor, name: str) -> _native.NativeLibrary:
    """The library that serves tensor `t` (called `name` in messages)."""
    if t.device.type == "cpu":
        return _cpu_library()
    if t.device.type == "cuda":
        from kbit import _runtime  # imported at the first native call, not with kbit

        index = t.device.index if t.device.index is not None else torch.cuda.current_device()
        return _runtime.cuda_library(index, name)
    raise _errors.KbitValueError(f"{name} is on device {t.device}; kbit supports cpu and cuda tensors.",
                                 fix=f"move it with {name}.cpu()")


def stream_for(t: torch.Tensor) -> int | None:
    """The `stream` argument of a native call on `t`: torch's current stream of t's device (NULL on CPU)."""
    if t.device.type == "cuda":
        return torch.cuda.current_stream(t.device).cuda_stream or None
    return None


def threads() -> int:
    """The `num_threads` argument: torch's intra-op thread count, so kbit and torch share one budget."""
    return max(1, torch.get_num_threads())


def ptr(t: torch.Tensor) -> int | None:
    """The data pointer of a contiguous tensor for ctypes (None for an empty tensor)."""
    return t.data_ptr() or None


def call(t: torch.Tensor, lib: _native.NativeLibrary, function: str, *args) -> None:
    """lib.call(function, *args) with t's GPU as the current device (nothing to switch for a CPU tensor)."""
    if t.device.type == "cuda":
        with torch.cuda.device(t.device):
            return lib.call(function, *args)
    return lib.call(function, *args)


def run(t: torch.Tensor, name: str, function: str, *args) -> None:
    """Call a kernel of the C ABI for tensor `t` (called `name` in messages): the library that serves t, t's GPU
    as the current device, and the launch arguments (stream, num_threads) appended to `args`.

    A CPU tensor takes the short path (what library_for, stream_for and call do for it, inline): a batch-1
    gemv_4bit layer is a fraction of a millisecond, and each Python call it makes runs after the layer's weight has
    streamed through the caches."""
    if t.is_cpu:
        _cpu_library().call(function, *args, None, threads())
        return
    lib = library_for(t, name)
    call(t, lib, function, *args, stream_for(t), threads())


_override_checked = False


def _cpu_library() -> _native.NativeLibrary:
    """libkbit_cpu; the first call also checks BNB_CUDA_VERSION (_runtime.check_override_once: a malformed value
    is named even in CPU-only work), later ones skip the import."""
    global _override_checked
    if not _override_checked:
        from kbit import _runtime  # imported at the first native call, not with kbit

        _runtime.check_override_once()
        _override_checked = True
    return _native.cpu()
