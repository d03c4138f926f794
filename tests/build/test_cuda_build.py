"""A real CUDA variant, built with this machine's nvcc 13.0 for sm_80 only: exactly the requested SASS and
PTX are embedded, only the C ABI is exported, and it loads and reports "no driver" without crashing."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from ci import build_variant, matrix
from kbit import _abi

from conftest import cmake_binaries, require_tool

pytestmark = pytest.mark.compile


def cuobjdump() -> str | None:
    """The toolkit's cuobjdump, else PyPI's nvidia-cuda-cuobjdump (installed by the tests session)."""
    for candidate in (shutil.which("cuobjdump"), "/usr/local/cuda-13.0/bin/cuobjdump"):
        if candidate and Path(candidate).is_file():
            return candidate
    for wheel_dir in ("cu13", "cuda_cuobjdump"):
        found = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / wheel_dir / "bin" / "cuobjdump"
        if found.is_file():
            return str(found)
    return None


@pytest.fixture(scope="module", params=cmake_binaries(), ids=lambda c: f"cmake={c}")
def sm80_build(request, tmp_path_factory):
    try:
        build_variant.find_toolkit(matrix.load()["cuda130"])
    except build_variant.ToolkitNotFoundError as exc:
        require_tool(f"a CUDA 13.0 toolkit ({exc})", None)
    root = tmp_path_factory.mktemp("build")
    return build_variant.build("cuda130", archs=(80,), cmake=request.param, build_root=root, log=lambda s: None)


def _embedded(tool: str, flag: str, library: Path) -> set[str]:
    out = subprocess.run([tool, flag, str(library)], capture_output=True, text=True, check=True).stdout
    # one line per image, e.g. "ELF file 1: libkbit_cuda130.1.sm_80.cubin"; a library with two .cu files has
    # two images per arch, so compare the set of archs
    return {line.rsplit(".", 2)[-2] for line in out.splitlines() if line.strip()}


def test_exactly_the_requested_sass_and_ptx_are_embedded(sm80_build):
    tool = cuobjdump()
    require_tool("cuobjdump (pip install nvidia-cuda-cuobjdump)", tool)
    assert _embedded(tool, "--list-elf", sm80_build.library) == {"sm_80"}
    assert _embedded(tool, "--list-ptx", sm80_build.library) == {"sm_80"}


def test_build_info_comes_from_what_was_built(sm80_build):
    info = sm80_build.build_info
    assert info["variant"] == "cuda130" and info["backend"] == "cuda"
    assert info["sass"] == [80] and info["ptx"] == 80 and info["toolkit"].startswith("13.0.")
    assert info["compression"] == matrix.load()["cuda130"].compression
    manifest = sm80_build.library.parent / "kbit_cuda130.build.json"
    assert json.loads(manifest.read_text()) == info
    assert sm80_build.library.name == "libkbit_cuda130.so"


def test_only_the_c_abi_is_exported_not_cudart(sm80_build):
    nm = shutil.which("nm")
    require_tool("nm", nm)
    out = subprocess.run([nm, "-D", "--defined-only", str(sm80_build.library)], capture_output=True, text=True,
                         check=True).stdout
    names = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert names and all(n.startswith("kbit_") for n in names), names
    needed = subprocess.run(["readelf", "-d", str(sm80_build.library)], capture_output=True, text=True).stdout
    assert "libcudart" not in needed  # cudart is linked statically


PROBE = r"""
import ctypes, json, sys
lib = ctypes.CDLL(sys.argv[1])
lib.kbit_last_error.restype = ctypes.c_char_p
lib.kbit_build_info.restype = ctypes.c_char_p
count = ctypes.c_int32(-1)
status = lib.kbit_device_count(ctypes.byref(count))
first = lib.kbit_last_error().decode()
buf = (ctypes.c_float * 64)(); out = (ctypes.c_uint8 * 64)(); absmax = (ctypes.c_float * 1)()
q = lib.kbit_quantize_blockwise_8bit(0, buf, absmax, out, ctypes.c_int64(64), 64, None, 1)
q_error = lib.kbit_last_error().decode()
kind, where = ctypes.c_int32(-1), ctypes.create_string_buffer(8)
threads = lib.kbit_cpu_threads(ctypes.byref(kind), where, 8)
print(json.dumps({"abi": lib.kbit_abi_version(), "status": status, "count": count.value, "error": first,
                  "quantize": q, "quantize_error": q_error, "threads": [threads, kind.value, where.value.decode()]}))
"""


def test_it_loads_and_reports_no_driver_without_crashing(sm80_build):
    done = subprocess.run([sys.executable, "-c", PROBE, str(sm80_build.library)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["abi"] == _abi.ABI_VERSION
    assert report["threads"] == [_abi.OK, _abi.THREADS_NONE, ""]  # a CUDA library runs no CPU loops
    if report["status"] == _abi.OK:  # a driver answered: the count is the GPUs it sees
        assert report["count"] >= 0
        pytest.skip("this machine has a GPU driver; the no-driver path cannot be observed")
    assert report["count"] == 0
    if report["status"] == _abi.ERR_NO_DEVICE:  # a driver without a usable GPU
        assert "sees no usable GPU" in report["error"]
        pytest.skip("this machine has a GPU driver but no GPU; the no-driver path cannot be observed")
    assert report["status"] == _abi.ERR_NO_DRIVER  #: this machine has no libcuda
    assert "cudaErrorInsufficientDriver (35)" in report["error"] and "install or update the driver" in report["error"]
    assert report["quantize"] == 2 and "cudaPointerGetAttributes" in report["quantize_error"]
