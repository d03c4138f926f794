"""Loading kbit's native libraries and calling them.

This module owns: where a library file is (inside the installed package, by importlib.resources, never by
LD_LIBRARY_PATH or the working directory), loading it once (lazily, under a lock), the ABI handshake,
declaring the prototypes of kbit._abi, and turning a failure status into a typed error. It does not decide
which CUDA variant suits the machine.
"""
from __future__ import annotations

import ctypes
import importlib.resources
import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from kbit import _abi, _binfile, _errors

ABI_VERSION = _abi.ABI_VERSION
_PACKAGE = "kbit"
_PROTOTYPES = _abi.PROTOTYPES
_STATUS_ERRORS = _abi.STATUS_ERRORS


def library_filename(variant: str) -> str:
    """The file name of a variant's library: the one place the runtime computes it (the build: ci/matrix.py
    library_filename, CMake: kbit_output_name; tests/test_abi.py checks they agree)."""
    stem = f"kbit_{variant}"
    return f"{stem}.dll" if sys.platform == "win32" else f"lib{stem}.so"


def package_dir() -> str:
    """Where the installed kbit package is, for messages (an editable install may span two folders)."""
    return str(importlib.resources.files(_PACKAGE))


def _package_entries() -> list[str]:
    return sorted(entry.name for entry in importlib.resources.files(_PACKAGE).iterdir())


def library_path(variant: str) -> Path:
    """Absolute path of a variant's library inside the installed package (wheel or editable install)."""
    resource = importlib.resources.files(_PACKAGE).joinpath(library_filename(variant))
    if not resource.is_file():
        present = [name for name in _package_entries() if "kbit_" in name] or ["no kbit libraries"]
        raise _errors.LibraryLoadError(
            f"kbit's library {library_filename(variant)} is not in the installed package ({package_dir()}), "
            f"which holds: {', '.join(present)}. fix: reinstall kbit (pip install --force-reinstall kbit), "
            f"or from a source checkout `pip install .`")
    if not isinstance(resource, Path):
        raise _errors.LibraryLoadError(
            f"kbit is installed in a form that is not plain files on disk ({type(resource).__name__}); native "
            f"libraries cannot be loaded from it. fix: install kbit with pip into a normal environment")
    return resource.resolve()


def bundled_manifests() -> dict[str, dict]:
    """Build manifests (`kbit_<variant>.build.json`, written by CMake from what was built) by variant."""
    found = {}
    for entry in importlib.resources.files(_PACKAGE).iterdir():
        if entry.name.startswith("kbit_") and entry.name.endswith(".build.json"):
            info = json.loads(entry.read_text(encoding="utf-8"))
            found[info["variant"]] = info
    return found


@dataclass(frozen=True)
class NativeLibrary:
    """One loaded kbit library: its path, build info and ctypes handle."""

    path: Path
    handle: ctypes.CDLL
    build_info: dict

    def call(self, function: str, *args) -> None:
        """Call a status-returning function; raise the typed error of its status."""
        status = getattr(self.handle, function)(*args)
        if status != 0:
            detail = self.handle.kbit_last_error().decode("utf-8", "replace")
            cls, fix = _STATUS_ERRORS.get(status, (_errors.InternalError, "unknown status: please report it"))
            raise cls(function, status, detail, fix)


def _declare(handle: ctypes.CDLL, path: Path) -> None:
    for name, (restype, argtypes) in _PROTOTYPES.items():
        try:
            fn = getattr(handle, name)
        except AttributeError:
            raise _errors.LibraryLoadError(
                f"{path} does not export {name}: it is not a kbit library of this version. "
                f"fix: reinstall kbit (pip install --force-reinstall kbit)") from None
        fn.restype, fn.argtypes = restype, argtypes


def load_library(path: Path) -> NativeLibrary:
    """Load one library by absolute path, check its ABI version, and declare its prototypes."""
    problem = _binfile.problem_with(path)
    if problem:
        raise _errors.LibraryLoadError(
            f"{path} cannot be loaded: {problem}. fix: reinstall kbit (pip install --force-reinstall kbit); "
            f"an interrupted download or install leaves such files")
    try:
        handle = ctypes.CDLL(str(path))
    except OSError as exc:
        raise _errors.LibraryLoadError(
            f"the system loader refused {path}: {exc}. fix: reinstall kbit (pip install --force-reinstall kbit) "
            f"from a wheel for this platform") from exc
    _declare(handle, path)
    found = handle.kbit_abi_version()
    if found != ABI_VERSION:
        raise _errors.AbiMismatchError(
            f"{path} speaks kbit ABI {found}, but the kbit Python package loaded in this process speaks ABI "
            f"{ABI_VERSION}. fix: if kbit was upgraded inside a running notebook or process, restart it; "
            f"otherwise reinstall kbit so that its Python files and libraries come from one version")
    return NativeLibrary(path, handle, json.loads(handle.kbit_build_info().decode("utf-8")))


_lock = threading.Lock()
_loaded: dict[str, NativeLibrary] = {}


def library(variant: str) -> NativeLibrary:
    """The loaded library of `variant`, loading it on first use (once, even when threads race)."""
    lib = _loaded.get(variant)
    if lib is None:
        with _lock:
            lib = _loaded.get(variant)
            if lib is None:
                lib = load_library(library_path(variant))
                _loaded[variant] = lib
    return lib


def cpu() -> NativeLibrary:
    """libkbit_cpu, which serves every CPU tensor."""
    return library("cpu")
