"""What a Windows DLL imports and exports, read from its PE headers, and the gate that it imports only Windows
system DLLs (no vcruntime140.dll, no MSVC or MinGW runtime DLL, no nvcuda.dll at link time).

This module owns the PE reading (DOS header -> PE signature -> COFF and optional header -> the import, delay-import
and export directories, RVAs mapped through the section table) and that gate. It is standard library only, so the
Windows assemble job and this Linux machine (on the mingw-w64 build of `nox -s smoke-windows`) run the same code.

CLI: python ci/pe_imports.py DLL...   prints imports and exports; exit 1 when a DLL imports a non-system DLL or
     exports a name outside kbit_*.
"""
from __future__ import annotations

import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

# DLLs every supported Windows has in System32. Not here, on purpose: vcruntime140*.dll / msvcp140*.dll (the Visual
# C++ redistributable: a /MT build needs none), libgcc_s_*/libstdc++-6/libwinpthread-1/libgomp-1 (MinGW runtimes:
# the smoke build links them statically), nvcuda.dll (the static cudart loads the driver itself, at run time).
SYSTEM_DLLS = frozenset({"kernel32.dll", "advapi32.dll", "ntdll.dll", "user32.dll", "bcrypt.dll", "shell32.dll",
                         "ole32.dll", "oleaut32.dll", "ws2_32.dll", "msvcrt.dll", "ucrtbase.dll", "setupapi.dll"})
SYSTEM_PREFIXES = ("api-ms-win-crt-", "api-ms-win-core-")  # the Universal CRT's and the core API sets
EXPORT_NAME = re.compile(r"^kbit_[a-z0-9_]+$")


class PEError(Exception):
    """The file is not a PE image this reader understands; the message says what was found where."""


@dataclass(frozen=True)
class PEInfo:
    """A DLL's machine, its imported DLL names (load-time and delay-load) and its exported names."""

    path: Path
    machine: int
    imports: tuple[str, ...]
    delay_imports: tuple[str, ...]
    exports: tuple[str, ...]


class _Image:
    def __init__(self, path: Path):
        self.path, self.data = path, path.read_bytes()
        if self.data[:2] != b"MZ":
            raise PEError(f"{path} does not start with 'MZ': not a PE image")
        pe = self.u32(0x3C)
        if self.data[pe:pe + 4] != b"PE\0\0":
            raise PEError(f"{path}: no PE signature at offset {pe:#x}")
        self.machine, nsections = struct.unpack_from("<HH", self.data, pe + 4)
        opt_size = struct.unpack_from("<H", self.data, pe + 20)[0]
        opt = pe + 24
        magic = struct.unpack_from("<H", self.data, opt)[0]
        if magic not in (0x10B, 0x20B):
            raise PEError(f"{path}: optional header magic {magic:#x} is neither PE32 nor PE32+")
        self.dirs = opt + (96 if magic == 0x10B else 112)
        sections = opt + opt_size
        self.sections = [struct.unpack_from("<IIII", self.data, sections + 40 * i + 8) for i in range(nsections)]

    def u32(self, offset: int) -> int:
        return struct.unpack_from("<I", self.data, offset)[0]

    def directory(self, index: int) -> tuple[int, int]:
        return struct.unpack_from("<II", self.data, self.dirs + 8 * index)

    def offset(self, rva: int) -> int:
        for vsize, vaddr, rawsize, rawptr in self.sections:
            if vaddr <= rva < vaddr + max(vsize, rawsize):
                return rawptr + rva - vaddr
        raise PEError(f"{self.path}: RVA {rva:#x} lies in no section")

    def cstring(self, rva: int) -> str:
        start = self.offset(rva)
        return self.data[start:self.data.index(b"\0", start)].decode("ascii", "replace")

    def dll_names(self, index: int, stride: int, name_at: int) -> tuple[str, ...]:
        rva, size = self.directory(index)
        if not rva:
            return ()
        names, at = [], self.offset(rva)
        while True:
            entry = self.data[at:at + stride]
            if len(entry) < stride or not any(entry):
                return tuple(names)
            names.append(self.cstring(struct.unpack_from("<I", entry, name_at)[0]))
            at += stride

    def exports(self) -> tuple[str, ...]:
        rva, _ = self.directory(0)
        if not rva:
            return ()
        at = self.offset(rva)
        count, names_rva = self.u32(at + 24), self.u32(at + 32)
        return tuple(self.cstring(self.u32(self.offset(names_rva) + 4 * i)) for i in range(count))


def read(path: Path) -> PEInfo:
    """Parse a DLL's imports (directory 1), delay imports (13) and exported names (0)."""
    image = _Image(Path(path))
    return PEInfo(Path(path), image.machine, image.dll_names(1, 20, 12), image.dll_names(13, 32, 4), image.exports())


def is_system(dll: str) -> bool:
    """Whether `dll` ships with Windows (case-insensitive, as the loader compares)."""
    name = dll.lower()
    return name in SYSTEM_DLLS or name.startswith(SYSTEM_PREFIXES)


def problems(path: Path) -> list[str]:
    """Every non-system DLL the file imports (at load or delay-load time) and every export outside kbit_*."""
    info = read(path)
    found = [f"{info.path.name} imports {dll}, which is not a Windows system DLL. fix: link it statically "
             f"(MSVC: /MT via MSVC_RUNTIME_LIBRARY; MinGW: -static) or drop the dependency"
             for dll in info.imports + info.delay_imports if not is_system(dll)]
    found += [f"{info.path.name} exports {name!r}, which is not part of the kbit C ABI. fix: mark it static or give "
              f"it hidden visibility" for name in info.exports if not EXPORT_NAME.match(name)]
    if info.machine != 0x8664:
        found.append(f"{info.path.name} is for machine {info.machine:#x}, not x64 (0x8664). fix: build for win-amd64")
    return found


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        print("usage: python ci/pe_imports.py DLL...", file=sys.stderr)
        return 2
    failed = False
    for path in paths:
        try:
            info, found = read(path), problems(path)
        except (OSError, PEError, struct.error, ValueError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            return 2
        print(f"{path.name}: imports {', '.join(info.imports) or 'nothing'}; delay-loads "
              f"{', '.join(info.delay_imports) or 'nothing'}; exports {len(info.exports)} names "
              f"({', '.join(info.exports[:3])}{', ...' if len(info.exports) > 3 else ''})")
        for line in found:
            print(f"  FAIL {line}")
        failed = failed or bool(found)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
