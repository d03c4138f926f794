"""Checks a shared-library file before the system loader maps it.

This module owns one thing: refusing a file that is not a complete library of this platform. The glibc
loader maps a truncated ELF file and then dies with SIGBUS when it touches the missing pages, taking the
whole Python process with it; reading the headers first turns that into an error with the path and the fix.
It does not load anything.
"""
from __future__ import annotations

import platform
import struct
import sys
from pathlib import Path

_ELF_MAGIC = b"\x7fELF"
_PT_LOAD = 1
# e_machine values (glibc reports a library for another CPU as "No such file or directory")
_MACHINES = {3: "x86 (32-bit)", 40: "ARM (32-bit)", 62: "x86_64", 183: "aarch64", 243: "RISC-V", 21: "ppc64"}
_HOST_MACHINE = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183}


def problem_with(path: Path) -> str | None:
    """Why `path` cannot be a complete shared library here, or None when its headers are consistent.

    Reads the headers only (a CUDA library can be 100 MB)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(64)
            if sys.platform == "win32":
                return None if head[:2] == b"MZ" else "it does not start like a Windows DLL (no MZ header)"
            problem = _elf_header_problem(head, size)
            if problem:
                return problem
            order = "<" if head[5] == 1 else ">"
            phoff = struct.unpack_from(order + "Q", head, 32)[0]
            phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
            f.seek(phoff)
            return _segment_problem(f.read(phentsize * phnum), order, phentsize, phnum, size)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"


def _elf_header_problem(head: bytes, size: int) -> str | None:
    if len(head) < 64 or head[:4] != _ELF_MAGIC:
        return f"it is not an ELF file ({size} bytes, starts with {head[:4]!r})"
    if head[4] != 2:
        return "it is a 32-bit ELF file; kbit's libraries are 64-bit"
    order = "<" if head[5] == 1 else ">"
    machine = struct.unpack_from(order + "H", head, 18)[0]
    host = _HOST_MACHINE.get(platform.machine().lower())
    if host is not None and machine != host:
        return (f"it is a library for {_MACHINES.get(machine, f'e_machine {machine}')}, but this Python runs on "
                f"{platform.machine()} (a wheel for another platform was installed)")
    phoff, shoff = struct.unpack_from(order + "QQ", head, 32)
    phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 54)
    need = max(phoff + phentsize * phnum, shoff + shentsize * shnum)
    if need > size:
        return f"it is truncated: {size} bytes, but its headers need {need}"
    return None


def _segment_problem(table: bytes, order: str, phentsize: int, phnum: int, size: int) -> str | None:
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(order + "IIQQQQ", table, i * phentsize)
        if p_type == _PT_LOAD and p_offset + p_filesz > size:
            return f"it is truncated: {size} bytes, but a loadable segment ends at {p_offset + p_filesz}"
    return None
