"""kbit's exceptions: one base, one subclass per failure, each message saying what was looked at, what was
found and the fix.

This module owns only the classes. Which one is raised is decided by which step failed (a status code from
the native library, a check in Python), never by matching the text of an OS or CUDA message. Each class has
an `exit_code`, distinct per failure class, which `python -m kbit` returns when that failure is the diagnosis.
"""
from __future__ import annotations


class KbitError(Exception):
    """Base of every error kbit raises on purpose: `evidence` (what was looked at and found) and `fix` (what to
    do; "" when the message is its own fix). str() is "<evidence> fix: <fix>"."""

    exit_code = 1

    def __init__(self, evidence: str = "", fix: str = ""):
        self.evidence, self.fix = evidence, fix
        super().__init__(f"{evidence} fix: {fix}" if fix else evidence)


class KbitWarning(UserWarning):
    """A choice kbit made that contradicts a fact (an override against torch's CUDA, a GPU not covered...)."""


class KbitValueError(KbitError, ValueError):
    """An argument kbit cannot accept (dtype, blocksize, shape, device, state); the message says which and how to fix it."""


class BadOverrideError(KbitValueError):
    """BNB_CUDA_VERSION is not of a form kbit accepts (124, 12.4 or cpu)."""

    exit_code = 3


class BackendUnavailableError(KbitError):
    """The tensor's device needs a library this installation does not have or cannot use here."""

    exit_code = 13


class VariantNotBundledError(BackendUnavailableError):
    """BNB_CUDA_VERSION names a well-formed variant that this installation does not bundle."""

    exit_code = 4


class CudaVersionMismatchError(BackendUnavailableError):
    """No bundled CUDA variant matches the CUDA major version torch was built with."""

    exit_code = 5


class ArchNotCoveredError(BackendUnavailableError):
    """A GPU's compute capability is neither in a variant's SASS archs nor reachable through its PTX."""

    exit_code = 6


class DriverTooOldError(BackendUnavailableError):
    """The NVIDIA driver reports a CUDA version older than every usable variant's toolkit."""

    exit_code = 7


class DriverNotFoundError(BackendUnavailableError):
    """torch has CUDA, but no NVIDIA driver (libcuda) could be opened or initialised."""

    exit_code = 8


class LibraryLoadError(KbitError):
    """A kbit library file is missing, or the system loader refused it."""

    exit_code = 10


class GlibcTooOldError(LibraryLoadError):
    """A kbit library needs a newer glibc than this system has."""

    exit_code = 9


class AbiMismatchError(LibraryLoadError):
    """The library answers with another ABI version than this Python package speaks."""

    exit_code = 11


class StaleImportError(KbitError):
    """The kbit modules in memory are not the installed version (upgraded without restarting the process)."""

    exit_code = 14


class SelfTestError(KbitError):
    """A library loaded but its quantize/dequantize round trip gave wrong results."""

    exit_code = 12


class NativeError(KbitError):
    """A native function returned a failure status; `status` and `detail` (kbit_last_error) are kept."""

    def __init__(self, function: str, status: int, detail: str, fix: str = ""):
        self.function, self.status, self.detail = function, status, detail
        text = f"{function} failed with status {status}: {detail}"
        Exception.__init__(self, f"{text}\nfix: {fix}" if fix else text)
        self.evidence, self.fix = text, fix


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
