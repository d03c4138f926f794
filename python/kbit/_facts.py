"""Facts about this machine and this installation, gathered lazily and kept apart from any decision.

This module owns the dataclasses that describe what is here (host, torch, NVIDIA driver and GPUs, bundled
variants) and the plain functions that gather each of them. Nothing here decides anything and nothing here
raises on a broken machine: a missing driver or a failing CUresult is recorded as a fact. The driver is
asked through its own API (libcuda via ctypes: cuDriverGetVersion, cuInit, cuDeviceGetCount, cuDeviceGet,
cuDeviceGetAttribute, cuDeviceGetName), so GPUs are seen even when torch is a CPU-only build.
"""
from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kbit import _binfile

_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
_ENV_KEYS = ("BNB_CUDA_VERSION", "CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH")


def cuda_version_text(v: tuple[int, int] | None) -> str:
    return "none" if v is None else f"{v[0]}.{v[1]}"


@dataclass(frozen=True)
class Host:
    """The operating system, CPU architecture, C library and Python."""

    os: str
    arch: str
    libc: str | None
    python: str
    platform: str  # kbit._platform name: linux / windows


@dataclass(frozen=True)
class TorchFacts:
    """torch's version and the CUDA version it was built with (torch.version.cuda; None for CPU and ROCm
    builds); hip: torch.version.hip of a ROCm build, whose "cuda" tensors live on AMD GPUs."""

    version: str | None
    cuda: str | None
    hip: str | None = None

    @property
    def cuda_version(self) -> tuple[int, int] | None:
        return parse_cuda_version(self.cuda) if self.cuda else None


@dataclass(frozen=True)
class Gpu:
    """One GPU as the driver numbers it (the same order torch uses under CUDA_VISIBLE_DEVICES)."""

    index: int
    name: str
    cc: tuple[int, int]

    @property
    def sm(self) -> int:
        return self.cc[0] * 10 + self.cc[1]


@dataclass(frozen=True)
class DriverFacts:
    """What the NVIDIA driver said. status: not_probed | ok | not_found | error.

    `cuda_version` is what cuDriverGetVersion reports (the newest CUDA this driver runs), `errors` every
    failing call as "cuInit: CUDA_ERROR_NO_DEVICE (100)", `library` the driver library name that was opened."""

    status: str
    library: str | None = None
    cuda_version: tuple[int, int] | None = None
    gpus: tuple[Gpu, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        return self.status in ("ok", "error") and self.cuda_version is not None


NOT_PROBED = DriverFacts("not_probed")


@dataclass(frozen=True)
class Variant:
    """One bundled variant, from its build manifest (kbit_<variant>.build.json, written by CMake from what was
    built). `library` is the absolute path its library must have; `present` whether that file exists."""

    name: str
    backend: str
    toolkit: tuple[int, int] | None
    toolkit_text: str | None
    sass: tuple[int, ...]
    ptx: int | None
    min_driver: str | None
    kbit_version: str | None
    library: Path | None
    present: bool
    manifest: dict = field(default_factory=dict, hash=False, compare=False, repr=False)
    glibc: str | None = None  # the newest GLIBC_ version the library file asks for (read from its ELF sections)


@dataclass(frozen=True)
class Facts:
    """Everything the policy and the diagnosis look at."""

    host: Host
    torch: TorchFacts
    driver: DriverFacts
    variants: tuple[Variant, ...]
    env: dict = field(default_factory=dict, hash=False, compare=False)

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)

    @property
    def cuda_variants(self) -> tuple[Variant, ...]:
        return tuple(v for v in self.variants if v.backend == "cuda")


def parse_cuda_version(text: str) -> tuple[int, int] | None:
    """"12.4" / "12.4.131" -> (12, 4); None when it is not such a version."""
    parts = str(text).split(".")
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1])


def decode_driver_version(value: int) -> tuple[int, int]:
    """cuDriverGetVersion's integer (1000 * major + 10 * minor, e.g. 12040) -> (12, 4)."""
    return value // 1000, (value % 1000) // 10


# ----------------------------------------------------------------------------------------- gatherers

def gather_host(platform) -> Host:
    import platform as stdlib_platform

    return Host(os=f"{stdlib_platform.system()} {stdlib_platform.release()}", arch=stdlib_platform.machine(),
                libc=platform.libc_version(), python=sys.version.split()[0], platform=platform.name)


def gather_torch() -> TorchFacts:
    """torch's version and CUDA version, read from the module already imported by kbit (no CUDA init)."""
    import torch

    return TorchFacts(version=str(torch.__version__), cuda=getattr(torch.version, "cuda", None),
                      hip=getattr(torch.version, "hip", None))


def gather_env() -> dict:
    return {k: os.environ[k] for k in _ENV_KEYS if k in os.environ}


def gather_variants(manifests: dict[str, dict], library_path) -> tuple[Variant, ...]:
    """Variants from the bundled manifests; `library_path(variant)` gives where each library file must be."""
    found = []
    for name, info in sorted(manifests.items()):
        path = library_path(name)
        sass = info.get("sass") or []
        found.append(Variant(
            name=name, backend=str(info.get("backend")), toolkit=parse_cuda_version(info["toolkit"]) if info.get("toolkit") else None,
            toolkit_text=info.get("toolkit"), sass=tuple(int(a) for a in sass), ptx=info.get("ptx"),
            min_driver=info.get("min_driver"), kbit_version=info.get("kbit_version"), library=path,
            present=path is not None and path.is_file(), manifest=info,
            glibc=_binfile.glibc_needed(path) if path is not None and path.is_file() else None))
    return tuple(found)


def gather_driver(platform) -> DriverFacts:
    """Ask the NVIDIA driver for its CUDA version and GPUs. Never raises: every failure is a recorded fact."""
    try:
        lib = platform.open_driver()
    except OSError as exc:
        return DriverFacts("not_found", library=platform.driver_library_name(), errors=(f"open: {exc}",))
    return probe_driver(lib, platform.driver_library_name())


def probe_driver(lib, library_name: str) -> DriverFacts:
    """The driver facts from an opened libcuda (or a fake with the same functions)."""
    errors: list[str] = []
    version = ctypes.c_int(0)
    status = _call(lib, "cuDriverGetVersion", errors, ctypes.byref(version))
    cuda = decode_driver_version(version.value) if status == 0 and version.value > 0 else None
    gpus: tuple[Gpu, ...] = ()
    if _call(lib, "cuInit", errors, 0) == 0:
        gpus = _gpus(lib, errors)
    state = "ok" if not errors else "error"
    return DriverFacts(state, library=library_name, cuda_version=cuda, gpus=gpus, errors=tuple(errors))


def _gpus(lib, errors: list[str]) -> tuple[Gpu, ...]:
    count = ctypes.c_int(0)
    if _call(lib, "cuDeviceGetCount", errors, ctypes.byref(count)) != 0:
        return ()
    gpus = []
    for index in range(count.value):
        device, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        name = ctypes.create_string_buffer(256)
        if (_call(lib, "cuDeviceGet", errors, ctypes.byref(device), index)
                or _call(lib, "cuDeviceGetAttribute", errors, ctypes.byref(major), _CC_MAJOR, device)
                or _call(lib, "cuDeviceGetAttribute", errors, ctypes.byref(minor), _CC_MINOR, device)):
            continue
        if _call(lib, "cuDeviceGetName", errors, name, 256, device):
            name.value = b"(name unavailable)"
        gpus.append(Gpu(index, name.value.decode("utf-8", "replace"), (major.value, minor.value)))
    return tuple(gpus)


def _call(lib, function: str, errors: list[str], *args) -> int:
    """Call one driver function; record a failure (or a missing symbol) as "function: NAME (code)"."""
    try:
        status = int(getattr(lib, function)(*args))
    except AttributeError:
        errors.append(f"{function}: not exported by the driver library")
        return -1
    if status != 0:
        errors.append(f"{function}: {_error_name(lib, status)} ({status})")
    return status


def _error_name(lib, status: int) -> str:
    text = ctypes.c_char_p()
    try:
        if int(lib.cuGetErrorName(status, ctypes.byref(text))) == 0 and text.value:
            return text.value.decode("ascii", "replace")
    except (AttributeError, OSError):
        pass
    return "CUDA_ERROR_UNKNOWN_CODE"
