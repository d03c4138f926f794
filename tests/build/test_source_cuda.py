"""`KBIT_CUDA_ARCHS=87 pip install .`: a source install for a custom GPU builds the CPU library plus one CUDA variant
of the machine's toolkit with exactly those archs, refused before CUDA is enabled when the toolkit cannot build them,
and the runtime selects it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from ci import matrix, source_cuda, wheel

from conftest import ROOT, require_tool

NVCC13 = Path("/usr/local/cuda-13.0/bin/nvcc")


@pytest.mark.parametrize("text, archs", [("87", (87,)), ("8.7", (87,)), ("sm_90,80", (80, 90)), ("80;86 86", (80, 86))])
def test_arch_lists_are_read_as_compute_capabilities(text, archs):
    assert source_cuda.parse_archs(text) == archs


@pytest.mark.parametrize("text", ["abc", "", "87-real", "compute_87"])
def test_a_malformed_arch_list_is_refused_with_an_example(text):
    with pytest.raises(source_cuda.SourceCudaError, match="KBIT_CUDA_ARCHS"):
        source_cuda.parse_archs(text)


def test_sm70_with_cuda130_is_refused_by_the_row_validator_with_the_fix():
    with pytest.raises(source_cuda.SourceCudaError) as info:
        source_cuda.custom_row(matrix.load(), "13.0", (70, 87))
    text = str(info.value)
    assert "CUDA 13.0 cannot compile for sm_70" in text and "13.0 dropped everything below sm_75" in text
    assert "KBIT_CUDA_ARCHS=87 (what CUDA 13.0 can build)" in text and "CUDA 11.8 or 12.4 or 12.8" in text


def test_the_custom_row_is_the_toolkits_row_with_the_users_archs():
    row = source_cuda.custom_row(matrix.load(), "13.0", (87,))
    assert (row.name, row.sass, row.ptx, row.compression) == ("cuda130", (87,), 87, "size")
    with pytest.raises(source_cuda.SourceCudaError, match="CUDA 12.6, which has no row in matrix.toml"):
        source_cuda.custom_row(matrix.load(), "12.6", (87,))


def _configure(tmp_path: Path, archs: str) -> subprocess.CompletedProcess:
    cmake = shutil.which("cmake") or str(Path(sys.executable).parent / "cmake")
    return subprocess.run([cmake, "-S", str(ROOT), "-B", str(tmp_path / "b"), "-G", "Ninja",
                           f"-DKBIT_SOURCE_CUDA_ARCHS={archs}", f"-DCMAKE_CUDA_COMPILER={NVCC13}",
                           f"-DPython3_EXECUTABLE={sys.executable}"], capture_output=True, text=True)


def test_cmake_refuses_sm70_with_cuda130_before_cuda_is_enabled(tmp_path):
    require_tool("nvcc 13.0 at /usr/local/cuda-13.0", NVCC13.is_file())
    done = _configure(tmp_path, "70")
    assert done.returncode != 0
    assert "KBIT_SOURCE_CUDA_ARCHS=70: nothing was built" in done.stderr and "cannot compile for sm_70" in done.stderr
    assert "CUDA compiler" not in done.stdout + done.stderr  # CMake never got to enable_language(CUDA)
    assert not (tmp_path / "b" / "source-cuda").exists()


PROBE = """
import json
from dataclasses import replace
from kbit import _facts, _native, _policy, _runtime
facts = _runtime.facts()
gpu = _facts.Gpu(0, "Jetson AGX Orin", (8, 7))
machine = replace(facts, torch=_facts.TorchFacts("2.9.0", "13.0"),
                  driver=_facts.DriverFacts("ok", "libcuda.so.1", (13, 0), (gpu,)))
print(json.dumps({"manifests": _native.bundled_manifests(), "chosen": _policy.decide(machine).variant,
                  "library": str(_native.library_path("cuda130"))}))
"""


@pytest.mark.compile
@pytest.mark.slow
def test_kbit_cuda_archs_87_builds_cpu_plus_one_cuda130_variant_that_the_runtime_selects(tmp_path):
    require_tool("nvcc 13.0 at /usr/local/cuda-13.0", NVCC13.is_file())
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(f"{site}/outer.pth", "w") as pth:  # torch from the test environment, not a second install
        pth.write(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "KBIT_CUDA_ARCHS": "87", "CUDA_HOME": str(NVCC13.parent.parent)}
    done = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", str(ROOT)], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    probe = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)
    assert sorted(report["manifests"]) == ["cpu", "cuda130"]
    cuda = report["manifests"]["cuda130"]
    assert cuda["sass"] == [87] and cuda["ptx"] == 87 and cuda["toolkit"].startswith("13.0")
    assert report["chosen"] == "cuda130" and report["library"].startswith(str(env_dir))
    tool = wheel.find_cuobjdump()
    if tool:  # the fatbin holds exactly what was asked for
        row = source_cuda.custom_row(matrix.load(), "13.0", (87,))
        assert wheel.cuobjdump_check(row, Path(report["library"]), tool) == []
