"""The runtime with real libraries, each case in a fresh subprocess (loader state cannot leak between tests):
lazy loading, the import cost, racing threads, missing / truncated / mismatched files, a stale ABI after an
in-process upgrade, and a real CUDA 13.0 library (sm_80) in a temporary copy of the package on a machine
without a driver."""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kbit import _abi, _errors, _native, _platform

from helpers import compile_library, cuda_manifest, package_copy

CPU_TORCH = pytest.mark.skipif(torch.version.cuda is not None,
                               reason=f"torch {torch.__version__} is a CUDA build; its case is the test beside")
CUDA_TORCH = pytest.mark.skipif(torch.version.cuda is None,
                                reason=f"torch {torch.__version__} is a CPU-only build; its case is the test beside")


def driver_present() -> bool:
    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
        return True
    except OSError:
        return False


def run(site: Path | None, code: str, env: dict | None = None, *args: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "BNB_CUDA_VERSION"}
    if site is not None:
        environ["PYTHONPATH"] = str(site)
    environ.update(env or {})
    cwd = site.parent if site is not None else Path.cwd()
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args], capture_output=True, text=True,
                          env=environ, cwd=cwd)


def test_the_copy_is_what_the_subprocess_imports(tmp_path):
    site = package_copy(tmp_path)
    done = run(site, "import kbit; print(kbit.__file__)")
    assert done.stdout.strip() == str(site / "kbit" / "__init__.py")


# ----------------------------------------------------------------------------------------- laziness

LAZY = """
import sys, kbit, torch
from kbit import functional as F, _native, _runtime
assert not _native.loaded() and not _runtime._cache, "import did work"
F.quantize_blockwise(torch.randn(300), blocksize=64)
print(sorted(_native.loaded()), sorted(_runtime._cache))
"""


def test_import_does_nothing_and_a_cpu_call_loads_only_the_cpu_library():
    done = run(None, LAZY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "['cpu'] []"  # no decision, no driver probe for CPU tensors


IMPORT_COST = """
import sys, time
import torch
before = set(sys.modules)
start = time.perf_counter()
import kbit
cost = time.perf_counter() - start
print(cost, " ".join(sorted(set(sys.modules) - before)))
"""


def test_import_kbit_costs_little_over_import_torch():
    """Measured inside one process after `import torch`, so the machine's load does not add torch's noise.
    Typical: 4-6 ms here; the issue's budget is 50 ms; the guard allows 150 ms so that a busy shared machine
    cannot make it flake, while an eager heavy import (a second torch-sized module, torch.compile) still fails."""
    costs = []
    for _ in range(3):
        done = run(None, IMPORT_COST)
        assert done.returncode == 0, done.stderr
        cost, _, modules = done.stdout.strip().partition(" ")
        costs.append(float(cost))
        heavy = {"importlib.metadata", "platform", "numpy", "scipy"}
        # the runtime, the facts and the diagnosis are imported at the first CUDA tensor or `python -m kbit`
        lazy = {"kbit._runtime", "kbit._facts", "kbit._policy", "kbit._report", "kbit._diagnose", "kbit._render"}
        assert not (heavy | lazy) & set(modules.split()), modules
    assert min(costs) < 0.150, costs


# ----------------------------------------------------------------------------------------- racing threads

RACE_CPU = """
import threading, torch, kbit
from kbit import _native, functional as F
calls = []
original = _native.load_library
def counting(*args):
    calls.append(args[0])
    return original(*args)
_native.load_library = counting
barrier = threading.Barrier(16)
results, errors = [], []
def go():
    barrier.wait()
    try:
        c, s = F.quantize_blockwise(torch.ones(4096))
        results.append(int(c[0]))
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=go) for _ in range(16)]
[t.start() for t in threads]; [t.join() for t in threads]
print(len(calls), len(results), len(set(results)), errors)
"""


def test_sixteen_threads_racing_the_first_call_load_once():
    done = run(None, RACE_CPU)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1 16 1 []"


# ----------------------------------------------------------------------------------------- broken files

CUDA_CALL = """
import kbit
from kbit import _runtime
try:
    _runtime.cuda_library(0, "A")
    print("LOADED")
except kbit.KbitError as e:
    print(type(e).__name__, e.exit_code, e)
"""


@CPU_TORCH
def test_cpu_only_torch_gets_a_typed_error_for_cuda_tensors(tmp_path):
    done = run(package_copy(tmp_path), CUDA_CALL)
    assert done.stdout.startswith("BackendUnavailableError 13 A is on cuda:0") and "CPU-only build" in done.stdout


@CUDA_TORCH
def test_a_cuda_torch_without_a_bundled_variant_of_its_major_gets_a_typed_error(tmp_path):
    done = run(package_copy(tmp_path), CUDA_CALL)
    major = torch.version.cuda.split(".")[0]
    assert done.stdout.startswith("CudaVersionMismatchError 5 A is on cuda:0"), done.stdout + done.stderr
    assert f"candidates are the CUDA {major} variants" in done.stdout and "bundles none" in done.stdout


@pytest.mark.parametrize("value, error", [("abc", "BadOverrideError 3"), ("../../lib", "BadOverrideError 3"),
                                          ("", "BadOverrideError 3"), ("124", "VariantNotBundledError 4")])
def test_a_bad_override_is_refused_at_the_first_cuda_use_but_cpu_keeps_working(tmp_path, value, error):
    site = package_copy(tmp_path)
    done = run(site, CUDA_CALL + "import torch; kbit.functional.quantize_blockwise(torch.ones(64), blocksize=64); print('cpu ok')",
               {"BNB_CUDA_VERSION": value})
    assert done.stdout.startswith(error) and "bundles: cpu" in done.stdout and done.stdout.endswith("cpu ok\n")


def _fake_manifest(site: Path, variant: str, **changes) -> dict:
    info = cuda_manifest(variant, **changes)
    (site / "kbit" / f"kbit_{variant}.build.json").write_text(json.dumps(info))
    return info


def test_a_bundled_variant_whose_library_is_missing_names_the_path_and_the_fix(tmp_path):
    site = package_copy(tmp_path)
    _fake_manifest(site, "cuda124")
    done = run(site, CUDA_CALL, {"BNB_CUDA_VERSION": "12.4"})
    assert done.stdout.startswith("LibraryLoadError 10") and "libkbit_cuda124.so is not in the installed package" in done.stdout
    assert str(site / "kbit") in done.stdout and "fix: reinstall kbit" in done.stdout


def test_a_library_in_the_working_directory_or_ld_library_path_is_never_used(tmp_path):
    site = package_copy(tmp_path)
    _fake_manifest(site, "cuda124")
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    shutil.copy(_native.cpu().path, decoy / "libkbit_cuda124.so")
    done = subprocess.run([sys.executable, "-c", CUDA_CALL], capture_output=True, text=True, cwd=decoy,
                          env={**os.environ, "PYTHONPATH": str(site), "BNB_CUDA_VERSION": "124",
                               "LD_LIBRARY_PATH": str(decoy)})
    assert done.stdout.startswith("LibraryLoadError 10") and str(decoy) not in done.stdout.split(" fix:")[0]


FAKE_KBIT = """
#include <stdint.h>
int32_t kbit_abi_version(void) { return %(abi)d; }
const char* kbit_build_info(void) { return "{\\"variant\\": \\"cpu\\"}"; }
const char* kbit_last_error(void) { return ""; }
%(stubs)s
"""


@pytest.fixture(scope="module")
def newer_abi_library(tmp_path_factory) -> Path:
    """A library exporting every kbit function but speaking the next ABI: what a newer kbit's files look like."""
    stubs = "\n".join(f"int {name}(void) {{ return 0; }}" for name in _abi.PROTOTYPES
                      if name not in ("kbit_abi_version", "kbit_build_info", "kbit_last_error"))
    source = FAKE_KBIT % {"abi": _abi.ABI_VERSION + 1, "stubs": stubs}
    return compile_library(source, tmp_path_factory.mktemp("newer_abi"), "libkbit_cpu.so")


STALE = """
import shutil, sys, torch, kbit
from kbit import functional as F
# a `pip install -U kbit` in the running notebook replaces the files; the old Python modules stay in memory
shutil.copy(sys.argv[1], kbit._native.expected_library_path("cpu"))
try:
    F.quantize_blockwise(torch.ones(64), blocksize=64)
except kbit.AbiMismatchError as e:
    print(type(e).__name__, e.exit_code, e)
"""


def test_a_library_upgraded_under_a_running_process_says_both_abis_and_to_restart(tmp_path, newer_abi_library):
    site = package_copy(tmp_path)
    done = run(site, STALE, None, str(newer_abi_library))
    out = done.stdout
    assert out.startswith("AbiMismatchError 11"), done.stderr
    assert f"speaks kbit ABI {_abi.ABI_VERSION + 1}" in out and f"speaks ABI {_abi.ABI_VERSION}" in out
    assert "restart" in out and str(site / "kbit" / "libkbit_cpu.so") in out


def test_a_library_that_contradicts_its_manifest_is_refused(tmp_path):
    site = package_copy(tmp_path)
    manifest = json.loads((site / "kbit" / "kbit_cpu.build.json").read_text())
    manifest["commit"] = "another-build"
    (site / "kbit" / "kbit_cpu.build.json").write_text(json.dumps(manifest))
    done = run(site, "import torch, kbit\ntry:\n    kbit.functional.quantize_blockwise(torch.ones(64), blocksize=64)\n"
                     "except kbit.LibraryLoadError as e:\n    print(e)")
    assert "different builds" in done.stdout and "another-build" in done.stdout and "reinstall" in done.stdout


def test_a_damaged_manifest_names_its_path(tmp_path):
    site = package_copy(tmp_path)
    (site / "kbit" / "kbit_cuda124.build.json").write_text("{not json")
    done = run(site, "", None, "-m", "kbit")
    assert done.returncode == 10 and "kbit_cuda124.build.json is damaged" in done.stdout


def test_a_glibc_too_old_is_classified_by_what_the_file_needs(monkeypatch):
    from kbit import _binfile

    need = _binfile.glibc_needed(_native.cpu().path)  # the newest GLIBC_ version the file asks for

    class OldGlibc(_platform.LinuxPlatform):
        def libc_version(self):
            return "2.2"  # older than every GLIBC_2.x symbol libkbit_cpu.so uses

    with _platform.use(OldGlibc()):
        error = _native._load_refused(_native.cpu().path, OSError(f"version `GLIBC_{need}' not found"))
    assert isinstance(error, _errors.GlibcTooOldError) and error.exit_code == 9
    assert f"needs glibc {need}, this system has glibc 2.2" in str(error)
    assert f"version `GLIBC_{need}' not found" in str(error)
    with _platform.use(_platform.LinuxPlatform()):
        other = _native._load_refused(_native.cpu().path, OSError("libfoo.so: cannot open shared object file"))
    assert type(other) is _errors.LibraryLoadError and "cannot open shared object file" in str(other)


def test_libraries_are_loaded_by_absolute_path_only():
    with pytest.raises(_errors.LibraryLoadError, match="absolute path only"):
        _native.load_library(Path("libkbit_cpu.so"))


def test_elf_requirements_of_the_cpu_library():
    from kbit import _binfile

    needed, versions = _binfile.requirements(_native.cpu().path)
    assert "libc.so.6" in needed and any(v.startswith("GLIBC_2.") for v in versions)
    assert _binfile.glibc_needed(_native.cpu().path) is not None
    assert ctypes.CDLL(str(_native.cpu().path))  # the file parsed is the loadable one


# ----------------------------------------------------------------------------------------- a real CUDA library

@pytest.fixture(scope="module")
def cuda130_sm80(tmp_path_factory):
    from ci import build_variant, matrix

    from conftest import require_tool

    try:
        build_variant.find_toolkit(matrix.load()["cuda130"])
    except build_variant.ToolkitNotFoundError as exc:
        require_tool(f"a CUDA 13.0 toolkit ({exc})", None)
    root = tmp_path_factory.mktemp("cudabuild")
    return build_variant.build("cuda130", archs=(80,), build_root=root, log=lambda s: None)


@pytest.fixture
def site_with_cuda(tmp_path, cuda130_sm80) -> Path:
    site = package_copy(tmp_path)
    shutil.copy(cuda130_sm80.library, site / "kbit")
    shutil.copy(cuda130_sm80.library.parent / "kbit_cuda130.build.json", site / "kbit")
    return site


def kbit_cli(site: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run(site, "", env, "-m", "kbit", *args)


@pytest.mark.compile
def test_the_cuda_build_records_min_driver_from_the_matrix(cuda130_sm80):
    from ci import matrix

    assert cuda130_sm80.build_info["min_driver"] == matrix.load()["cuda130"].min_driver


@pytest.mark.compile
@CUDA_TORCH
def test_a_cuda_torch_without_a_driver_is_told_to_install_one(site_with_cuda):
    if driver_present():
        pytest.skip("this machine has an NVIDIA driver")
    done = kbit_cli(site_with_cuda)
    assert done.returncode == 8, done.stdout + done.stderr
    line = next(row for row in done.stdout.splitlines() if row.startswith("  cuda130 "))
    assert "SASS sm_80, PTX compute_80  min driver 580.65.06  glibc >= 2." in line and line.endswith("(present)")
    assert "decision: CUDA tensors -> none (default)" in done.stdout and "no usable NVIDIA driver was found" in done.stdout
    assert "cuda130: ok" not in done.stdout  # not loaded: there is no driver to run it


@pytest.mark.compile
@CPU_TORCH
def test_bundled_cuda_variant_is_listed_but_not_chosen_for_cpu_torch(site_with_cuda):
    done = kbit_cli(site_with_cuda)
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(row for row in done.stdout.splitlines() if row.startswith("  cuda130 "))
    assert "CUDA 13.0." in line and "SASS sm_80, PTX compute_80  min driver 580.65.06  glibc >= 2." in line
    assert line.endswith("(present)")
    assert "decision: CUDA tensors -> none (default)" in done.stdout and "load:\n  cpu: ok" in done.stdout
    assert "cuda130: ok" not in done.stdout  # not loaded: torch has no CUDA


@pytest.mark.compile
@pytest.mark.parametrize("value", ["130", "13.0"])
def test_the_override_loads_the_real_cuda_library_which_reports_no_driver(site_with_cuda, value):
    done = kbit_cli(site_with_cuda, "--json", env={"BNB_CUDA_VERSION": value})
    report = json.loads(done.stdout)
    assert report["decision"]["variant"] == "cuda130" and report["decision"]["source"] == "override"
    cpu_torch = torch.version.cuda is None
    if cpu_torch:
        assert any("CPU-only build" in w for w in report["decision"]["warnings"])
    cuda = next(r for r in report["loads"] if r["variant"] == "cuda130")
    assert cuda["error"] is None and cuda["path"] == str(site_with_cuda / "kbit" / "libkbit_cuda130.so")
    assert cuda["build_info"]["sass"] == [80] and cuda["build_info"]["toolkit"].startswith("13.0")
    if cuda["device_status"] == 0:
        pytest.skip("this machine has a GPU driver")
    assert cuda["device_status"] == 2 and "cudaErrorInsufficientDriver" in cuda["device_detail"]
    assert cpu_torch or any("no NVIDIA driver was found" in w for w in report["decision"]["warnings"])
    # with a CPU-only torch no CUDA tensor can reach the library, so kbit is usable; a CUDA torch has no driver
    assert report["exit_code"] == (0 if cpu_torch else 8)
    assert "override_contradicts_facts" in [f["key"] for f in report["findings"]]


@pytest.mark.compile
def test_an_override_naming_an_absent_variant_lists_what_is_bundled(site_with_cuda):
    done = kbit_cli(site_with_cuda, env={"BNB_CUDA_VERSION": "124"})
    assert done.returncode == 4 and "it bundles: cpu, cuda130" in done.stdout


@pytest.mark.compile
def test_a_truncated_cuda_library_is_diagnosed(site_with_cuda):
    lib = site_with_cuda / "kbit" / "libkbit_cuda130.so"
    lib.write_bytes(lib.read_bytes()[:100_000])
    done = kbit_cli(site_with_cuda, env={"BNB_CUDA_VERSION": "130"})
    assert done.returncode == 10 and "it is truncated" in done.stdout and str(lib) in done.stdout
    assert "[error] the cuda130 library does not load (exit 10)" in done.stdout


RACE_CUDA = """
import threading, kbit
from kbit import _native, _policy, _runtime
loads, decisions = [], []
original_load, original_decide = _native.load_library, _policy.decide
_native.load_library = lambda *a: loads.append(a[0]) or original_load(*a)
_policy.decide = lambda *a: decisions.append(1) or original_decide(*a)
barrier = threading.Barrier(16)
libs = []
def go():
    barrier.wait()
    libs.append(_runtime.cuda_library(0))
threads = [threading.Thread(target=go) for _ in range(16)]
[t.start() for t in threads]; [t.join() for t in threads]
print(len(loads), len(decisions), len({id(l) for l in libs}), len(libs), libs[0].path.name)
"""


@pytest.mark.compile
def test_sixteen_threads_racing_the_first_cuda_use_decide_and_load_once(site_with_cuda):
    done = run(site_with_cuda, RACE_CUDA, {"BNB_CUDA_VERSION": "130"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1", "1", "16", "libkbit_cuda130.so"]


# ----------------------------------------------------------------------------------------- manifests vs matrix.toml

def check_manifest_against_matrix(info: dict) -> list[str]:
    from ci import matrix

    return matrix.manifest_problems(matrix.load()[info["variant"]], info)


def test_every_installed_manifest_agrees_with_matrix_toml():
    for name, info in _native.bundled_manifests().items():
        if info["backend"] == "cuda":
            assert check_manifest_against_matrix(info) == [], name
        else:
            assert info["sass"] == [] and info["ptx"] is None and info["toolkit"] is None


@pytest.mark.compile
def test_a_real_build_manifest_agrees_with_matrix_toml(cuda130_sm80):
    info = json.loads((cuda130_sm80.library.parent / "kbit_cuda130.build.json").read_text())
    assert check_manifest_against_matrix(info) == [] and info["sass"] == [80]
