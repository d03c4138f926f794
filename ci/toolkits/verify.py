"""Proof that a provisioned CUDA_HOME works: nvcc reports the row's release and a probe .cu (cuda_fp16.h, a kernel,
a runtime call) compiles, links with the static cudart and loads in a fresh interpreter."""

from __future__ import annotations

import pathlib
import sys
import tempfile

from ci.toolkits.errors import Log, run, timed
from ci.toolkits.nvcc import check_nvcc_version, nvcc_env

# The verification source: a kernel (using cuda_fp16.h, which needs CCCL's nv/target on 12.x) and an
# extern "C" host function calling the runtime.
PROBE_CU = r"""
#include <cuda_runtime.h>
#include <cuda_fp16.h>

__global__ void kbit_probe_kernel(float* out, const __half* in, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __half2float(in[i]) * 2.0f;
}

extern "C" int kbit_probe_device_count(void) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) return -static_cast<int>(err);
  if (n > 0) kbit_probe_kernel<<<1, 1>>>(nullptr, nullptr, 0);
  return n;
}
"""


def verify_toolkit(home: pathlib.Path, toolkit: str, compiler: str, log: Log = print) -> str:
    """nvcc --version must match; a kernel + cudaGetDeviceCount wrapper must compile, link and load."""
    line = check_nvcc_version(home, toolkit)
    log(f"[toolkit_fetch] {home / 'bin' / 'nvcc'}: {line}")
    with tempfile.TemporaryDirectory(prefix="kbit-probe-") as tmp:
        src = pathlib.Path(tmp) / "probe.cu"
        lib = pathlib.Path(tmp) / "libprobe.so"
        src.write_text(PROBE_CU)
        cmd = [home / "bin" / "nvcc", "-shared", "-Xcompiler", "-fPIC", "-arch=sm_80", "-cudart", "static",
               "-ccbin", compiler, "-o", lib, src]
        with timed(log, "compile+link probe .cu"):
            run(cmd, step="compile the probe .cu", env=nvcc_env(),
                fix="read the compiler output above: 'nv/target' missing means the CCCL headers were not merged; "
                    "'unsupported GNU version' means the host compiler is too new for this toolkit")
        probe = ("import ctypes, sys; n = ctypes.CDLL(sys.argv[1]).kbit_probe_device_count(); "
                 "print(n)")
        out = run([sys.executable, "-c", probe, lib], step="load the probe library",
                  fix="the library links but does not load: check `ldd` on it and the static cudart").stdout
        log(f"[toolkit_fetch] probe loaded; kbit_probe_device_count() = {out.strip()} "
            "(negative = CUDA error code, e.g. -35 without a driver)")
    return line


