"""The CPU library's AVX-512 copies, checked on any x86-64 machine: a test build (cmake -DKBIT_EMULATE_AVX512=ON)
runs them on SIMDe's emulation of the intrinsics (csrc/cpu/avx512_emulated.h), and their gemv_4bit and gemv_4bit_t
results must be the bits this process's library writes with its own instruction set (AVX2, AVX-512 or the
baseline: all write the same bits). On a CPU without AVX-512 this is the only run the AVX-512 loops get."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import pytest
import torch
from test_gemv4 import _path_results as gemv_paths
from test_gemv4 import bits
from test_gemv4t import _path_results as gemv_t_paths

import kbit

from conftest import ROOT, require_tool

_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from test_gemv4 import _path_results as gemv_paths
from test_gemv4t import _path_results as gemv_t_paths
torch.save({"gemv": gemv_paths(), "gemv_t": gemv_t_paths()}, sys.argv[2])
"""


def _emulated_package(tmp_path) -> str:
    """A copy of the installed kbit package whose CPU library is the emulated build; returns its parent folder."""
    cmake, ninja = shutil.which("cmake"), shutil.which("ninja")
    require_tool("cmake", cmake)
    require_tool("ninja", ninja)
    require_tool("SIMDe's headers (apt-get install libsimde-dev)", os.path.exists("/usr/include/simde/x86/avx512.h"))
    build = tmp_path / "build"
    subprocess.run([cmake, "-G", "Ninja", "-S", str(ROOT), "-B", str(build), "-DKBIT_BACKEND=cpu",
                    "-DKBIT_EMULATE_AVX512=ON", "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_MAKE_PROGRAM={ninja}"],
                   check=True, capture_output=True)
    subprocess.run([cmake, "--build", str(build)], check=True, capture_output=True)
    package = tmp_path / "site" / "kbit"
    shutil.copytree(os.path.dirname(kbit.__file__), package,
                    ignore=shutil.ignore_patterns("*.so", "*.dll", "*.build.json", "__pycache__"))
    shutil.copy(build / "libkbit_cpu.so", package)
    shutil.copy(build / "generated" / "kbit_cpu.build.json", package)
    return str(package.parent)


@pytest.mark.slow
@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64", reason="x86-64 Linux only")
def test_emulated_avx512_copies_write_the_same_bits(tmp_path):
    if os.environ.get("KBIT_CPU_BASELINE") == "1" or os.environ.get("KBIT_CPU_NO_AVX512") == "1":
        pytest.skip("the environment forces a narrower instruction set")
    site = _emulated_package(tmp_path)
    out = tmp_path / "emulated.pt"
    env = dict(os.environ, PYTHONPATH=site)
    subprocess.run([sys.executable, "-c", _SCRIPT, os.path.dirname(__file__), str(out)], check=True, env=env)
    probe = subprocess.run([sys.executable, "-c", "import kbit, os; print(os.path.dirname(kbit.__file__))"],
                           check=True, env=env, capture_output=True, text=True)
    assert probe.stdout.strip() == os.path.join(site, "kbit")  # the subprocess ran the emulated build
    there = torch.load(out)
    for name, here in (("gemv", gemv_paths()), ("gemv_t", gemv_t_paths())):
        assert len(here) == len(there[name]) > 0
        for i, (x, y) in enumerate(zip(here, there[name])):
            assert torch.equal(bits(x), bits(y)), f"{name} result {i} differs on the emulated AVX-512 copies"
