"""The test suite's shared fakes, imported by test modules (a test module never imports another one):

- FakeCuda: a stand-in for libcuda's driver API, with per-test results (what kbit._facts probes);
- FakeDriverPlatform: the Linux platform with that fake as its driver and a chosen glibc version;
- cuda_manifest: a build manifest (kbit_<variant>.build.json) of a CUDA variant, as CMake writes it;
- compile_library: a shared library compiled from C source with the machine's C compiler (fake libcuda,
  a fake kbit library, a library with an unresolved symbol), skipping the test where there is no compiler;
- package_copy: a copy of the installed kbit package to modify and import in a subprocess.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import kbit
from kbit import _abi, _platform

PACKAGE = Path(kbit.__file__).parent

# CUresult names the fake driver reports (cuGetErrorName)
NAMES = {100: "CUDA_ERROR_NO_DEVICE", 34: "CUDA_ERROR_STUB_LIBRARY", 35: "CUDA_ERROR_INSUFFICIENT_DRIVER",
         3: "CUDA_ERROR_NOT_INITIALIZED", 999: "CUDA_ERROR_UNKNOWN"}


class FakeCuda:
    """Stands in for libcuda: the driver API functions the probe calls, with results set per test."""

    def __init__(self, version=12040, devices=(("NVIDIA GeForce RTX 4090", 8, 9),), fail=None, missing=()):
        self.version, self.devices, self.fail, self.missing = version, devices, fail or {}, missing

    def __getattribute__(self, name):
        if name.startswith("cu") and name in object.__getattribute__(self, "missing"):
            raise AttributeError(name)  # what ctypes raises for a symbol the library lacks
        return object.__getattribute__(self, name)

    def _status(self, fn):
        return self.fail.get(fn, 0)

    def cuDriverGetVersion(self, ref):
        ref._obj.value = self.version
        return self._status("cuDriverGetVersion")

    def cuInit(self, flags):
        assert flags == 0
        return self._status("cuInit")

    def cuDeviceGetCount(self, ref):
        ref._obj.value = len(self.devices)
        return self._status("cuDeviceGetCount")

    def cuDeviceGet(self, ref, index):
        ref._obj.value = index
        return self._status("cuDeviceGet")

    def cuDeviceGetAttribute(self, ref, attribute, device):
        ref._obj.value = self.devices[device.value][{75: 1, 76: 2}[attribute]]
        return self._status("cuDeviceGetAttribute")

    def cuDeviceGetName(self, buf, size, device):
        buf.value = self.devices[device.value][0].encode()
        return self._status("cuDeviceGetName")

    def cuGetErrorName(self, status, ref):
        ref._obj.value = NAMES.get(status, "CUDA_ERROR_OTHER").encode()
        return 0


class FakeDriverPlatform(_platform.LinuxPlatform):
    """Linux, with `driver` (a FakeCuda, or None: no libcuda) as the driver library and glibc `libc`."""

    def __init__(self, driver, libc="2.36"):
        super().__init__()
        self.driver, self.libc = driver, libc

    def open_driver(self):
        if self.driver is None:
            raise OSError("libcuda.so.1: cannot open shared object file: No such file or directory")
        return self.driver

    def libc_version(self):
        return self.libc


def cuda_manifest(variant: str, toolkit: str = "12.4.131", sass=(80,), min_driver: str = "550.54.14",
                  **changes) -> dict:
    """The build manifest of a CUDA variant (PTX: the newest SASS arch), with `changes` applied."""
    info = {"abi": _abi.ABI_VERSION, "kbit_version": kbit.__version__, "variant": variant, "backend": "cuda",
            "toolkit": toolkit, "sass": list(sass), "ptx": max(sass), "compression": "all", "min_driver": min_driver,
            "compiler": "nvcc", "commit": "sim"}
    info.update(changes)
    return info


def compile_library(source: str, folder: Path, name: str) -> Path:
    """folder/name, a shared library compiled from C `source`; skips the test when there is no C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a test library")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.c").write_text(source)
    lib = folder / name
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(folder / f"{name}.c")], check=True)
    return lib


def package_copy(root: Path) -> Path:
    """A copy of the installed package, without any CUDA variant it may bundle (the tests add the ones they
    need), in root/site/kbit; returns root/site (to put first on sys.path)."""
    site = root / "site"
    shutil.copytree(PACKAGE, site / "kbit", ignore=shutil.ignore_patterns("__pycache__", "libkbit_cuda*", "kbit_cuda*"))
    return site
