"""Loading kbit's native libraries and calling them.

This module owns: where a library file is (inside the installed package, by importlib.resources, never by
LD_LIBRARY_PATH or the working directory), loading it once (lazily, under a lock), the ABI handshake,
declaring the prototypes of kbit._abi, checking that a library is the one its build manifest describes, and
turning a failure status into a typed error. OS differences (file names, DLL folders) are kbit._platform's.
It does not decide which CUDA variant suits the machine (kbit._policy, kbit._runtime do).
"""
from __future__ import annotations

import ctypes
import importlib.resources
import json
import threading
from dataclasses import dataclass
from pathlib import Path

from kbit import _abi, _binfile, _errors, _platform

ABI_VERSION = _abi.ABI_VERSION
_PACKAGE = "kbit"
_PROTOTYPES = _abi.PROTOTYPES
_STATUS_ERRORS = _abi.STATUS_ERRORS


def library_filename(variant: str) -> str:
    """The file name of a variant's library: the one place the runtime computes it (the build: ci/matrix.py
    library_filename, CMake: kbit_output_name; tests/runtime/test_abi.py checks they agree)."""
    return _platform.current().shared_library_name(f"kbit_{variant}")


def package_dir() -> str:
    """Where the installed kbit package is, for messages (an editable install may span two folders)."""
    root = importlib.resources.files(_PACKAGE)
    folders = getattr(root, "_paths", None)  # an editable install's MultiplexedPath spans several folders
    return " + ".join(str(f) for f in folders) if folders else str(root)


def _package_entries() -> list[str]:
    return sorted(entry.name for entry in importlib.resources.files(_PACKAGE).iterdir())


def library_path(variant: str) -> Path:
    """Absolute path of a variant's library inside the installed package (wheel or editable install)."""
    resource = importlib.resources.files(_PACKAGE).joinpath(library_filename(variant))
    if not resource.is_file():
        present = [name for name in _package_entries() if "kbit_" in name] or ["no kbit libraries"]
        raise _errors.LibraryLoadError(
            f"kbit's library {library_filename(variant)} is not in the installed package ({package_dir()}), "
            f"which holds: {', '.join(present)}.", fix="reinstall kbit (pip install --force-reinstall kbit), "
            "or from a source checkout `pip install .`")
    if not isinstance(resource, Path):
        raise _errors.LibraryLoadError(
            f"kbit is installed in a form that is not plain files on disk ({type(resource).__name__}); native "
            f"libraries cannot be loaded from it.", fix="install kbit with pip into a normal environment")
    return resource.resolve()


def expected_library_path(variant: str) -> Path | None:
    """Where a variant's library must be inside the package (whether or not it is there); None when the
    package is not plain files on disk."""
    resource = importlib.resources.files(_PACKAGE).joinpath(library_filename(variant))
    return Path(resource).resolve() if isinstance(resource, Path) else None


def bundled_manifests() -> dict[str, dict]:
    """Build manifests (`kbit_<variant>.build.json`, written by CMake from what was built) by variant."""
    found = {}
    for entry in importlib.resources.files(_PACKAGE).iterdir():
        if entry.name.startswith("kbit_") and entry.name.endswith(".build.json"):
            try:
                info = json.loads(entry.read_text(encoding="utf-8"))
                found[info["variant"]] = info
            except (ValueError, KeyError, TypeError) as exc:
                raise _errors.LibraryLoadError(
                    f"the build manifest {entry} is damaged ({exc}).", fix="reinstall kbit "
                    "(pip install --force-reinstall kbit)") from None
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


def _declare(handle: ctypes.CDLL, path: Path, names=None) -> None:
    for name, (restype, argtypes) in _PROTOTYPES.items():
        if names is not None and name not in names:
            continue
        try:
            fn = getattr(handle, name)
        except AttributeError:
            raise _errors.LibraryLoadError(
                f"{path} does not export {name}: it is not a kbit library of this version.",
                fix="reinstall kbit (pip install --force-reinstall kbit)") from None
        fn.restype, fn.argtypes = restype, argtypes


def load_library(path: Path, manifest: dict | None = None) -> NativeLibrary:
    """Load one library by absolute path, check its ABI version, declare its prototypes, and (given its build
    manifest) check that the library says the same about itself."""
    if not path.is_absolute():
        raise _errors.LibraryLoadError(f"refusing to load {path}: kbit loads its libraries by absolute path only")
    platform = _platform.current()
    problem = platform.file_problem(path)
    if problem:
        raise _errors.LibraryLoadError(
            f"{path} cannot be loaded: {problem}.", fix="reinstall kbit (pip install --force-reinstall kbit); "
            "an interrupted download or install leaves such files")
    platform.prepare_load(path.parent)
    try:
        handle = platform.load(path)
    except OSError as exc:
        raise _load_refused(path, exc) from exc
    _declare(handle, path, names=("kbit_abi_version",))  # first: a library of another version lacks newer functions
    found = handle.kbit_abi_version()
    if found != ABI_VERSION:
        raise _errors.AbiMismatchError(
            f"{path} speaks kbit ABI {found}, but the kbit Python package loaded in this process speaks ABI "
            f"{ABI_VERSION}.", fix="if kbit was upgraded inside a running notebook or process, restart it; "
            "otherwise reinstall kbit so that its Python files and libraries come from one version")
    _declare(handle, path)
    info = json.loads(handle.kbit_build_info().decode("utf-8"))
    if manifest is not None and info != manifest:
        raise _errors.LibraryLoadError(
            f"{path} describes itself as {info}, but its manifest kbit_{manifest.get('variant')}.build.json says "
            f"{manifest}: the library and the manifest come from different builds.", fix="reinstall kbit "
            "(pip install --force-reinstall kbit) so that both come from one wheel")
    return NativeLibrary(path, handle, info)


def _load_refused(path: Path, exc: OSError) -> _errors.LibraryLoadError:
    """The loader's refusal, classified by what the file asks for (never by the loader's text)."""
    need = _binfile.glibc_needed(path)
    have = _platform.current().libc_version()
    if need and have and _binfile.version_key(need) > _binfile.version_key(have):
        return _errors.GlibcTooOldError(
            f"the system loader refused {path}: {exc}. It needs glibc {need}, this system has glibc {have}.",
            fix=f"use a newer Linux distribution (or a container with glibc >= {need}), or build kbit from "
            f"source on this system (pip install --no-binary kbit kbit)")
    return _errors.LibraryLoadError(
        f"the system loader refused {path}: {exc}.", fix=f"reinstall kbit (pip install --force-reinstall kbit) "
        f"from a wheel for this platform{_platform.current().load_fix()}")


_lock = threading.Lock()
_loaded: dict[str, NativeLibrary] = {}


def library(variant: str) -> NativeLibrary:
    """The loaded library of `variant`, loading it on first use (once, even when threads race). A library
    that fails to load is not remembered: the next call tries again and raises the same typed error."""
    lib = _loaded.get(variant)
    if lib is None:
        with _lock:
            lib = _loaded.get(variant)
            if lib is None:
                lib = load_library(library_path(variant), bundled_manifests().get(variant))
                _loaded[variant] = lib
    return lib


def loaded() -> dict[str, NativeLibrary]:
    """The libraries loaded so far, by variant (for diagnostics)."""
    return dict(_loaded)


def cpu_threads(lib: NativeLibrary) -> tuple[int, str]:
    """kbit_cpu_threads: which threads run lib's CPU loops (a kbit_cpu_threads_kind) and, for the process's
    OpenMP team, the file of its runtime."""
    kind, where = ctypes.c_int32(-1), ctypes.create_string_buffer(4096)
    lib.call("kbit_cpu_threads", ctypes.byref(kind), where, len(where))
    return kind.value, where.value.decode("utf-8", "replace")


def cpu() -> NativeLibrary:
    """libkbit_cpu, which serves every CPU tensor."""
    return library("cpu")
