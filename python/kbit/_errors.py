"""kbit's exceptions: one base, one subclass per failure, each message saying what was looked at, what was
found and the fix.

This module owns only the classes. Which one is raised is decided by which step failed (a status code from
the native library, a check in Python), never by matching the text of an OS or CUDA message.
"""
from __future__ import annotations


class KbitError(Exception):
    """Base of every error kbit raises on purpose."""


class KbitValueError(KbitError, ValueError):
    """An argument kbit cannot accept (dtype, blocksize, shape, device, state); the message says which and how to fix it."""


class BackendUnavailableError(KbitError):
    """The tensor's device needs a library this installation does not have."""


class LibraryLoadError(KbitError):
    """A kbit library file is missing, or the system loader refused it."""


class AbiMismatchError(LibraryLoadError):
    """The library answers with another ABI version than this Python package speaks."""


class NativeError(KbitError):
    """A native function returned a failure status; `status` and `detail` (kbit_last_error) are kept."""

    def __init__(self, function: str, status: int, detail: str, fix: str = ""):
        self.function, self.status, self.detail = function, status, detail
        text = f"{function} failed with status {status}: {detail}"
        super().__init__(f"{text}\nfix: {fix}" if fix else text)


class NativeArgumentError(NativeError, ValueError):
    """The native library refused an argument (a check the Python side should have made first)."""


class NoDriverError(NativeError):
    """No NVIDIA driver, or a driver older than the library's CUDA toolkit."""


class NoDeviceError(NativeError):
    """An NVIDIA driver but no usable GPU."""


class NoKernelImageError(NativeError):
    """The GPU's arch is not covered by the library's SASS archs nor reachable through its PTX."""


class CudaError(NativeError):
    """Any other CUDA runtime error."""


class InternalError(NativeError):
    """A bug in kbit; the message asks for a report."""
