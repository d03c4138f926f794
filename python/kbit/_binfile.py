"""Checks a shared-library file before the system loader maps it.

This module owns one thing: refusing a file that is not a complete library of this platform. The glibc
loader maps a truncated ELF file and then dies with SIGBUS when it touches the missing pages, taking the
whole Python process with it; reading the headers first turns that into an error with the path and the fix.
It does not load anything; kbit._platform chooses which check applies to the OS.
"""
from __future__ import annotations

import platform
import struct
from pathlib import Path

_ELF_MAGIC = b"\x7fELF"
_PT_LOAD = 1
# e_machine values (glibc reports a library for another CPU as "No such file or directory")
_MACHINES = {3: "x86 (32-bit)", 40: "ARM (32-bit)", 62: "x86_64", 183: "aarch64", 243: "RISC-V", 21: "ppc64"}
_HOST_MACHINE = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183}


def problem_with(path: Path) -> str | None:
    """Why `path` cannot be a complete ELF shared library here, or None when its headers are consistent.

    Reads the headers only (a CUDA library can be 100 MB)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(64)
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


def dll_problem(path: Path) -> str | None:
    """Why `path` cannot be a Windows DLL, or None when it starts like one."""
    try:
        with path.open("rb") as f:
            head = f.read(2)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    if head == _ELF_MAGIC[:2]:
        return "it is a Linux ELF library, not a Windows DLL (a wheel for another platform was installed)"
    if head != b"MZ":
        return "it does not start like a Windows DLL (no MZ header)"
    return None


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


# ------------------------------------------------------------------ what a library asks of the system

_SHT_DYNAMIC, _SHT_VERNEED, _DT_NEEDED = 6, 0x6FFFFFFE, 1


def requirements(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DT_NEEDED libraries, symbol versions needed such as GLIBC_2.34) of an ELF library; ((), ()) when the
    file is not a readable 64-bit ELF library. Reads the ELF header, the section headers, the .dynamic and
    .gnu.version_r sections and their string tables: a few KB, never the whole file (a CUDA library is MBs)."""
    try:
        with path.open("rb") as f:
            return _requirements(f, path.stat().st_size)
    except (OSError, struct.error, ValueError, IndexError):
        return (), ()


def _requirements(f, size: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    head = f.read(64)
    if len(head) < 64 or head[:4] != _ELF_MAGIC or head[4] != 2 or _elf_header_problem(head, size):
        return (), ()
    order = "<" if head[5] == 1 else ">"
    shoff = struct.unpack_from(order + "Q", head, 40)[0]
    shentsize, shnum = struct.unpack_from(order + "HH", head, 58)
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    sections = [struct.unpack_from(order + "IIQQQQII", table, i * shentsize) for i in range(shnum)]

    def read(index: int) -> bytes:  # one section's bytes
        offset, length = sections[index][4], sections[index][5]
        f.seek(offset)
        return f.read(length)

    needed, versions = [], []
    for _, sh_type, _, _, offset, length, link, info in sections:
        if sh_type not in (_SHT_DYNAMIC, _SHT_VERNEED) or link >= len(sections):
            continue
        strtab = read(link)
        f.seek(offset)
        data = f.read(length)
        if sh_type == _SHT_DYNAMIC:
            for pos in range(0, len(data) - 15, 16):
                tag, val = struct.unpack_from(order + "qQ", data, pos)
                if tag == _DT_NEEDED:
                    needed.append(_cstr(strtab, val))
        else:
            versions += _verneed(data, order, 0, info, strtab)
    return tuple(needed), tuple(sorted(set(versions)))


def _verneed(data: bytes, order: str, pos: int, count: int, strtab: bytes) -> list[str]:
    found = []
    for _ in range(count):
        _, cnt, _, aux, nxt = struct.unpack_from(order + "HHIII", data, pos)
        apos = pos + aux
        for _ in range(cnt):
            _, _, _, name, anext = struct.unpack_from(order + "IHHII", data, apos)
            found.append(_cstr(strtab, name))
            apos += anext
        pos += nxt
    return found


def _cstr(data: bytes, start: int) -> str:
    return data[start:data.index(b"\0", start)].decode("ascii", "replace")


def version_key(text: str) -> tuple[int, ...]:
    """"2.34" -> (2, 34), for comparing versions as numbers."""
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def glibc_needed(path: Path) -> str | None:
    """The newest glibc version a library needs ("2.34"), None when it needs none or is not ELF."""
    found = [v[len("GLIBC_"):] for v in requirements(path)[1] if v.startswith("GLIBC_") and v[6:7].isdigit()]
    return max(found, key=version_key, default=None)
