"""What differs between operating systems when kbit finds and loads native code, behind one Protocol.

This module owns: shared-library file naming (libkbit_cpu.so / kbit_cpu.dll), the name of the NVIDIA driver
library (libcuda.so.1 / nvcuda.dll), opening it, the preparation a kbit library needs before it is loaded
(DLL search folders on Windows), the C library version, and the runtime libraries a kbit build depends on.
The platform is chosen once (`current()`); tests substitute another with `use()`, which is how the Windows
path is exercised on Linux. Nothing outside this module asks which operating system it runs on.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from kbit import _binfile


class Platform(Protocol):
    """Everything OS-specific that finding and loading kbit's libraries needs."""

    name: str

    def shared_library_name(self, stem: str) -> str:
        """The file name the build gives a shared library with this stem."""

    def driver_library_name(self) -> str:
        """The NVIDIA driver library, as the system loader finds it (it lives in a system folder)."""

    def open_driver(self) -> object:
        """The driver library opened with ctypes; raises OSError when there is none."""

    def prepare_load(self, package_dir: Path) -> tuple[str, ...]:
        """Make a kbit library in `package_dir` loadable (its dependencies findable); returns what was done."""

    def file_problem(self, path: Path) -> str | None:
        """Why `path` cannot be a complete library of this OS (checked before the loader maps it), or None."""

    def load(self, path: Path) -> ctypes.CDLL:
        """Open a library by absolute path; raises OSError with the loader's own message."""

    def load_fix(self) -> str:
        """What to add to the fix of a refused load on this OS ("" or "; ...")."""

    def libc_version(self) -> str | None:
        """The C library version ("2.36" for glibc), None when not applicable or unknown."""

    def runtime_libraries(self) -> tuple[str, ...]:
        """System libraries kbit's builds need besides the driver (checked by the diagnosis)."""

    def find_system_library(self, name: str) -> bool:
        """Whether the system loader can open `name`."""


def _can_open(opener: Callable[[str], object], name: str) -> bool:
    try:
        opener(name)
        return True
    except OSError:
        return False


class LinuxPlatform:
    """glibc Linux: ELF .so files, libcuda.so.1 from the driver package, RPATH-free loading by absolute path."""

    name = "linux"

    def __init__(self, opener: Callable[[str], object] = ctypes.CDLL):
        self._open = opener

    def shared_library_name(self, stem: str) -> str:
        return f"lib{stem}.so"

    def driver_library_name(self) -> str:
        return "libcuda.so.1"  # the versioned name: the unversioned libcuda.so exists only with a toolkit

    def open_driver(self) -> object:
        return self._open(self.driver_library_name())

    def prepare_load(self, package_dir: Path) -> tuple[str, ...]:
        return ()  # kbit's libraries link the CUDA runtime statically and need only system libraries

    def file_problem(self, path: Path) -> str | None:
        return _binfile.problem_with(path)

    def load(self, path: Path) -> ctypes.CDLL:
        return self._open(str(path))

    def load_fix(self) -> str:
        return ""

    def libc_version(self) -> str | None:
        try:
            found = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; absent on musl
        except (ValueError, OSError, AttributeError):
            found = None
        if found and found.startswith("glibc "):
            return found.split()[1]
        return None

    def runtime_libraries(self) -> tuple[str, ...]:
        return ("libstdc++.so.6",)  # the C++ runtime (the CPU library threads with pthreads, no OpenMP)

    def find_system_library(self, name: str) -> bool:
        return _can_open(self._open, name)


class WindowsPlatform:
    """Windows: .dll files, nvcuda.dll from System32, and DLL search folders added with os.add_dll_directory
    (Python 3.8+ no longer searches PATH for a DLL's dependencies)."""

    name = "windows"

    def __init__(self, opener: Callable[[str], object] | None = None,
                 add_dll_directory: Callable[[str], object] | None = None,
                 torch_lib_dir: Callable[[], Path | None] | None = None):
        self._open = opener or getattr(ctypes, "WinDLL", ctypes.CDLL)
        self._add = add_dll_directory or getattr(os, "add_dll_directory", None)
        self._torch_lib_dir = torch_lib_dir or _torch_lib_dir
        self._added: dict[str, object] = {}  # the handles must stay alive, or the folders are removed again
        self._lock = threading.Lock()

    def shared_library_name(self, stem: str) -> str:
        return f"{stem}.dll"

    def driver_library_name(self) -> str:
        return "nvcuda.dll"

    def open_driver(self) -> object:
        return self._open(self.driver_library_name())

    def prepare_load(self, package_dir: Path) -> tuple[str, ...]:
        folders = [package_dir, self._torch_lib_dir()]  # torch's folder holds the MSVC and OpenMP runtimes it ships
        with self._lock:
            for folder in folders:
                if folder is not None and Path(folder).is_dir() and str(folder) not in self._added:
                    self._added[str(folder)] = self._add(str(folder))
            return tuple(self._added)

    def file_problem(self, path: Path) -> str | None:
        return _binfile.dll_problem(path)

    def load(self, path: Path) -> ctypes.CDLL:
        return self._open(str(path))

    def load_fix(self) -> str:
        return ("; when a DLL it depends on is missing, install the Microsoft Visual C++ 2015-2022 Redistributable "
                "(x64) from https://aka.ms/vs/17/release/vc_redist.x64.exe")

    def libc_version(self) -> str | None:
        return None

    def runtime_libraries(self) -> tuple[str, ...]:
        return ("vcruntime140.dll", "vcruntime140_1.dll", "msvcp140.dll", "vcomp140.dll")  # MSVC 2022 runtime

    def find_system_library(self, name: str) -> bool:
        return _can_open(self._open, name)


def _torch_lib_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


_lock = threading.Lock()
_current: Platform | None = None


def current() -> Platform:
    """The platform of this process, chosen once."""
    global _current
    with _lock:
        if _current is None:
            _current = WindowsPlatform() if sys.platform == "win32" else LinuxPlatform()
        return _current


@contextlib.contextmanager
def use(platform: Platform) -> Iterator[Platform]:
    """Substitute the platform (tests): everything that asks `current()` inside the block gets `platform`."""
    global _current
    with _lock:
        previous, _current = _current, platform
    try:
        yield platform
    finally:
        with _lock:
            _current = previous
