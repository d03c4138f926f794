"""What an ELF shared library asks of the system and what it offers, read from its dynamic sections.

This module owns reading, nothing more: the DT_NEEDED list, every undefined dynamic symbol with the version it
asks for (GLIBC_2.34, GLIBCXX_3.4.29, ... and the library that version is needed from), and every defined
dynamic symbol with its versions (for glibc: which old versions of a symbol still exist). It does not judge
(ci/portability.py does) and it does not load the file. Standard library only, 64-bit ELF only; the installed
package has its own small header reader (python/kbit/_binfile.py) and never imports ci/.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

_SHT_DYNSYM, _SHT_DYNAMIC = 11, 6
_SHT_VERDEF, _SHT_VERNEED, _SHT_VERSYM = 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF
_DT_NEEDED, _DT_SONAME = 1, 14
_SHN_UNDEF = 0
_VERSYM_HIDDEN = 0x8000


class ElfError(Exception):
    """The file is not a readable 64-bit ELF shared library."""


@dataclass(frozen=True)
class Need:
    """One undefined dynamic symbol: its name, the version it asks for (None: unversioned) and from which file."""

    symbol: str
    version: str | None
    library: str | None
    weak: bool


@dataclass(frozen=True)
class Definition:
    """One defined dynamic symbol version; `default` is False for a hidden (compat-only) version."""

    symbol: str
    version: str | None
    default: bool


@dataclass(frozen=True)
class DynamicInfo:
    soname: str | None
    needed: tuple[str, ...]
    needs: tuple[Need, ...]
    definitions: tuple[Definition, ...]


def read(path: Path) -> DynamicInfo:
    """The dynamic dependencies and symbols of a shared library; raises ElfError naming the file."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _read(data, str(path))
    except (OSError, ValueError) as exc:
        raise ElfError(f"{path}: cannot be read ({exc})") from exc


def _read(data, name: str) -> DynamicInfo:
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2:
        raise ElfError(f"{name}: not a 64-bit ELF file")
    order = "<" if data[5] == 1 else ">"
    shoff = struct.unpack_from(order + "Q", data, 40)[0]
    shentsize, shnum = struct.unpack_from(order + "HH", data, 58)
    if shoff == 0 or shoff + shentsize * shnum > len(data):
        raise ElfError(f"{name}: no section headers (stripped of them, or truncated)")
    sections = [struct.unpack_from(order + "IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    by_type = {s[1]: s for s in sections}
    soname, needed = _dynamic(data, order, sections, by_type.get(_SHT_DYNAMIC))
    versions, files = _verneed(data, order, sections, by_type.get(_SHT_VERNEED))
    versions.update(_verdef(data, order, sections, by_type.get(_SHT_VERDEF)))
    needs, definitions = _symbols(data, order, sections, by_type.get(_SHT_DYNSYM), by_type.get(_SHT_VERSYM),
                                  versions, files)
    return DynamicInfo(soname, tuple(needed), tuple(needs), tuple(definitions))


def _cstr(data, start: int) -> str:
    return bytes(data[start:data.find(b"\0", start)]).decode("ascii", "replace")


def _strtab(sections, link: int) -> int:
    return sections[link][4]


def _dynamic(data, order, sections, dyn):
    soname, needed = None, []
    if dyn is None:
        return soname, needed
    _, _, _, _, offset, size, link, *_ = dyn
    strtab = _strtab(sections, link)
    for pos in range(offset, offset + size, 16):
        tag, val = struct.unpack_from(order + "qQ", data, pos)
        if tag == _DT_NEEDED:
            needed.append(_cstr(data, strtab + val))
        elif tag == _DT_SONAME:
            soname = _cstr(data, strtab + val)
    return soname, needed


def _verneed(data, order, sections, sec) -> tuple[dict[int, str], dict[int, str]]:
    """version index -> version name, and version index -> the file it is needed from."""
    names, files = {}, {}
    if sec is None:
        return names, files
    _, _, _, _, pos, _, link, count, *_ = sec
    strtab = _strtab(sections, link)
    for _ in range(count):
        _, cnt, file_off, aux, nxt = struct.unpack_from(order + "HHIII", data, pos)
        apos = pos + aux
        for _ in range(cnt):
            _, _, other, name, anext = struct.unpack_from(order + "IHHII", data, apos)
            names[other] = _cstr(data, strtab + name)
            files[other] = _cstr(data, strtab + file_off)
            apos += anext
        if nxt == 0:
            break
        pos += nxt
    return names, files


def _verdef(data, order, sections, sec) -> dict[int, str]:
    names = {}
    if sec is None:
        return names
    _, _, _, _, pos, _, link, count, *_ = sec
    strtab = _strtab(sections, link)
    for _ in range(count):
        _, flags, ndx, cnt, _, aux, nxt = struct.unpack_from(order + "HHHHIII", data, pos)
        if cnt and not flags & 1:  # VER_FLG_BASE names the file itself, not a version
            names[ndx] = _cstr(data, strtab + struct.unpack_from(order + "I", data, pos + aux)[0])
        if nxt == 0:
            break
        pos += nxt
    return names


def _symbols(data, order, sections, dynsym, versym, versions, files):
    needs, definitions = [], []
    if dynsym is None:
        return needs, definitions
    _, _, _, _, offset, size, link, _, _, entsize = dynsym
    strtab = _strtab(sections, link)
    vs_offset = versym[4] if versym is not None else None
    for i in range(1, size // entsize):
        name_off, info, _, shndx, _, _ = struct.unpack_from(order + "IBBHQQ", data, offset + i * entsize)
        bind = info >> 4
        if bind not in (1, 2):  # GLOBAL, WEAK
            continue
        ndx = struct.unpack_from(order + "H", data, vs_offset + 2 * i)[0] if vs_offset is not None else 1
        index = ndx & 0x7FFF
        version = versions.get(index) if index > 1 else None
        name = _cstr(data, strtab + name_off)
        if shndx == _SHN_UNDEF:
            needs.append(Need(name, version, files.get(index), bind == 2))
        else:
            definitions.append(Definition(name, version, not ndx & _VERSYM_HIDDEN))
    return needs, definitions


def version_key(version: str) -> tuple[int, ...]:
    """"GLIBC_2.3.4" -> (2, 3, 4), for comparing versions of one prefix as numbers."""
    tail = version.rpartition("_")[2]
    return tuple(int(p) for p in tail.split(".") if p.isdigit())
