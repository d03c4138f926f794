"""kbit._binfile.requirements reads a library's needs from its sections without reading the whole file, and agrees
with binutils' readelf on a real library."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kbit import _binfile, _native


class _Counting:
    """A file object that counts the bytes read through it."""

    def __init__(self, f, counter):
        self._f, self._counter = f, counter

    def read(self, n=-1):
        data = self._f.read(n)
        self._counter.append(len(data))
        return data

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_requirements_read_a_few_kilobytes_of_a_large_library(tmp_path, monkeypatch):
    big = tmp_path / "libbig.so"
    data = _native.cpu().path.read_bytes()
    big.write_bytes(data + b"\0" * (64 * 2**20))  # 64 MiB beyond the sections, as a CUDA fatbin would be
    reads: list[int] = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: _Counting(real_open(self, *a, **k), reads))
    needed, versions = _binfile.requirements(big)
    monkeypatch.undo()
    assert (needed, versions) == _binfile.requirements(_native.cpu().path)
    assert sum(reads) < 256 * 1024, f"read {sum(reads)} bytes of a {big.stat().st_size}-byte file"


def test_requirements_agree_with_readelf():
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("binutils' readelf is not installed")
    path = _native.cpu().path
    needed, versions = _binfile.requirements(path)
    dynamic = subprocess.run([readelf, "-dW", str(path)], capture_output=True, text=True, check=True).stdout
    assert list(needed) == [row.split("[")[1].rstrip("]") for row in dynamic.splitlines() if "(NEEDED)" in row]
    verneed = subprocess.run([readelf, "-VW", str(path)], capture_output=True, text=True, check=True).stdout
    section = verneed.split(".gnu.version_r", 1)[1]
    names = {row.split("Name:")[1].split()[0] for row in section.splitlines() if "Name:" in row and "Flags:" in row}
    assert set(versions) == names and any(v.startswith("GLIBC_") for v in versions)


def test_a_file_that_is_not_elf_has_no_requirements(tmp_path):
    (tmp_path / "x.so").write_bytes(b"MZ" + b"\0" * 100)
    assert _binfile.requirements(tmp_path / "x.so") == ((), ())
    assert _binfile.requirements(tmp_path / "missing.so") == ((), ())
