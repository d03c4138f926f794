"""The C ABI of the CPU library as built and installed: exports, handshake, errors, loading."""
from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
import sys
import threading

import pytest

import kbit
from kbit import _abi, _native

from conftest import ROOT

HEADER = (ROOT / "csrc" / "kbit.h").read_text()


def declared_functions() -> set[str]:
    return set(re.findall(r"KBIT_API\s+[\w\s\*]+?\b(kbit_\w+)\s*\(", HEADER))


def test_header_abi_version_is_the_python_one():
    assert int(re.search(r"#define KBIT_ABI_VERSION (\d+)", HEADER).group(1)) == _native.ABI_VERSION
    assert _native.cpu().handle.kbit_abi_version() == _native.ABI_VERSION


def test_only_the_c_abi_is_exported():
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not available")
    out = subprocess.run([nm, "-D", "--defined-only", str(_native.cpu().path)], capture_output=True, text=True,
                         check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert exported == declared_functions()


def test_every_status_function_is_declared_with_ctypes():
    handshake = {"kbit_abi_version", "kbit_build_info", "kbit_last_error"}
    assert declared_functions() == set(_abi.PROTOTYPES)
    for name in declared_functions() - handshake:
        assert _abi.PROTOTYPES[name][0] is ctypes.c_int, f"{name} must return a status"


def test_build_info_describes_the_cpu_build_and_matches_the_installed_manifest():
    lib = _native.cpu()
    info = lib.build_info
    assert info["abi"] == _native.ABI_VERSION and info["variant"] == "cpu" and info["backend"] == "cpu"
    assert info["sass"] == [] and info["ptx"] is None and info["toolkit"] is None
    assert info["kbit_version"] == kbit.__version__
    assert info["compiler"] and info["commit"]
    assert _native.bundled_manifests()["cpu"] == info
    assert lib.path.name == _native.library_filename("cpu") == "libkbit_cpu.so"


@pytest.mark.parametrize("variant", ["cpu", "cuda124", "cuda130"])
def test_runtime_and_build_compute_the_same_file_name(variant):
    from ci import matrix

    plat = "win-amd64" if sys.platform == "win32" else "linux-x86_64"
    assert _native.library_filename(variant) == matrix.library_filename(variant, plat)


def test_last_error_is_per_thread_and_cleared_by_success():
    handle = _native.cpu().handle
    seen = {}

    def fail_then_read():
        handle.kbit_quantize_blockwise_8bit(0, None, None, None, 64, 100, None, 1)
        barrier.wait()  # the other thread succeeds meanwhile
        barrier.wait()
        seen["failing"] = handle.kbit_last_error().decode()

    def succeed():
        barrier.wait()
        count = ctypes.c_int32()
        assert handle.kbit_device_count(ctypes.byref(count)) == 0
        seen["succeeding"] = handle.kbit_last_error().decode()
        barrier.wait()

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=fail_then_read), threading.Thread(target=succeed)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "blocksize 100" in seen["failing"] and seen["succeeding"] == ""


def test_cpu_library_reports_no_devices():
    count = ctypes.c_int32(-1)
    _native.cpu().call("kbit_device_count", ctypes.byref(count))
    assert count.value == 0


def test_import_loads_no_native_library():
    code = ("import sys, kbit, kbit.functional; "
            "print(any('kbit_' in m for m in open('/proc/self/maps').read().split()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def _load_in_subprocess(path) -> str:
    code = ("import sys\nfrom pathlib import Path\nfrom kbit import _native, LibraryLoadError\n"
            "try:\n    _native.load_library(Path(sys.argv[1]))\nexcept LibraryLoadError as e:\n    print(type(e).__name__, e)\n")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout


def test_a_truncated_library_names_the_path_the_loader_message_and_the_fix(tmp_path):
    bad = tmp_path / "libkbit_cpu.so"
    bad.write_bytes(_native.cpu().path.read_bytes()[:4096])
    out = _load_in_subprocess(bad)
    assert out.startswith("LibraryLoadError") and str(bad) in out and "fix: reinstall kbit" in out
    assert "it is truncated: 4096 bytes" in out


def test_a_library_for_another_cpu_says_so(tmp_path):
    """glibc itself reports this as 'No such file or directory', the most misleading message there is."""
    bad = tmp_path / "libkbit_cpu.so"
    data = bytearray(_native.cpu().path.read_bytes())
    data[18:20] = (183 if data[18] == 62 else 62).to_bytes(2, "little")
    bad.write_bytes(bytes(data))
    out = _load_in_subprocess(bad)
    assert str(bad) in out and "it is a library for" in out and "but this Python runs on" in out


def test_a_file_the_loader_refuses_gives_the_loaders_own_message(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to make a library with an unresolved symbol")
    src = tmp_path / "x.c"
    src.write_text("void kbit_missing_dependency(void);\nvoid f(void) { kbit_missing_dependency(); }\n")
    lib = tmp_path / "libkbit_cpu.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    out = _load_in_subprocess(lib)
    assert "the system loader refused" in out and str(lib) in out
    assert "undefined symbol: kbit_missing_dependency" in out and "fix:" in out


def test_a_text_file_is_not_a_library(tmp_path):
    bad = tmp_path / "libkbit_cpu.so"
    bad.write_text("version https://git-lfs.github.com/spec/v1\n")
    assert "it is not an ELF file" in _load_in_subprocess(bad)


def test_a_foreign_library_is_refused(tmp_path):
    import ctypes.util

    libm = ctypes.util.find_library("m")
    out = _load_in_subprocess(libm if libm and libm.startswith("/") else "/lib/x86_64-linux-gnu/libm.so.6")
    assert "does not export kbit_abi_version" in out and "reinstall" in out


def test_abi_mismatch_says_both_versions_and_to_restart(monkeypatch):
    monkeypatch.setattr(_native, "ABI_VERSION", 999)
    with pytest.raises(kbit.AbiMismatchError) as info:
        _native.load_library(_native.cpu().path)
    text = str(info.value)
    assert "ABI 1" in text and "ABI 999" in text and "restart" in text


def test_loading_races_load_once():
    code = """
import threading, kbit
from kbit import _native
calls = []
original = _native.load_library
def counting(path, *rest):
    calls.append(path)
    return original(path, *rest)
_native.load_library = counting
barrier = threading.Barrier(16)
results = []
def go():
    barrier.wait()
    results.append(_native.cpu())
threads = [threading.Thread(target=go) for _ in range(16)]
[t.start() for t in threads]; [t.join() for t in threads]
print(len(calls), len({id(r) for r in results}), len(results))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "1", "16"]


def test_build_manifest_is_json_from_the_build():
    manifests = _native.bundled_manifests()
    assert json.dumps(manifests["cpu"])  # plain JSON, no CMake artefacts
