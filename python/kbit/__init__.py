"""kbit: k-bit quantization and 8-bit optimizers for PyTorch, in bitsandbytes-compatible formats.

Importing kbit loads no native library and asks no driver anything; the first native call does (see
kbit._runtime). `python -m kbit` or `kbit.show_config()` shows what kbit sees, chose and why.
"""
from kbit import _ops, functional, nn, optim  # noqa: F401  (_ops registers the custom ops; loads no native library)
from kbit._errors import (
    AbiMismatchError,
    ArchNotCoveredError,
    BackendUnavailableError,
    BadOverrideError,
    CudaError,
    CudaVersionMismatchError,
    DriverNotFoundError,
    DriverTooOldError,
    GlibcTooOldError,
    InternalError,
    KbitError,
    KbitValueError,
    KbitWarning,
    LibraryLoadError,
    NativeArgumentError,
    NativeError,
    NoDeviceError,
    NoDriverError,
    NoKernelImageError,
    SelfTestError,
    StaleImportError,
    VariantNotBundledError,
)
from kbit._version import __version__


def show_config(*, json: bool = False, self_test: bool = True) -> int:
    """Print what `python -m kbit` prints (JSON with json=True); return its exit code (0: usable here)."""
    from kbit import _diagnose, _render, _report

    report = _report.build(self_test=self_test)
    _render.emit(_render.as_json(report) if json else _render.text(report))
    return _diagnose.exit_code(report.findings)


__all__ = ["functional", "nn", "optim", "show_config", "__version__", "KbitError", "KbitValueError", "KbitWarning",
           "BadOverrideError", "BackendUnavailableError", "VariantNotBundledError", "CudaVersionMismatchError",
           "ArchNotCoveredError", "DriverTooOldError", "DriverNotFoundError", "LibraryLoadError", "GlibcTooOldError",
           "AbiMismatchError", "StaleImportError", "SelfTestError", "NativeError", "NativeArgumentError",
           "NoDriverError", "NoDeviceError", "NoKernelImageError", "CudaError", "InternalError"]
