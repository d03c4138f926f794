"""ci/pe_imports.py, our PE reader and the Windows DLL gate, on DLLs that Debian's mingw-w64 builds here: a static one
that imports only system DLLs, and one that needs a MinGW runtime DLL and exports a stray name."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ci import pe_imports

CC = "x86_64-w64-mingw32-gcc-posix"

SOURCE = r"""
#include <windows.h>
#include <stdio.h>
__declspec(dllexport) int kbit_answer(void) { return 42; }
__declspec(dllexport) int helper_leak(void) { char b[8]; return snprintf(b, 8, "%d", 7); }
BOOL WINAPI DllMain(HINSTANCE h, DWORD r, LPVOID p) { (void)h; (void)r; (void)p; return TRUE; }
"""


def _dll(tmp_path: Path, *flags: str, source: str = SOURCE) -> Path:
    from conftest import require_tool

    require_tool(f"{CC} (apt-get install g++-mingw-w64-x86-64-posix)", shutil.which(CC))
    src, out = tmp_path / "t.c", tmp_path / "t.dll"
    src.write_text(source)
    subprocess.run([CC, "-shared", "-O1", "-o", out, src, *flags], check=True, capture_output=True)
    return out


def test_reads_imports_and_exports_of_a_static_dll(tmp_path):
    info = pe_imports.read(_dll(tmp_path, "-static"))
    assert info.machine == 0x8664
    assert set(info.exports) == {"kbit_answer", "helper_leak"}
    assert {d.lower() for d in info.imports} <= {"kernel32.dll", "msvcrt.dll"} and info.imports


def test_the_gate_names_a_stray_export(tmp_path):
    problems = pe_imports.problems(_dll(tmp_path, "-static"))
    assert len(problems) == 1 and "exports 'helper_leak'" in problems[0] and "fix:" in problems[0]


def test_the_gate_names_a_runtime_dll_import(tmp_path):
    source = ("#include <pthread.h>\n__declspec(dllexport) int kbit_lock(void) {\n"
              "  static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER; return pthread_mutex_lock(&m); }\n")
    dll = _dll(tmp_path, "-lpthread", source=source)  # not -static: libwinpthread-1.dll stays a DLL
    problems = pe_imports.problems(dll)
    assert any("imports libwinpthread-1.dll, which is not a Windows system DLL" in p for p in problems), problems


def test_system_dlls_are_matched_case_insensitively():
    assert pe_imports.is_system("KERNEL32.dll") and pe_imports.is_system("api-ms-win-crt-runtime-l1-1-0.dll")
    assert not pe_imports.is_system("VCRUNTIME140.dll") and not pe_imports.is_system("nvcuda.dll")


def test_a_file_that_is_not_pe_is_refused(tmp_path):
    path = tmp_path / "x.dll"
    path.write_bytes(b"\x7fELF" + b"\0" * 100)
    with pytest.raises(pe_imports.PEError, match="does not start with 'MZ'"):
        pe_imports.read(path)


def test_the_windows_wheel_gate_is_this_check(tmp_path):
    from ci import wheel

    clean = SOURCE.replace("__declspec(dllexport) int helper_leak", "int helper_leak")
    assert wheel.windows_dll_problems([_dll(tmp_path, "-static", source=clean)]) == []
    bad = tmp_path / "kbit_cuda130.dll"
    bad.write_bytes(b"not a dll")
    assert wheel.windows_dll_problems([bad]) == [
        "kbit_cuda130.dll: not a readable Windows DLL: "
        f"{bad} does not start with 'MZ': not a PE image. fix: rebuild it on the Windows runner"]


def test_the_reader_agrees_with_binutils_objdump(tmp_path):
    import re

    from conftest import require_tool

    objdump = shutil.which("x86_64-w64-mingw32-objdump")
    require_tool("x86_64-w64-mingw32-objdump (binutils-mingw-w64)", objdump)
    dll = _dll(tmp_path, "-static")
    text = subprocess.run([objdump, "-p", dll], capture_output=True, text=True, check=True).stdout
    info = pe_imports.read(dll)
    assert list(info.imports) == re.findall(r"DLL Name: (\S+)", text)
    assert sorted(info.exports) == sorted(re.findall(r"^\s+\[\s*\d+\] (\w+)$", text, re.M))
