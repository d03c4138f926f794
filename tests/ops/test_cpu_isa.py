"""libkbit_cpu runs on any x86-64 CPU: AVX/AVX-512 (VEX/EVEX) instructions appear only in functions built for
them with a target attribute and named `*_avx2` / `*_avx512*`, which run only after a runtime check of the CPU's
flags; nothing else in the library needs more than the x86-64 baseline, so an older CPU gets no illegal-instruction
crash. Staged and installed libraries are stripped of local symbols, so the test builds one and reads the
unstripped library of its build tree."""
from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, require_tool

VEX_MNEMONIC = re.compile(r"\t(v[a-z0-9]+|kmov[bwdq]|kor[bwdq]|kand[bwdq])\s")
WIDE_REGISTER = re.compile(r"%[yz]mm\d+")
DISPATCHED = re.compile(r"_avx(2|512[a-z]*)\b|\.(avx2|avx512[a-z]*)\b")


def functions(disassembly: str) -> dict[str, list[str]]:
    """objdump -d text split into {symbol: instruction lines}."""
    found: dict[str, list[str]] = {}
    current = None
    for line in disassembly.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            current = found.setdefault(head.group(1), [])
        elif current is not None and "\t" in line:
            current.append(line)
    return found


def avx_outside_dispatched(disassembly: str) -> dict[str, list[str]]:
    offenders = {}
    for name, body in functions(disassembly).items():
        hits = [line for line in body if VEX_MNEMONIC.search(line) or WIDE_REGISTER.search(line)]
        if hits and not DISPATCHED.search(name):
            offenders[name] = hits[:3]
    return offenders


def test_the_check_finds_avx_in_an_undispatched_function():
    text = ("0000000000001000 <kbit::quantize_block<float>(float const*)>:\n"
            "    1000:\tvmovups (%rdi),%ymm0\n"
            "0000000000002000 <kbit::quantize_block_avx2<float>(float const*)>:\n"
            "    2000:\tvmovups (%rdi),%ymm0\n"
            "0000000000003000 <kbit::absmax(float const*)>:\n"
            "    3000:\tmaxps  %xmm1,%xmm0\n")
    assert list(avx_outside_dispatched(text)) == ["kbit::quantize_block<float>(float const*)"]


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
def test_no_avx_outside_runtime_dispatched_functions(tmp_path):
    objdump = shutil.which("objdump")
    require_tool("objdump", objdump)
    subprocess.run([sys.executable, str(ROOT / "ci" / "build_variant.py"), "cpu", "--build-root", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=600)
    library = next(tmp_path.glob("cpu-*/libkbit_cpu.so"))  # the build tree's copy: the staged one is stripped
    text = subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", str(library)], capture_output=True,
                          text=True, check=True).stdout
    assert len(functions(text)) > 50, "the library has no local symbols: was it stripped?"
    offenders = avx_outside_dispatched(text)
    assert not offenders, f"AVX instructions outside runtime-dispatched functions: {offenders}"
