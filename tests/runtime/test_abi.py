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
from helpers import compile_library

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
    lib = compile_library("void kbit_missing_dependency(void);\nvoid f(void) { kbit_missing_dependency(); }\n",
                          tmp_path, "libkbit_cpu.so")
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
    assert f"ABI {_abi.ABI_VERSION}" in text and "ABI 999" in text and "restart" in text


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


BUILD_INFO_KEYS = {"abi", "kbit_version", "variant", "backend", "toolkit", "sass", "ptx", "compression", "min_driver",
                   "compiler", "commit"}


def test_build_manifest_file_holds_exactly_the_documented_keys_with_no_cmake_leftovers():
    """The installed kbit_cpu.build.json: kbit.h's documented keys, no unexpanded ${...}, no -NOTFOUND value."""
    path = _native.library_path("cpu").with_name("kbit_cpu.build.json")
    text = path.read_text(encoding="utf-8")
    info = json.loads(text)
    documented = re.search(r"JSON: \{([^}]*)\}", HEADER).group(1)
    assert set(info) == set(re.findall(r'"(\w+)"', documented))
    assert "${" not in text and "NOTFOUND" not in text
    assert isinstance(info["sass"], list) and info["abi"] == _abi.ABI_VERSION


# ------------------------------------------------------------------------ kbit.h parsed, against kbit._abi

def _code(header: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", " ", header, flags=re.S))


def header_constants(header: str = HEADER) -> dict[str, int]:
    """Every numeric constant of kbit.h: enum members and integer #defines, by name."""
    code = _code(header)
    found = {name: int(value) for name, value in re.findall(r"^#\s*define\s+(KBIT_\w+)\s+(-?\d+)\s*$", code, re.M)}
    for body in re.findall(r"enum\s+\w+\s*\{([^}]*)\}", code):
        for name, value in re.findall(r"(KBIT_\w+)\s*=\s*(-?\d+)", body):
            found[name] = int(value)
    return found


_C_SCALARS = {"int": ctypes.c_int, "int32_t": ctypes.c_int32, "int64_t": ctypes.c_int64, "uint32_t": ctypes.c_uint32,
              "float": ctypes.c_float, "uint8_t": ctypes.c_uint8, "void": None, "char": ctypes.c_char}


def header_structs(header: str = HEADER) -> dict[str, list[tuple[str, str]]]:
    code = _code(header)
    return {name: re.findall(r"(\w+)\s+(\w+)\s*;", body)
            for name, body in re.findall(r"typedef\s+struct\s+(\w+)\s*\{([^}]*)\}", code)}


def header_prototypes(header: str = HEADER) -> dict[str, tuple[str, list[str]]]:
    """name -> (return type, [parameter types]) for every KBIT_API function, types as written without names."""
    code = " ".join(_code(header).split())
    found = {}
    for ret, name, params in re.findall(r"KBIT_API\s+([\w\s\*]+?)\s*\b(kbit_\w+)\s*\(([^)]*)\)\s*;", code):
        types = []
        for param in params.split(","):
            param = param.strip()
            if param in ("void", ""):
                continue
            types.append(re.sub(r"\s*\b\w+$", "", param).replace(" *", "*").strip())
        found[name] = (ret.replace(" *", "*").strip(), types)
    return found


def _accepts(c_type: str, py_type) -> bool:
    """Whether the ctypes declaration py_type passes C type c_type exactly: scalars by identity, `T*` as
    POINTER(T) (the struct's class for a struct pointer) or, for a data pointer, c_void_p."""
    c_type = c_type.replace("const ", "").strip()
    if c_type == "char*":
        return py_type is ctypes.c_char_p
    if c_type.endswith("*"):
        target = c_type[:-1].strip()
        if target in header_structs():
            return py_type is ctypes.POINTER(_STRUCTS[target])
        if py_type is ctypes.c_void_p:
            return True
        pointee = getattr(py_type, "_type_", None)
        return isinstance(pointee, type) and _accepts(target, pointee)
    return _C_SCALARS.get(c_type, object()) is py_type


_STRUCTS = {"kbit_optim_params": _abi.OptimParams}


def prototype_mismatches(prototypes: dict) -> list[str]:
    """Every difference between kbit.h's prototypes and `prototypes` (kbit._abi.PROTOTYPES' form)."""
    header = header_prototypes()
    problems = [f"{n}: in kbit.h only" for n in header.keys() - prototypes.keys()]
    problems += [f"{n}: in _abi only" for n in prototypes.keys() - header.keys()]
    for name in header.keys() & prototypes.keys():
        (c_ret, c_params), (py_ret, py_params) = header[name], prototypes[name]
        if not _accepts(c_ret, py_ret):
            problems.append(f"{name}: returns {c_ret}, declared {py_ret}")
        if len(c_params) != len(py_params):
            problems.append(f"{name}: {len(c_params)} parameters in kbit.h, {len(py_params)} declared")
            continue
        problems += [f"{name}: parameter {i} is {c} in kbit.h, declared {p}"
                     for i, (c, p) in enumerate(zip(c_params, py_params)) if not _accepts(c, p)]
    return problems


def test_every_prototype_matches_the_header_in_types_and_order():
    assert len(header_prototypes()) == len(declared_functions()) == 20
    assert prototype_mismatches(_abi.PROTOTYPES) == []


def test_the_prototype_check_catches_a_reordering():
    """Swapping two parameters of different types (or dropping one) is caught: the check can fail."""
    swapped = dict(_abi.PROTOTYPES)
    ret, params = swapped["kbit_gemv_4bit"]
    swapped["kbit_gemv_4bit"] = (ret, params[:6] + (params[7], params[6]) + params[8:])
    restype, args = swapped["kbit_optimizer_update_32bit"]
    swapped["kbit_optimizer_update_32bit"] = (restype, args[:6] + (ctypes.c_float,) + args[7:])
    problems = prototype_mismatches(swapped)
    assert any(p.startswith("kbit_gemv_4bit: parameter 6") for p in problems)
    assert any(p.startswith("kbit_optimizer_update_32bit: parameter 6") for p in problems)


def test_every_header_constant_has_its_python_copy_with_the_same_value():
    constants = header_constants()
    assert {"KBIT_ABI_VERSION", "KBIT_OK", "KBIT_F32", "KBIT_MAP_FP4", "KBIT_NF4", "KBIT_OPTIM_ADEMAMIX",
            "KBIT_BLOCKSIZE_4BIT_MIN", "KBIT_OPTIM_BLOCKSIZE", "KBIT_MAP_SIZE_4BIT"} <= constants.keys()
    python = {name: getattr(_abi, name.removeprefix("KBIT_"), None) for name in constants}
    assert python == constants
    assert set(_abi.STATUS_ERRORS) == {v for k, v in constants.items() if k.startswith("KBIT_ERR_")}


def test_the_params_struct_matches_the_header_field_by_field():
    fields = header_structs()["kbit_optim_params"]
    assert [(name, _C_SCALARS[c_type]) for c_type, name in fields] == list(_abi.OptimParams._fields_)
    assert fields[0] == ("uint32_t", "size")


@pytest.mark.parametrize("kind", [0, 1, 2, 4, 5, 6])
def test_the_python_state_count_is_the_librarys(kind):
    """The library refuses a NULL state2 exactly for the kinds _abi.optim_state_count says keep two states."""
    import torch

    from kbit.optim import _update

    p, g, s1 = torch.zeros(4), torch.ones(4), torch.zeros(8)
    params = _update.params(kind, _update.Hyper(0.1, 0.9, 0.99, 0.999, 1.0, 1e-8, 0.0), 1, 1.0)
    status = _native.cpu().handle.kbit_optimizer_update_32bit(kind, 0, p.data_ptr(), g.data_ptr(), s1.data_ptr(),
                                                              None, 4, ctypes.byref(params), None, 1)
    assert (status == _abi.ERR_INVALID_ARGUMENT) == (_abi.optim_state_count(kind) >= 2)
    if status:
        assert "state2 is NULL" in _native.cpu().handle.kbit_last_error().decode()


def test_optim_params_from_an_older_caller_are_refused_and_a_longer_struct_is_read_to_its_known_fields():
    import torch

    from kbit.optim import _update

    h = _update.Hyper(0.1, 0.9, 0.99, 0.0, 0.0, 1e-8, 0.0)
    handle = _native.cpu().handle
    results = {}
    for size in (ctypes.sizeof(_abi.OptimParams) - 4, ctypes.sizeof(_abi.OptimParams),
                 ctypes.sizeof(_abi.OptimParams) + 16):
        buf = ctypes.create_string_buffer(ctypes.sizeof(_abi.OptimParams) + 16)
        params = _update.params(_abi.OPTIM_MOMENTUM, h, 1, 1.0)
        params.size = size
        ctypes.memmove(buf, ctypes.byref(params), ctypes.sizeof(params))
        p, g, s1 = torch.ones(4), torch.ones(4), torch.zeros(4)
        status = handle.kbit_optimizer_update_32bit(_abi.OPTIM_MOMENTUM, 0, p.data_ptr(), g.data_ptr(), s1.data_ptr(),
                                                    None, 4, ctypes.cast(buf, ctypes.POINTER(_abi.OptimParams)), None, 1)
        results[size] = (status, p.tolist(), handle.kbit_last_error().decode())
    small, exact, large = results.values()
    assert small[0] == _abi.ERR_INVALID_ARGUMENT and "params->size" in small[2]
    assert exact[0] == large[0] == 0 and exact[1] == large[1] == [pytest.approx(0.9)] * 4  # p - lr * g
