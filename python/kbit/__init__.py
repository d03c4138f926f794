"""kbit: k-bit quantization and 8-bit optimizers for PyTorch, in bitsandbytes-compatible formats.

Importing kbit loads no native library; the first native call does (see kbit._native).
"""
from kbit import functional, optim
from kbit._version import __version__
from kbit._errors import (AbiMismatchError, BackendUnavailableError, CudaError, InternalError, KbitError,
                          KbitValueError, LibraryLoadError, NativeArgumentError, NativeError, NoDeviceError,
                          NoDriverError, NoKernelImageError)


__all__ = ["functional", "optim", "__version__", "KbitError", "KbitValueError", "BackendUnavailableError", "LibraryLoadError",
           "AbiMismatchError", "NativeError", "NativeArgumentError", "NoDriverError", "NoDeviceError",
           "NoKernelImageError", "CudaError", "InternalError"]
