"""Facts: the driver probe with fake libcuda objects (several versions, every kind of failure), a real compiled
fake libcuda opened through the platform layer, host facts, bundled manifests, and the Windows platform layer
substituted on Linux."""
from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kbit import _facts, _native, _platform

from helpers import FakeCuda, compile_library, package_copy


@pytest.mark.parametrize("raw, version", [(12040, (12, 4)), (12060, (12, 6)), (12080, (12, 8)), (12090, (12, 9)),
                                          (13000, (13, 0)), (11080, (11, 8)), (10020, (10, 2)), (13010, (13, 1))])
def test_driver_versions_are_decoded(raw, version):
    facts = _facts.probe_driver(FakeCuda(version=raw), "libcuda.so.1")
    assert facts.status == "ok" and facts.cuda_version == version and facts.errors == ()


def test_gpus_with_compute_capabilities_and_names():
    devices = (("NVIDIA A100-SXM4-80GB", 8, 0), ("NVIDIA GeForce RTX 5090", 12, 0), ("Orin", 8, 7))
    facts = _facts.probe_driver(FakeCuda(devices=devices), "libcuda.so.1")
    assert [(g.index, g.name, g.cc, g.sm) for g in facts.gpus] == [
        (0, "NVIDIA A100-SXM4-80GB", (8, 0), 80), (1, "NVIDIA GeForce RTX 5090", (12, 0), 120), (2, "Orin", (8, 7), 87)]


@pytest.mark.parametrize("fail, version, gpus, error", [
    ({"cuInit": 100}, (12, 4), 0, "cuInit: CUDA_ERROR_NO_DEVICE (100)"),
    ({"cuInit": 35}, (12, 4), 0, "cuInit: CUDA_ERROR_INSUFFICIENT_DRIVER (35)"),
    ({"cuDriverGetVersion": 34, "cuInit": 34}, None, 0, "cuDriverGetVersion: CUDA_ERROR_STUB_LIBRARY (34)"),
    ({"cuDeviceGetCount": 3}, (12, 4), 0, "cuDeviceGetCount: CUDA_ERROR_NOT_INITIALIZED (3)"),
    ({"cuDeviceGetAttribute": 999}, (12, 4), 0, "cuDeviceGetAttribute: CUDA_ERROR_UNKNOWN (999)"),
    ({"cuDeviceGetName": 999}, (12, 4), 1, "cuDeviceGetName: CUDA_ERROR_UNKNOWN (999)"),
    ({"cuInit": 12345}, (12, 4), 0, "cuInit: CUDA_ERROR_OTHER (12345)"),
])
def test_every_failing_call_is_a_recorded_fact_not_a_crash(fail, version, gpus, error):
    facts = _facts.probe_driver(FakeCuda(fail=fail), "libcuda.so.1")
    assert facts.status == "error" and facts.cuda_version == version and len(facts.gpus) == gpus
    assert error in facts.errors


def test_a_gpu_whose_name_fails_keeps_its_compute_capability():
    facts = _facts.probe_driver(FakeCuda(fail={"cuDeviceGetName": 999}), "libcuda.so.1")
    assert facts.gpus[0].cc == (8, 9) and facts.gpus[0].name == "(name unavailable)"


def test_missing_functions_and_error_names_are_recorded():
    facts = _facts.probe_driver(FakeCuda(missing=("cuDeviceGetName",)), "libcuda.so.1")
    assert "cuDeviceGetName: not exported by the driver library" in facts.errors
    facts = _facts.probe_driver(FakeCuda(fail={"cuInit": 100}, missing=("cuGetErrorName",)), "libcuda.so.1")
    assert "cuInit: CUDA_ERROR_UNKNOWN_CODE (100)" in facts.errors


class NoDriverPlatform(_platform.LinuxPlatform):
    def open_driver(self):
        raise OSError("libcuda.so.1: cannot open shared object file: No such file or directory")


def test_no_driver_is_a_fact():
    facts = _facts.gather_driver(NoDriverPlatform())
    assert facts.status == "not_found" and facts.cuda_version is None and facts.gpus == ()
    assert "cannot open shared object file" in facts.errors[0] and facts.library == "libcuda.so.1"


FAKE_LIBCUDA = r"""
#include <stdlib.h>
#include <string.h>
static int env(const char* name, int fallback) { const char* v = getenv(name); return v ? atoi(v) : fallback; }
int cuDriverGetVersion(int* v) { *v = env("FAKE_CUDA_VERSION", 12040); return env("FAKE_VERSION_STATUS", 0); }
int cuInit(unsigned flags) { return flags ? 1 : env("FAKE_INIT_STATUS", 0); }
int cuDeviceGetCount(int* n) { *n = env("FAKE_DEVICES", 2); return 0; }
int cuDeviceGet(int* d, int i) { *d = 10 + i; return 0; }
int cuDeviceGetAttribute(int* v, int attr, int d) {
  if (d < 10) return 101; /* CUDA_ERROR_INVALID_DEVICE: the probe must pass the CUdevice, not the index */
  *v = attr == 75 ? (d == 10 ? 8 : 12) : (d == 10 ? 9 : 0); return attr == 75 || attr == 76 ? 0 : 1;
}
int cuDeviceGetName(char* buf, int len, int d) { strncpy(buf, d == 10 ? "Fake RTX 4090" : "Fake RTX 5090", len); return 0; }
int cuGetErrorName(int status, const char** out) { *out = status == 100 ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR_X"; return 0; }
"""


@pytest.fixture(scope="module")
def fake_libcuda(tmp_path_factory) -> Path:
    return compile_library(FAKE_LIBCUDA, tmp_path_factory.mktemp("fakecuda"), "libcuda.so.1")


PROBE = """
import json, sys
from kbit import _facts, _platform
class Fake(_platform.LinuxPlatform):
    def driver_library_name(self):
        return sys.argv[1]
d = _facts.gather_driver(Fake())
print(json.dumps({"status": d.status, "version": d.cuda_version, "errors": d.errors,
                  "gpus": [[g.index, g.name, g.sm] for g in d.gpus]}))
"""


@pytest.mark.parametrize("env, status, version, gpus, errors", [
    ({}, "ok", [12, 4], [[0, "Fake RTX 4090", 89], [1, "Fake RTX 5090", 120]], []),
    ({"FAKE_CUDA_VERSION": "13000"}, "ok", [13, 0], [[0, "Fake RTX 4090", 89], [1, "Fake RTX 5090", 120]], []),
    ({"FAKE_INIT_STATUS": "100", "FAKE_CUDA_VERSION": "12080"}, "error", [12, 8], [], ["cuInit: CUDA_ERROR_NO_DEVICE (100)"]),
    ({"FAKE_VERSION_STATUS": "34"}, "error", None, [[0, "Fake RTX 4090", 89], [1, "Fake RTX 5090", 120]],
     ["cuDriverGetVersion: CUDA_ERROR_X (34)"]),
    ({"FAKE_DEVICES": "0"}, "ok", [12, 4], [], []),
])
def test_a_real_shared_library_through_ctypes(fake_libcuda, env, status, version, gpus, errors):
    import os

    done = subprocess.run([sys.executable, "-c", PROBE, str(fake_libcuda)], capture_output=True, text=True,
                          env={**os.environ, **env}, check=True)
    assert json.loads(done.stdout) == {"status": status, "version": version, "errors": errors, "gpus": gpus}


def test_host_facts_here():
    host = _facts.gather_host(_platform.current())
    assert host.platform == "linux" and host.arch and host.python == sys.version.split()[0]
    assert host.libc is None or host.libc[0].isdigit()


def test_bundled_variants_come_from_the_manifests():
    variants = _facts.gather_variants(_native.bundled_manifests(), _native.expected_library_path)
    cpu = next(v for v in variants if v.name == "cpu")
    assert cpu.present and cpu.library == _native.cpu().path and cpu.backend == "cpu" and cpu.toolkit is None


def test_a_cuda_manifest_becomes_a_variant(tmp_path):
    manifest = {"variant": "cuda124", "backend": "cuda", "toolkit": "12.4.131", "sass": [80, 90], "ptx": 90,
                "min_driver": "550.54.14", "kbit_version": "0.1.0"}
    (v,) = _facts.gather_variants({"cuda124": manifest}, lambda name: tmp_path / f"libkbit_{name}.so")
    assert (v.toolkit, v.sass, v.ptx, v.min_driver, v.present) == ((12, 4), (80, 90), 90, "550.54.14", False)


@pytest.mark.parametrize("text, parsed", [("12.4", (12, 4)), ("12.4.131", (12, 4)), ("13.0", (13, 0)),
                                          ("12", None), ("abc", None), ("12.x", None)])
def test_cuda_version_parsing(text, parsed):
    assert _facts.parse_cuda_version(text) == parsed


# ------------------------------------------------------------------ the Windows platform layer, on Linux

class Recorder:
    def __init__(self):
        self.opened, self.added = [], []

    def open(self, name):
        self.opened.append(name)
        if name.endswith("missing.dll"):
            raise OSError("[WinError 126] The specified module could not be found")
        return ctypes.CDLL(None)

    def add(self, folder):
        self.added.append(folder)
        return object()


def test_windows_names_and_dll_directories(tmp_path):
    rec = Recorder()
    torch_lib = tmp_path / "torch" / "lib"
    torch_lib.mkdir(parents=True)
    win = _platform.WindowsPlatform(opener=rec.open, add_dll_directory=rec.add, torch_lib_dir=lambda: torch_lib)
    with _platform.use(win):
        assert _native.library_filename("cuda124") == "kbit_cuda124.dll"
        assert _native.library_filename("cpu") == "kbit_cpu.dll"
    assert win.driver_library_name() == "nvcuda.dll"
    win.open_driver()
    assert rec.opened == ["nvcuda.dll"]
    assert win.prepare_load(tmp_path) == (str(tmp_path), str(torch_lib))
    win.prepare_load(tmp_path)  # added once, not again
    assert rec.added == [str(tmp_path), str(torch_lib)]
    assert win.libc_version() is None and "Visual C++" in win.load_fix()
    assert "vcruntime140.dll" in win.runtime_libraries() and not win.find_system_library("missing.dll")


def test_the_platform_is_chosen_once_and_substitutable():
    here = _platform.current()
    assert here is _platform.current() and isinstance(here, _platform.LinuxPlatform)
    with _platform.use(NoDriverPlatform()) as fake:
        assert _platform.current() is fake
    assert _platform.current() is here


def test_windows_file_checks(tmp_path):
    win = _platform.WindowsPlatform(opener=lambda p: None, add_dll_directory=lambda d: None)
    elf = tmp_path / "kbit_cpu.dll"
    shutil.copy(_native.cpu().path, elf)
    assert "Linux ELF library, not a Windows DLL" in win.file_problem(elf)
    (tmp_path / "x.dll").write_bytes(b"MZ\x90\x00" + b"\0" * 60)
    assert win.file_problem(tmp_path / "x.dll") is None
    (tmp_path / "t.dll").write_text("version https://git-lfs.github.com/spec/v1")
    assert "no MZ header" in win.file_problem(tmp_path / "t.dll")


WINDOWS_LOAD = """
import ctypes, json, sys, torch
from kbit import _binfile, _native, _platform, _facts, functional as F
events = []
class WindowsOnLinux(_platform.WindowsPlatform):
    def file_problem(self, path):
        return _binfile.problem_with(path)  # the stand-in loader is Linux's, so the file is ELF
win = WindowsOnLinux(opener=lambda p: events.append(["open", p]) or ctypes.CDLL(p),
                     add_dll_directory=lambda d: events.append(["dll_dir", d]) or object())
with _platform.use(win):
    variants = _facts.gather_variants(_native.bundled_manifests(), _native.expected_library_path)
    codes, state = F.quantize_blockwise(torch.ones(64), blocksize=64)
print(json.dumps({"events": events, "files": [str(v.library) for v in variants], "present": [v.present for v in variants]}))
"""


def test_the_windows_path_end_to_end_with_a_substituted_platform(tmp_path):
    """A package folder with kbit_cpu.dll (an ELF file the Linux loader opens for the test): the selector
    computes the .dll names, adds the package and torch DLL folders, and loads by absolute path."""
    import os

    site = package_copy(tmp_path)
    (site / "kbit" / "libkbit_cpu.so").rename(site / "kbit" / "kbit_cpu.dll")
    done = subprocess.run([sys.executable, "-c", WINDOWS_LOAD], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    dll = str((site / "kbit" / "kbit_cpu.dll").resolve())
    assert report["files"] == [dll] and report["present"] == [True]
    import torch

    torch_lib = str(Path(torch.__file__).parent / "lib")
    assert report["events"] == [["dll_dir", str((site / "kbit").resolve())], ["dll_dir", torch_lib], ["open", dll]]
