"""CMakeLists.txt refuses implicit, malformed or impossible CUDA arch lists with its own clear message,
with Debian's CMake 3.25 and with PyPI's CMake 4.x, before CMake's CUDA compiler test can fail obscurely."""
from __future__ import annotations

import subprocess

import pytest

from ci import build_variant, matrix

from conftest import ROOT, cmake_binaries, require_tool

CMAKES = cmake_binaries()


def _nvcc13():
    try:
        return build_variant.find_toolkit(matrix.load()["cuda130"])
    except build_variant.ToolkitNotFoundError:
        return None


def configure(cmake: str, tmp_path, *defines: str, variant: str = "cuda130") -> subprocess.CompletedProcess:
    cmd = [cmake, "-S", str(ROOT), "-B", str(tmp_path / "b"), "-G", "Ninja", "-DKBIT_BACKEND=cuda",
           f"-DKBIT_VARIANT={variant}", *defines]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_both_cmake_versions_are_here():
    versions = [subprocess.run([c, "--version"], capture_output=True, text=True).stdout.split()[2] for c in CMAKES]
    require_tool("CMake 3.25 and CMake >= 4", any(v.startswith("3.25") for v in versions)
                 and any(int(v.split(".")[0]) >= 4 for v in versions))


@pytest.mark.parametrize("cmake", CMAKES)
@pytest.mark.parametrize("archs,words", [
    (None, ["KBIT_CUDA_ARCHS is required", "nox -s build-cuda130"]),
    ("all", ["contains 'all'", "never lets CMake choose"]),
    ("all-major", ["contains 'all-major'"]),
    ("native", ["contains 'native'"]),
    ("80", ["'80' is not of the form NN-real"]),
    ("80-real", ["exactly one -virtual", "80-virtual"]),
    ("80-real;90-real;80-virtual", ["newest arch (90)"]),
])
def test_bad_arch_lists_are_refused_by_cmake_itself(cmake, tmp_path, archs, words):
    done = configure(cmake, tmp_path, *([f"-DKBIT_CUDA_ARCHS={archs}"] if archs is not None else []))
    assert done.returncode != 0
    text = " ".join((done.stdout + done.stderr).split())
    for word in words:
        assert word in text, text
    assert "CMakeTestCUDACompiler" not in text


@pytest.mark.parametrize("cmake", CMAKES)
def test_sm70_on_cuda13_is_refused_before_cmakes_compiler_test(cmake, tmp_path):
    nvcc = _nvcc13()
    require_tool("a CUDA 13.0 nvcc", nvcc)
    done = configure(cmake, tmp_path, "-DKBIT_CUDA_ARCHS=70-real;75-real;75-virtual", "-DKBIT_CUDA_TOOLKIT=13.0",
                     f"-DCMAKE_CUDA_COMPILER={nvcc}")
    text = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0 and "CUDA 13.0" in text and "cannot compile for sm_70" in text, text
    assert "nvcc fatal" not in text and "CMakeTestCUDACompiler" not in text


@pytest.mark.parametrize("cmake", CMAKES)
def test_a_toolkit_of_another_version_is_refused(cmake, tmp_path):
    nvcc = _nvcc13()
    require_tool("a CUDA 13.0 nvcc", nvcc)
    # the variant name alone fixes the toolkit: libkbit_cuda124 is never built by another nvcc
    done = configure(cmake, tmp_path, "-DKBIT_CUDA_ARCHS=80-real;80-virtual", f"-DCMAKE_CUDA_COMPILER={nvcc}",
                     variant="cuda124")
    text = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0 and "is CUDA 13.0 but this variant (cuda124) needs CUDA 12.4" in text, text


@pytest.mark.parametrize("defines,words", [
    (["-DKBIT_BACKEND=cpu", "-DKBIT_VARIANT=cuda124"], "names a CUDA toolkit but KBIT_BACKEND='cpu'"),
    (["-DKBIT_BACKEND=cuda", "-DKBIT_VARIANT=cpu"], "KBIT_VARIANT=cpu needs KBIT_BACKEND=cpu"),
    (["-DKBIT_BACKEND=cuda", "-DKBIT_VARIANT=cuda130", "-DKBIT_CUDA_TOOLKIT=12.4"], "contradicts KBIT_VARIANT=cuda130"),
])
def test_variant_backend_and_toolkit_must_agree(tmp_path, defines, words):
    done = subprocess.run([CMAKES[0], "-S", str(ROOT), "-B", str(tmp_path / "b"), *defines],
                          capture_output=True, text=True)
    assert done.returncode != 0 and words in " ".join(done.stderr.split())


def test_a_bad_variant_name_is_refused(tmp_path):
    done = subprocess.run([CMAKES[0], "-S", str(ROOT), "-B", str(tmp_path / "b"), "-DKBIT_VARIANT=cuda-12.4"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "is not 'cpu' or 'cuda<major><minor>'" in " ".join(done.stderr.split())
