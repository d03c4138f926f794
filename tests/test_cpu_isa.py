"""libkbit_cpu runs on any x86-64 CPU: code outside runtime-dispatched clones uses no AVX/AVX-512 (VEX/EVEX)
instructions, so an older CPU gets no illegal-instruction crash. Functions compiled for a newer ISA exist only
as GCC target_clones (symbol suffix `.avx2`, `.avx512f`, ...), chosen at load time from the CPU's flags."""
from __future__ import annotations

import platform
import re
import shutil
import subprocess

import pytest

from kbit import _native
from conftest import require_tool

VEX_MNEMONIC = re.compile(r"\t(v[a-z0-9]+|kmov[bwdq]|kor[bwdq]|kand[bwdq])\s")
WIDE_REGISTER = re.compile(r"%[yz]mm\d+")
CLONE_SUFFIX = re.compile(r"\.(avx|avx2|avx512[a-z]*|arch_[a-z0-9_]+|fma|f16c|bmi2?)[.\d]*>")


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


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
def test_no_avx_outside_runtime_dispatched_clones():
    objdump = shutil.which("objdump")
    require_tool("objdump", objdump)
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(_native.cpu().path)], capture_output=True,
                          text=True, check=True).stdout
    funcs = functions(text)
    assert len(funcs) > 20  # the disassembly was parsed
    offenders = {name: [l for l in body if VEX_MNEMONIC.search(l) or WIDE_REGISTER.search(l)][:3]
                 for name, body in funcs.items() if not CLONE_SUFFIX.search(f"{name}>")}
    offenders = {name: lines for name, lines in offenders.items() if lines}
    assert not offenders, f"AVX instructions outside target_clones: {offenders}"
